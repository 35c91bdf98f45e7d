"""Every msgbus.v1 RPC's happy path against a real daemon, on every backend."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import grpc
import pytest

from msgbus_proto import SERVICE_NAME, pb, rpc
from msgbus_server.testing import Daemon
from msgbus_testkit.calls import code_of
from msgbus_testkit.logs import fetch_page, publish
from msgbus_testkit.nodes import LOCAL


def test_health_and_ready(stub: rpc.MsgbusServiceStub) -> None:
    health = stub.Health(pb.HealthRequest())
    assert health.status == "SERVING"
    assert health.node == LOCAL
    ready = stub.Ready(pb.ReadyRequest())
    assert (ready.ready, ready.status, ready.error) == (True, "READY", "")
    assert ready.node == LOCAL


def test_publish_returns_the_stored_envelope(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("events")
    first = publish(stub, topic, b"one", headers={"k": "v", "a": "b"})
    second = publish(stub, topic, b"two", origin=LOCAL)
    third = publish(stub, topic, b"three", origin=pb.NodeId())  # all-empty = local
    assert [first.head_id, second.head_id, third.head_id] == [1, 2, 3]
    assert first.topic == topic
    assert first.origin == LOCAL
    assert first.payload == b"one"
    assert dict(first.headers) == {"k": "v", "a": "b"}
    assert not first.deleted
    assert str(uuid.UUID(first.id)) == first.id
    assert uuid.UUID(first.id).version == 4
    assert first.created_at_ms > 1_600_000_000_000
    assert len({first.id, second.id, third.id}) == 3


def test_publish_batch_is_one_ordered_transaction(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    a, b = name("a"), name("b")
    publish(stub, a, b"before")
    entries = [pb.PublishRequest(topic=a if i % 2 == 0 else b, payload=b"%d" % i) for i in range(6)]
    reply = stub.PublishBatch(pb.PublishBatchRequest(entries=entries))
    assert [(m.topic, m.head_id, m.payload) for m in reply.messages] == [
        (a, 2, b"0"),
        (b, 1, b"1"),
        (a, 3, b"2"),
        (b, 2, b"3"),
        (a, 4, b"4"),
        (b, 3, b"5"),
    ]
    assert [m.payload for m in fetch_page(stub, a)] == [b"before", b"0", b"2", b"4"]


def test_fetch_pages_defaults_and_caps(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("fetch")
    entries = [pb.PublishRequest(topic=topic, payload=b"%d" % i) for i in range(250)]
    stub.PublishBatch(pb.PublishBatchRequest(entries=entries))
    # limit 0 means 100; from 0 means 1.
    assert [m.head_id for m in fetch_page(stub, topic)] == list(range(1, 101))
    assert [m.head_id for m in fetch_page(stub, topic, from_head_id=0, limit=3)] == [1, 2, 3]
    assert [m.head_id for m in fetch_page(stub, topic, from_head_id=240, limit=100)] == list(
        range(240, 251)
    )
    assert len(fetch_page(stub, topic, limit=4_000_000_000)) == 250
    assert fetch_page(stub, topic, from_head_id=251) == []
    assert fetch_page(stub, topic, from_head_id=2**64 - 1) == []
    assert fetch_page(stub, name("unknown")) == []
    assert (
        fetch_page(stub, topic, origin=pb.NodeId(tenant_id="x", bl_name="y", device_id="z")) == []
    )


def test_fetch_limit_is_capped_at_10000(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("cap")
    entries = [pb.PublishRequest(topic=topic, payload=b"p") for _ in range(10_000)]
    stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=120)
    publish(stub, topic, b"last")
    heads = [m.head_id for m in fetch_page(stub, topic, limit=20_000)]
    assert heads == list(range(1, 10_001))


def test_fetch_packing_extension(stub: rpc.MsgbusServiceStub, name: Callable[[str], str]) -> None:
    topic = name("packed")
    entries = [pb.PublishRequest(topic=topic, payload=b"%d" % i) for i in range(25)]
    stub.PublishBatch(pb.PublishBatchRequest(entries=entries))
    responses = list(
        stub.Fetch(pb.FetchRequest(topic=topic, limit=25, max_messages_per_response=10))
    )
    assert [len(r.messages) for r in responses] == [10, 10, 5]
    assert all(not r.HasField("message") for r in responses)
    heads = [m.head_id for r in responses for m in r.messages]
    assert heads == list(range(1, 26))


def test_get_head(stub: rpc.MsgbusServiceStub, name: Callable[[str], str]) -> None:
    topic = name("head")
    missing = stub.GetHead(pb.GetHeadRequest(topic=topic))
    assert (missing.head_id, missing.found) == (0, False)
    publish(stub, topic)
    publish(stub, topic)
    head = stub.GetHead(pb.GetHeadRequest(topic=topic, origin=LOCAL))
    assert (head.head_id, head.found) == (2, True)


def test_list_heads_sorted_with_delete_log(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    b_topic, a_topic = "zz-" + name("b"), "aa-" + name("a")
    publish(stub, b_topic)
    publish(stub, a_topic)
    publish(stub, a_topic)
    stub.DeleteRange(pb.DeleteRangeRequest(topic=a_topic, from_head_id=1, to_head_id=1))
    heads = stub.ListHeads(pb.ListHeadsRequest()).heads
    mine = {(h.topic, h.head_id) for h in heads if h.topic in (a_topic, b_topic)}
    assert mine == {(a_topic, 2), (b_topic, 1)}
    assert any(h.topic == "$msgbus.delete" and h.origin == LOCAL for h in heads)
    keys = [(h.topic, h.origin.tenant_id, h.origin.bl_name, h.origin.device_id) for h in heads]
    assert [k[0].encode() for k in keys] == sorted(k[0].encode() for k in keys)


def test_list_peer_sync_states_empty_without_peers(stub: rpc.MsgbusServiceStub) -> None:
    assert list(stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest()).states) == []


def test_delete_range_erases_clamps_and_marks(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("del")
    for i in range(3):
        publish(stub, topic, b"secret-%d" % i, headers={"h": "v"})
    markers_before = fetch_page(stub, "$msgbus.delete", limit=10_000)
    reply = stub.DeleteRange(
        pb.DeleteRangeRequest(topic=topic, from_head_id=2, to_head_id=2**64 - 1)
    )
    assert reply.deleted_count == 2
    messages = fetch_page(stub, topic)
    assert [(m.head_id, m.deleted) for m in messages] == [(1, False), (2, True), (3, True)]
    assert messages[0].payload == b"secret-0"
    # Delete erases: payload and headers are gone, id and head stay.
    assert all(m.payload == b"" and not m.headers for m in messages[1:])
    # Clamped to the head: a later publish is not deleted (no "future tombstone").
    later = publish(stub, topic, b"later")
    assert (later.head_id, later.deleted) == (4, False)
    assert stub.GetHead(pb.GetHeadRequest(topic=topic)).head_id == 4
    # One marker in the original's compact JSON, with the clamped range.
    markers = fetch_page(stub, "$msgbus.delete", limit=10_000)[len(markers_before) :]
    assert len(markers) == 1
    marker = markers[0]
    assert marker.origin == LOCAL
    assert not marker.headers
    assert json.loads(marker.payload) == {
        "topic": topic,
        "origin": {"tenant_id": "tenant", "bl_name": "default", "device_id": "device"},
        "from_head_id": 2,
        "to_head_id": 3,
        "created_at_ms": json.loads(marker.payload)["created_at_ms"],
    }
    assert marker.payload.startswith(b'{"topic":"' + topic.encode() + b'","origin":{"tenant_id"')
    # Deleting again counts nothing new.
    again = stub.DeleteRange(pb.DeleteRangeRequest(topic=topic, from_head_id=2, to_head_id=3))
    assert again.deleted_count == 0


def test_delete_range_beyond_head_changes_nothing(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("future")
    reply = stub.DeleteRange(pb.DeleteRangeRequest(topic=topic, from_head_id=0, to_head_id=10))
    assert reply.deleted_count == 0
    message = publish(stub, topic)
    assert (message.head_id, message.deleted) == (1, False)


def test_fifo_enqueue_peek_ack_reject(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    queue = name("queue")
    target = pb.NodeId(tenant_id="t", bl_name="b", device_id="d")
    a = stub.EnqueueFifo(
        pb.EnqueueFifoRequest(queue=queue, topic="jobs", target=target, payload=b"A")
    ).message
    b = stub.EnqueueFifo(
        pb.EnqueueFifoRequest(
            queue=queue, topic="jobs", source=LOCAL, target=target, payload=b"B", headers={"x": "1"}
        )
    ).message
    assert (a.sequence, b.sequence) == (1, 2)
    assert (a.source, a.target, a.attempts) == (LOCAL, target, 0)
    assert dict(b.headers) == {"x": "1"}
    assert stub.PeekFifo(pb.PeekFifoRequest(queue=queue)).message == a
    # Only the front can be acked or rejected.
    assert not stub.AckFifo(pb.AckFifoRequest(queue=queue, message_id=b.id)).accepted
    assert not stub.RejectFifo(pb.RejectFifoRequest(queue=queue, message_id=b.id)).accepted
    assert not stub.AckFifo(pb.AckFifoRequest(queue=queue, message_id="unknown")).accepted
    # Reject keeps the message at the front and counts the attempt.
    assert stub.RejectFifo(pb.RejectFifoRequest(queue=queue, message_id=a.id)).accepted
    front = stub.PeekFifo(pb.PeekFifoRequest(queue=queue)).message
    assert (front.id, front.attempts) == (a.id, 1)
    assert stub.AckFifo(pb.AckFifoRequest(queue=queue, message_id=a.id)).accepted
    assert stub.PeekFifo(pb.PeekFifoRequest(queue=queue)).message.id == b.id
    assert stub.AckFifo(pb.AckFifoRequest(queue=queue, message_id=b.id)).accepted
    assert code_of(lambda: stub.PeekFifo(pb.PeekFifoRequest(queue=queue))) == (
        grpc.StatusCode.NOT_FOUND
    )
    # Sequences are never reused.
    c = stub.EnqueueFifo(pb.EnqueueFifoRequest(queue=queue, topic="jobs", target=target)).message
    assert c.sequence == 3


def test_subscribe_replays_then_goes_live(
    shared_daemon: Daemon, name: Callable[[str], str]
) -> None:
    stub = shared_daemon.stub()
    topic = name("sub")
    publish(stub, topic, b"1")
    publish(stub, topic, b"2")
    stream = stub.Subscribe(pb.SubscribeRequest(topic=topic, from_head_id=2), timeout=60)
    responses = iter(stream)
    try:
        assert next(responses).message.payload == b"2"
        publish(stub, topic, b"3")
        message = next(responses).message
        assert (message.head_id, message.payload) == (3, b"3")
    finally:
        stream.cancel()  # type: ignore[no-untyped-call]


def test_standard_health_service(shared_daemon: Daemon) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = shared_daemon.channel()
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_server_reflection_lists_services(shared_daemon: Daemon) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = shared_daemon.channel()
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    reply = next(iter(stub.ServerReflectionInfo(iter([symbol]), timeout=10)))
    assert reply.file_descriptor_response.file_descriptor_proto


@pytest.mark.parametrize("size", [0, 4096])
def test_payload_sizes_up_to_the_limit(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str], size: int
) -> None:
    topic = name("size")
    message = publish(stub, topic, b"\xff" * size)
    assert fetch_page(stub, topic)[0].payload == b"\xff" * size
    assert message.head_id == 1
