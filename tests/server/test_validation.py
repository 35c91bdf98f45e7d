"""Every rejection: the right status code, a message naming the field, and nothing stored.

The shared daemon runs with `--max-payload-bytes 4096`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_testkit.calls import rpc_error
from msgbus_testkit.logs import fetch_page, publish, topics_in_store
from msgbus_testkit.nodes import LOCAL, OTHER

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED

BAD_NAMES = {
    "empty": "",
    "blank": "  \t ",
    "nul": "a\0b",
    "control": "a\x07b",
    "newline": "line\nbreak",
    "too-long": "x" * 256,
    "too-long-utf8": "é" * 128,  # 256 bytes
}
BAD_NODE_PARTS = {**BAD_NAMES, "slash": "a/b"}


def _assert_rejected(call: Callable[[], Any], code: grpc.StatusCode, *words: str) -> str:
    error = rpc_error(call)
    assert error.code() == code, error.details()
    details = error.details() or ""
    for word in words:
        assert word in details, details
    return details


def _no_message_stored(stub: rpc.MsgbusServiceStub, *topics: str) -> None:
    stored = topics_in_store(stub)
    for topic in topics:
        assert topic not in stored
        assert stub.GetHead(pb.GetHeadRequest(topic=topic)).found is False


# -- Publish ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_publish_bad_topic(stub: rpc.MsgbusServiceStub, bad: str) -> None:
    before = topics_in_store(stub)
    _assert_rejected(lambda: stub.Publish(pb.PublishRequest(topic=bad)), INVALID, "topic")
    assert topics_in_store(stub) == before


def test_name_limit_is_255_bytes_inclusive(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("x")
    topic = topic + "é" * ((255 - len(topic)) // 2)
    topic = topic + "x" * (255 - len(topic.encode()))
    assert len(topic.encode()) == 255
    assert publish(stub, topic).head_id == 1


@pytest.mark.parametrize("topic", ["$msgbus.delete", "$msgbus.other", "$msgbus."])
def test_publish_reserved_topics(stub: rpc.MsgbusServiceStub, topic: str) -> None:
    heads_before = stub.ListHeads(pb.ListHeadsRequest()).heads
    _assert_rejected(
        lambda: stub.Publish(pb.PublishRequest(topic=topic, payload=b"x")), DENIED, "reserved"
    )
    assert stub.ListHeads(pb.ListHeadsRequest()).heads == heads_before


def test_publish_non_local_origin(stub: rpc.MsgbusServiceStub, name: Callable[[str], str]) -> None:
    topic = name("perm")
    _assert_rejected(
        lambda: stub.Publish(pb.PublishRequest(topic=topic, origin=OTHER)), DENIED, "local"
    )
    _no_message_stored(stub, topic)


@pytest.mark.parametrize("part", ["tenant_id", "bl_name", "device_id"])
@pytest.mark.parametrize("bad", BAD_NODE_PARTS.values(), ids=BAD_NODE_PARTS.keys())
def test_publish_bad_origin_part(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str], part: str, bad: str
) -> None:
    topic = name("origin")
    fields = {"tenant_id": "tenant", "bl_name": "default", "device_id": "device", part: bad}
    origin = pb.NodeId(**fields)
    _assert_rejected(
        lambda: stub.Publish(pb.PublishRequest(topic=topic, origin=origin)),
        INVALID,
        f"origin.{part}",
    )
    _no_message_stored(stub, topic)


def test_publish_partial_origin(stub: rpc.MsgbusServiceStub, name: Callable[[str], str]) -> None:
    topic = name("partial")
    origin = pb.NodeId(tenant_id="tenant")
    _assert_rejected(
        lambda: stub.Publish(pb.PublishRequest(topic=topic, origin=origin)), INVALID, "origin."
    )
    _no_message_stored(stub, topic)


def test_publish_payload_too_large(stub: rpc.MsgbusServiceStub, name: Callable[[str], str]) -> None:
    topic = name("big")
    _assert_rejected(
        lambda: stub.Publish(pb.PublishRequest(topic=topic, payload=b"x" * 4097)),
        INVALID,
        "payload",
        "4096",
    )
    _no_message_stored(stub, topic)


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({f"k{i}": "v" for i in range(65)}, ("headers", "64")),
        ({"a": "x" * 9000, "b": "y" * 9000}, ("headers", "16384")),
        ({"": "v"}, ("headers key",)),
        ({"k": "a\0b"}, ("headers",)),
        ({"k\x01": "v"}, ("headers key",)),
    ],
    ids=["too-many", "too-big", "empty-key", "nul-value", "control-key"],
)
def test_publish_bad_headers(
    stub: rpc.MsgbusServiceStub,
    name: Callable[[str], str],
    headers: dict[str, str],
    words: tuple[str, ...],
) -> None:
    topic = name("headers")
    _assert_rejected(
        lambda: stub.Publish(pb.PublishRequest(topic=topic, headers=headers)), INVALID, *words
    )
    _no_message_stored(stub, topic)


def test_publish_headers_at_the_limit(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("hmax")
    headers = {f"k{i:02d}": "v" for i in range(64)}
    assert len(publish(stub, topic, headers=headers).headers) == 64


# -- PublishBatch ----------------------------------------------------------------------------


def test_publish_batch_empty(stub: rpc.MsgbusServiceStub) -> None:
    _assert_rejected(lambda: stub.PublishBatch(pb.PublishBatchRequest()), INVALID, "entries")


def test_publish_batch_too_many(stub: rpc.MsgbusServiceStub, name: Callable[[str], str]) -> None:
    topic = name("many")
    entries = [pb.PublishRequest(topic=topic) for _ in range(10_001)]
    _assert_rejected(
        lambda: stub.PublishBatch(pb.PublishBatchRequest(entries=entries)), INVALID, "10000"
    )
    _no_message_stored(stub, topic)


@pytest.mark.parametrize(
    ("bad", "code", "word"),
    [
        (pb.PublishRequest(topic=""), INVALID, "entries[2].topic"),
        (pb.PublishRequest(topic="$msgbus.delete"), DENIED, "entries[2].topic"),
        (pb.PublishRequest(topic="ok", origin=OTHER), DENIED, "entries[2].origin"),
        (pb.PublishRequest(topic="ok", payload=b"x" * 5000), INVALID, "entries[2].payload"),
    ],
    ids=["topic", "reserved", "origin", "payload"],
)
def test_publish_batch_one_bad_entry_stores_nothing(
    stub: rpc.MsgbusServiceStub,
    name: Callable[[str], str],
    bad: pb.PublishRequest,
    code: grpc.StatusCode,
    word: str,
) -> None:
    topic = name("batch")
    entries = [pb.PublishRequest(topic=topic), pb.PublishRequest(topic=topic), bad]
    _assert_rejected(lambda: stub.PublishBatch(pb.PublishBatchRequest(entries=entries)), code, word)
    _no_message_stored(stub, topic)


# -- reads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_reads_bad_topic(stub: rpc.MsgbusServiceStub, bad: str) -> None:
    _assert_rejected(lambda: stub.Fetch(pb.FetchRequest(topic=bad)), INVALID, "topic")
    _assert_rejected(
        lambda: stub.Subscribe(pb.SubscribeRequest(topic=bad), timeout=10), INVALID, "topic"
    )
    _assert_rejected(lambda: stub.GetHead(pb.GetHeadRequest(topic=bad)), INVALID, "topic")


def test_reads_partial_origin(stub: rpc.MsgbusServiceStub) -> None:
    origin = pb.NodeId(tenant_id="a", bl_name="b")
    _assert_rejected(
        lambda: stub.Fetch(pb.FetchRequest(topic="t", origin=origin)), INVALID, "origin.device_id"
    )
    _assert_rejected(
        lambda: stub.Subscribe(pb.SubscribeRequest(topic="t", origin=origin), timeout=10),
        INVALID,
        "origin.device_id",
    )
    _assert_rejected(
        lambda: stub.GetHead(pb.GetHeadRequest(topic="t", origin=origin)),
        INVALID,
        "origin.device_id",
    )


def test_reads_may_name_reserved_and_foreign_logs(stub: rpc.MsgbusServiceStub) -> None:
    assert stub.GetHead(pb.GetHeadRequest(topic="$msgbus.x", origin=OTHER)).found is False
    assert fetch_page(stub, "$msgbus.x", origin=OTHER) == []


def test_u64_extremes_never_internal(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("u64")
    publish(stub, topic)
    top = 2**64 - 1
    assert fetch_page(stub, topic, from_head_id=top, limit=2**32 - 1) == []
    assert fetch_page(stub, topic, from_head_id=2**63) == []
    reply = stub.DeleteRange(pb.DeleteRangeRequest(topic=topic, from_head_id=top, to_head_id=top))
    assert reply.deleted_count == 0
    # A subscription beyond any possible head just waits (here: until its deadline).
    error = rpc_error(
        lambda: stub.Subscribe(pb.SubscribeRequest(topic=topic, from_head_id=top), timeout=1)
    )
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- DeleteRange -----------------------------------------------------------------------------


def test_delete_range_validation(stub: rpc.MsgbusServiceStub, name: Callable[[str], str]) -> None:
    topic = name("delv")
    publish(stub, topic)
    markers = len(fetch_page(stub, "$msgbus.delete", limit=10_000))

    def delete(**kw: Any) -> Callable[[], Any]:
        return lambda: stub.DeleteRange(pb.DeleteRangeRequest(**kw))

    _assert_rejected(delete(topic=topic, from_head_id=2, to_head_id=1), INVALID, "from_head_id")
    _assert_rejected(delete(topic="", to_head_id=1), INVALID, "topic")
    _assert_rejected(delete(topic="$msgbus.delete", to_head_id=1), DENIED, "reserved")
    _assert_rejected(delete(topic="$msgbus.other", to_head_id=1), DENIED, "reserved")
    _assert_rejected(delete(topic=topic, origin=OTHER, to_head_id=1), DENIED, "local")
    _assert_rejected(
        delete(topic=topic, origin=pb.NodeId(device_id="d"), to_head_id=1), INVALID, "origin."
    )
    assert [m.deleted for m in fetch_page(stub, topic)] == [False]
    assert len(fetch_page(stub, "$msgbus.delete", limit=10_000)) == markers


# -- FIFO ------------------------------------------------------------------------------------


def _target() -> pb.NodeId:
    return pb.NodeId(tenant_id="t", bl_name="b", device_id="d")


@pytest.mark.parametrize(
    ("overrides", "code", "word"),
    [
        ({"queue": ""}, INVALID, "queue"),
        ({"queue": "q\0"}, INVALID, "queue"),
        ({"queue": "q" * 256}, INVALID, "queue"),
        ({"topic": ""}, INVALID, "topic"),
        ({"topic": "$msgbus.delete"}, DENIED, "reserved"),
        ({"topic": "$msgbus.jobs"}, DENIED, "reserved"),
        ({"source": OTHER}, DENIED, "local"),
        ({"source": pb.NodeId(tenant_id="x")}, INVALID, "source."),
        ({"target": None}, INVALID, "target is required"),
        ({"target": pb.NodeId()}, INVALID, "target"),
        ({"target": pb.NodeId(tenant_id="t", bl_name="b")}, INVALID, "target.device_id"),
        ({"target": pb.NodeId(tenant_id="t", bl_name="b/c", device_id="d")}, INVALID, "target."),
        ({"payload": b"x" * 4097}, INVALID, "payload"),
        ({"headers": {f"k{i}": "" for i in range(65)}}, INVALID, "headers"),
    ],
    ids=[
        "queue-empty",
        "queue-nul",
        "queue-long",
        "topic-empty",
        "topic-delete",
        "topic-reserved",
        "source-other",
        "source-partial",
        "target-absent",
        "target-empty",
        "target-partial",
        "target-slash",
        "payload",
        "headers",
    ],
)
def test_enqueue_validation(
    stub: rpc.MsgbusServiceStub,
    name: Callable[[str], str],
    overrides: dict[str, Any],
    code: grpc.StatusCode,
    word: str,
) -> None:
    queue = name("q")
    fields: dict[str, Any] = {"queue": queue, "topic": "jobs", "target": _target(), "payload": b""}
    fields.update(overrides)
    if fields["target"] is None:
        del fields["target"]
    request = pb.EnqueueFifoRequest(**fields)
    _assert_rejected(lambda: stub.EnqueueFifo(request), code, word)
    for checked in {queue, fields["queue"]}:
        if checked and "\0" not in checked and len(checked) < 256:
            peek = functools.partial(stub.PeekFifo, pb.PeekFifoRequest(queue=checked))
            not_found = rpc_error(peek)
            assert not_found.code() == grpc.StatusCode.NOT_FOUND


def test_fifo_reads_and_acks_validation(stub: rpc.MsgbusServiceStub) -> None:
    _assert_rejected(lambda: stub.PeekFifo(pb.PeekFifoRequest(queue="")), INVALID, "queue")
    _assert_rejected(
        lambda: stub.AckFifo(pb.AckFifoRequest(queue="", message_id="m")), INVALID, "queue"
    )
    _assert_rejected(
        lambda: stub.AckFifo(pb.AckFifoRequest(queue="q", message_id="")), INVALID, "message_id"
    )
    _assert_rejected(
        lambda: stub.RejectFifo(pb.RejectFifoRequest(queue="q", message_id="\0")),
        INVALID,
        "message_id",
    )
    _assert_rejected(
        lambda: stub.RejectFifo(pb.RejectFifoRequest(queue="q" * 300, message_id="m")),
        INVALID,
        "queue",
    )


def test_ack_of_unknown_message_is_not_an_error(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    queue = name("q")
    assert not stub.AckFifo(pb.AckFifoRequest(queue=queue, message_id="nope")).accepted
    assert not stub.RejectFifo(pb.RejectFifoRequest(queue=queue, message_id="nope")).accepted


def test_local_origin_spelled_out_is_accepted(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("spelled")
    assert publish(stub, topic, origin=LOCAL).origin == LOCAL
