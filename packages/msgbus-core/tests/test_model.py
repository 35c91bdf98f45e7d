"""NodeId keys, and the delete-marker JSON shared with the original msgbus."""

import pytest

from msgbus_core import InvalidArgumentError, NodeId, TombstoneRange
from msgbus_core.limits import MAX_STORED_INT


def test_node_key_round_trips() -> None:
    node = NodeId.from_key("tenant/bl/device")
    assert node == NodeId("tenant", "bl", "device")
    assert node.key == "tenant/bl/device"


@pytest.mark.parametrize("key", ["tenant/bl", "tenant/bl/device/extra", "", "//"])
def test_malformed_node_keys_are_rejected(key: str) -> None:
    with pytest.raises(InvalidArgumentError):
        NodeId.from_key(key)


def test_node_part_may_not_contain_a_slash() -> None:
    with pytest.raises(InvalidArgumentError, match=r"origin\.bl_name contains '/'"):
        NodeId("a", "b/c", "d").validate()


def test_empty_node_is_recognised() -> None:
    assert NodeId("", "", "").is_empty
    assert not NodeId("", "", "x").is_empty


def test_marker_payload_matches_the_original_byte_for_byte() -> None:
    tombstone = TombstoneRange("events", NodeId("tenant", "default", "node-a"), 2, 3, 1700)
    expected = (
        b'{"topic":"events","origin":{"tenant_id":"tenant","bl_name":"default",'
        b'"device_id":"node-a"},"from_head_id":2,"to_head_id":3,"created_at_ms":1700}'
    )
    assert tombstone.to_marker_payload() == expected
    assert TombstoneRange.from_marker_payload(expected) == tombstone


def test_marker_payload_keeps_unicode_unescaped_like_serde_json() -> None:
    tombstone = TombstoneRange('é"\\', NodeId("t", "b", "d"), 1, 1, 0)
    assert tombstone.to_marker_payload().startswith('{"topic":"é\\"\\\\"'.encode())
    assert TombstoneRange.from_marker_payload(tombstone.to_marker_payload()) == tombstone


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "invalid tombstone payload"),
        (b"[]", "not a JSON object"),
        (b'{"topic":"t","origin":1}', "origin is not an object"),
        (
            b'{"topic":"t","origin":{"tenant_id":"a","bl_name":"b","device_id":"c"},'
            b'"from_head_id":"1","to_head_id":2,"created_at_ms":0}',
            "from_head_id is not an integer",
        ),
        (
            b'{"topic":"t","origin":{"tenant_id":"a","bl_name":"b","device_id":"c"},'
            b'"from_head_id":3,"to_head_id":2,"created_at_ms":0}',
            "from_head_id must be <= to_head_id",
        ),
        (
            b'{"topic":"$msgbus.delete","origin":{"tenant_id":"a","bl_name":"b",'
            b'"device_id":"c"},"from_head_id":1,"to_head_id":2,"created_at_ms":0}',
            "tombstone topic may not be",
        ),
        (
            b'{"topic":"t","origin":{"tenant_id":"a","bl_name":"b","device_id":"c"},'
            b'"from_head_id":1,"to_head_id":18446744073709551616,"created_at_ms":0}',
            "to_head_id must be between",
        ),
        (
            b'{"topic":"t","origin":{"tenant_id":"a","bl_name":"b","device_id":"c"},'
            b'"from_head_id":9223372036854775808,"to_head_id":18446744073709551615,'
            b'"created_at_ms":0}',
            "from_head_id must be between",
        ),
    ],
)
def test_malformed_marker_payloads_are_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        TombstoneRange.from_marker_payload(payload)


def test_original_delete_everything_marker_is_accepted_clamped_to_the_stored_range() -> None:
    # Original redb nodes write to_head_id = u64::MAX for "delete everything". No store holds a
    # head above MAX_STORED_INT, so the clamped range covers exactly the same messages.
    payload = (
        b'{"topic":"events","origin":{"tenant_id":"t","bl_name":"b","device_id":"redb"},'
        b'"from_head_id":1,"to_head_id":18446744073709551615,"created_at_ms":1700}'
    )
    tombstone = TombstoneRange.from_marker_payload(payload)
    assert tombstone == TombstoneRange("events", NodeId("t", "b", "redb"), 1, MAX_STORED_INT, 1700)
    assert tombstone.covers(1)
    assert tombstone.covers(MAX_STORED_INT)
