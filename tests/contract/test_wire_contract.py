"""The generated code matches the original msgbus.v1 contract, field by field.

The table below is transcribed from the original's contract (shared/reference, section 1). If a
test here fails, the proto changed in a way original Go and Rust clients would notice.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor

from msgbus_proto import SERVICE_NAME, pb

F = FieldDescriptor
STRING, BYTES, UINT64, UINT32, BOOL, MESSAGE = (
    F.TYPE_STRING,
    F.TYPE_BYTES,
    F.TYPE_UINT64,
    F.TYPE_UINT32,
    F.TYPE_BOOL,
    F.TYPE_MESSAGE,
)
MAP = "map"
REPEATED = "repeated"

# rpc name -> (request, response, server streaming)
RPCS = {
    "Publish": ("PublishRequest", "PublishResponse", False),
    "Fetch": ("FetchRequest", "FetchResponse", True),
    "Subscribe": ("SubscribeRequest", "SubscribeResponse", True),
    "GetHead": ("GetHeadRequest", "GetHeadResponse", False),
    "ListHeads": ("ListHeadsRequest", "ListHeadsResponse", False),
    "ListPeerSyncStates": ("ListPeerSyncStatesRequest", "ListPeerSyncStatesResponse", False),
    "DeleteRange": ("DeleteRangeRequest", "DeleteRangeResponse", False),
    "EnqueueFifo": ("EnqueueFifoRequest", "EnqueueFifoResponse", False),
    "PeekFifo": ("PeekFifoRequest", "PeekFifoResponse", False),
    "AckFifo": ("AckFifoRequest", "AckFifoResponse", False),
    "RejectFifo": ("RejectFifoRequest", "RejectFifoResponse", False),
    "Health": ("HealthRequest", "HealthResponse", False),
    "Ready": ("ReadyRequest", "ReadyResponse", False),
}

# message -> {field: (number, type, message type name or MAP/REPEATED marker)}
NODE = ("msgbus.v1.NodeId",)
MESSAGES: dict[str, dict[str, tuple[object, ...]]] = {
    "NodeId": {"tenant_id": (1, STRING), "bl_name": (2, STRING), "device_id": (3, STRING)},
    "MessageEnvelope": {
        "id": (1, STRING),
        "topic": (2, STRING),
        "origin": (3, MESSAGE, *NODE),
        "head_id": (4, UINT64),
        "payload": (5, BYTES),
        "headers": (6, MESSAGE, MAP),
        "created_at_ms": (7, UINT64),
        "deleted": (8, BOOL),
    },
    "PublishRequest": {
        "topic": (1, STRING),
        "origin": (2, MESSAGE, *NODE),
        "payload": (3, BYTES),
        "headers": (4, MESSAGE, MAP),
    },
    "PublishResponse": {"message": (1, MESSAGE, "msgbus.v1.MessageEnvelope")},
    "FetchRequest": {
        "topic": (1, STRING),
        "origin": (2, MESSAGE, *NODE),
        "from_head_id": (3, UINT64),
        "limit": (4, UINT32),
    },
    "FetchResponse": {"message": (1, MESSAGE, "msgbus.v1.MessageEnvelope")},
    "SubscribeRequest": {
        "topic": (1, STRING),
        "origin": (2, MESSAGE, *NODE),
        "from_head_id": (3, UINT64),
        "replay_limit": (4, UINT32),
    },
    "SubscribeResponse": {"message": (1, MESSAGE, "msgbus.v1.MessageEnvelope")},
    "GetHeadRequest": {"topic": (1, STRING), "origin": (2, MESSAGE, *NODE)},
    "GetHeadResponse": {"head_id": (1, UINT64), "found": (2, BOOL)},
    "TopicHead": {"topic": (1, STRING), "origin": (2, MESSAGE, *NODE), "head_id": (3, UINT64)},
    "PeerSyncState": {
        "peer": (1, STRING),
        "topic": (2, STRING),
        "origin": (3, MESSAGE, *NODE),
        "local_head": (4, UINT64),
        "remote_head": (5, UINT64),
        "last_synced_head": (6, UINT64),
        "last_attempt_at_ms": (7, UINT64),
        "last_success_at_ms": (8, UINT64),
        "consecutive_failures": (9, UINT32),
        "last_error": (10, STRING),
    },
    "ListHeadsRequest": {},
    "ListHeadsResponse": {"heads": (1, MESSAGE, REPEATED, "msgbus.v1.TopicHead")},
    "ListPeerSyncStatesRequest": {},
    "ListPeerSyncStatesResponse": {"states": (1, MESSAGE, REPEATED, "msgbus.v1.PeerSyncState")},
    "DeleteRangeRequest": {
        "topic": (1, STRING),
        "origin": (2, MESSAGE, *NODE),
        "from_head_id": (3, UINT64),
        "to_head_id": (4, UINT64),
    },
    "DeleteRangeResponse": {"deleted_count": (1, UINT64)},
    "FifoMessage": {
        "id": (1, STRING),
        "queue": (2, STRING),
        "topic": (3, STRING),
        "source": (4, MESSAGE, *NODE),
        "target": (5, MESSAGE, *NODE),
        "payload": (6, BYTES),
        "headers": (7, MESSAGE, MAP),
        "created_at_ms": (8, UINT64),
        "sequence": (9, UINT64),
        "attempts": (10, UINT32),
    },
    "EnqueueFifoRequest": {
        "queue": (1, STRING),
        "topic": (2, STRING),
        "source": (3, MESSAGE, *NODE),
        "target": (4, MESSAGE, *NODE),
        "payload": (5, BYTES),
        "headers": (6, MESSAGE, MAP),
    },
    "EnqueueFifoResponse": {"message": (1, MESSAGE, "msgbus.v1.FifoMessage")},
    "PeekFifoRequest": {"queue": (1, STRING)},
    "PeekFifoResponse": {"message": (1, MESSAGE, "msgbus.v1.FifoMessage")},
    "AckFifoRequest": {"queue": (1, STRING), "message_id": (2, STRING)},
    "AckFifoResponse": {"accepted": (1, BOOL)},
    "RejectFifoRequest": {"queue": (1, STRING), "message_id": (2, STRING)},
    "RejectFifoResponse": {"accepted": (1, BOOL)},
    "HealthRequest": {},
    "HealthResponse": {"status": (1, STRING), "node": (2, MESSAGE, *NODE)},
    "ReadyRequest": {},
    "ReadyResponse": {
        "ready": (1, BOOL),
        "status": (2, STRING),
        "error": (3, STRING),
        "node": (4, MESSAGE, *NODE),
    },
}

# The additive extensions of msgbus.v1 (new numbers that original clients ignore), pinned like
# the original fields: once released, an extension keeps its name, number and type too.
EXTENSIONS: dict[str, dict[str, tuple[object, ...]]] = {
    "FetchRequest": {"max_messages_per_response": (5, UINT32)},
    "FetchResponse": {
        "messages": (2, MESSAGE, REPEATED, "msgbus.v1.MessageEnvelope"),
        "first_head_id": (3, UINT64),
    },
    "PublishRequest": {"idempotency_key": (5, STRING)},
    "PublishResponse": {"duplicate": (2, BOOL)},
    "SubscribeRequest": {
        "max_messages_per_response": (5, UINT32),
        "topic_pattern": (6, STRING),
        "origin_pattern": (7, STRING),
        "resume_after": (8, MESSAGE, REPEATED, "msgbus.v1.TopicHead"),
    },
    "SubscribeResponse": {
        "messages": (2, MESSAGE, REPEATED, "msgbus.v1.MessageEnvelope"),
        "first_head_id": (3, UINT64),
    },
    "GetHeadResponse": {"first_head_id": (3, UINT64), "bytes": (4, UINT64)},
    "TopicHead": {"first_head_id": (4, UINT64), "bytes": (5, UINT64)},
    "ListHeadsRequest": {
        "page_size": (1, UINT32),
        "page_token": (2, STRING),
        "changed_since": (3, STRING),
    },
    "ListHeadsResponse": {"next_page_token": (2, STRING), "cursor": (3, STRING)},
    "ListPeerSyncStatesRequest": {"page_size": (1, UINT32), "page_token": (2, STRING)},
    "ListPeerSyncStatesResponse": {"next_page_token": (2, STRING)},
    "PeerSyncState": {"direction": (11, STRING)},
    "FifoMessage": {"dead_reason": (11, STRING), "leased_until_ms": (12, UINT64)},
}


def describe_field(field: FieldDescriptor) -> tuple[object, ...]:
    """A field as (number, type, [MAP | REPEATED], [message type]) for comparison."""
    if field.type != MESSAGE:
        assert not field.is_repeated, field.full_name
        return (field.number, field.type)
    message_type = field.message_type
    assert message_type is not None, field.full_name
    if message_type.GetOptions().map_entry:
        key, value = message_type.fields
        assert (key.type, value.type) == (STRING, STRING), field.full_name
        return (field.number, MESSAGE, MAP)
    if field.is_repeated:
        return (field.number, MESSAGE, REPEATED, message_type.full_name)
    return (field.number, MESSAGE, message_type.full_name)


def test_the_service_has_the_original_rpcs_with_their_streaming_kinds() -> None:
    service = pb.DESCRIPTOR.services_by_name["MsgbusService"]
    assert service.full_name == SERVICE_NAME
    original = {
        name: (
            method.input_type.name,
            method.output_type.name,
            method.server_streaming,
        )
        for name, method in service.methods_by_name.items()
        if name in RPCS
    }
    assert original == RPCS
    assert list(RPCS) == [m.name for m in service.methods if m.name in RPCS]
    # Only the additive streaming extensions take a stream from the client.
    assert {m.name for m in service.methods if m.client_streaming} == {"PublishStream", "Push"}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_original_field_keeps_its_name_number_and_type(name: str) -> None:
    descriptor = pb.DESCRIPTOR.message_types_by_name[name]
    fields = {f.name: describe_field(f) for f in descriptor.fields}
    for field_name, expected in MESSAGES[name].items():
        assert fields.get(field_name) == expected, f"{name}.{field_name}"
    extensions = set(fields) - set(MESSAGES[name])
    original_numbers = {spec[0] for spec in MESSAGES[name].values()}
    assert not {fields[f][0] for f in extensions} & original_numbers


@pytest.mark.parametrize("name", sorted(EXTENSIONS))
def test_every_extension_keeps_its_name_number_and_type(name: str) -> None:
    descriptor = pb.DESCRIPTOR.message_types_by_name[name]
    fields = {f.name: describe_field(f) for f in descriptor.fields}
    extensions = {f: spec for f, spec in fields.items() if f not in MESSAGES[name]}
    assert extensions == EXTENSIONS[name]


def test_every_field_beyond_the_original_is_a_pinned_extension() -> None:
    for name in MESSAGES:
        descriptor = pb.DESCRIPTOR.message_types_by_name[name]
        added = {f.name for f in descriptor.fields} - set(MESSAGES[name])
        assert added == set(EXTENSIONS.get(name, {})), name


def test_the_proto_package_is_msgbus_v1() -> None:
    assert pb.DESCRIPTOR.package == "msgbus.v1"
    assert pb.DESCRIPTOR.name == "msgbus/v1/msgbus.proto"


def _sample_envelope_kwargs() -> dict[str, object]:
    return {
        "id": "2f1d7c1e-9a4b-4b6e-8c1d-0123456789ab",
        "topic": "events.é",
        "head_id": 2**64 - 1,
        "payload": bytes(range(256)),
        "headers": {"b": "2", "a": "1", "ключ": "значение"},
        "created_at_ms": 1_700_000_000_000,
        "deleted": True,
    }


def test_official_and_betterproto2_encodings_are_byte_identical() -> None:
    bp = importlib.import_module("msgbus_sdk._generated.msgbus.v1")
    kwargs = _sample_envelope_kwargs()
    official = pb.MessageEnvelope(origin=pb.NodeId(tenant_id="t", bl_name="b", device_id="d"))
    for key, value in kwargs.items():
        if isinstance(value, dict):
            official.headers.update({str(k): str(v) for k, v in value.items()})
        else:
            setattr(official, key, value)
    dataclass = bp.MessageEnvelope(origin=bp.NodeId(tenant_id="t", bl_name="b", device_id="d"))
    for key, value in kwargs.items():
        setattr(dataclass, key, value)
    # Map entries have no defined order on the wire; compare with deterministic encoding where
    # both libraries sort, then check each side decodes the other's bytes to the same value.
    official_bytes = official.SerializeToString(deterministic=True)
    betterproto_bytes = bytes(dataclass)
    assert sorted(official_bytes) == sorted(betterproto_bytes)
    assert pb.MessageEnvelope.FromString(betterproto_bytes) == official
    assert bp.MessageEnvelope.parse(official_bytes) == dataclass


def test_encodings_without_maps_are_byte_identical() -> None:
    bp = importlib.import_module("msgbus_sdk._generated.msgbus.v1")

    def fifo_message(module: Any) -> Any:
        """The same message through either generated module (official protobuf or dataclass)."""
        return module.FifoMessage(
            id="x",
            queue="q",
            topic="t",
            source=module.NodeId(tenant_id="a", bl_name="b", device_id="c"),
            target=module.NodeId(),
            payload=b"\x00\xff",
            created_at_ms=2**63,
            sequence=2**64 - 1,
            attempts=2**32 - 1,
        )

    official, dataclass = fifo_message(pb), fifo_message(bp)
    assert bytes(dataclass) == official.SerializeToString()
    assert bp.FifoMessage.parse(official.SerializeToString()) == dataclass
    # An empty but present NodeId survives both ways: presence is part of the contract.
    assert pb.FifoMessage.FromString(bytes(dataclass)).HasField("target")


def test_server_and_sdk_generated_modules_load_together_once() -> None:
    from google.protobuf import descriptor_pool

    official = importlib.import_module("msgbus.v1.msgbus_pb2")
    grpc_module = importlib.import_module("msgbus.v1.msgbus_pb2_grpc")
    sdk = importlib.import_module("msgbus_sdk._generated.msgbus.v1")
    assert official is pb
    assert hasattr(grpc_module, "MsgbusServiceStub")
    assert hasattr(sdk, "MessageEnvelope")
    pool_file = descriptor_pool.Default().FindFileByName("msgbus/v1/msgbus.proto")
    assert pool_file is pb.DESCRIPTOR
