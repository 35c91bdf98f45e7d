"""The original msgbus's server-side tests (reference section 8), against real daemons.

Where DESIGN.md deliberately changes a behaviour (delete ranges are clamped, so there is no
"future tombstone"), the test asserts the new behaviour and says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc

from msgbus_proto import pb, rpc
from msgbus_testkit.calls import code_of
from msgbus_testkit.logs import fetch_page, publish
from msgbus_testkit.nodes import OTHER


def test_publish_rejects_non_local_origin(stub: rpc.MsgbusServiceStub) -> None:
    request = pb.PublishRequest(topic="events", origin=OTHER, payload=b"x")
    assert code_of(lambda: stub.Publish(request)) == grpc.StatusCode.PERMISSION_DENIED


def test_publish_rejects_reserved_delete_topic(stub: rpc.MsgbusServiceStub) -> None:
    request = pb.PublishRequest(topic="$msgbus.delete", payload=b"x")
    assert code_of(lambda: stub.Publish(request)) == grpc.StatusCode.PERMISSION_DENIED


def test_delete_range_rejects_non_local_origin(stub: rpc.MsgbusServiceStub) -> None:
    request = pb.DeleteRangeRequest(topic="events", origin=OTHER, from_head_id=1, to_head_id=1)
    assert code_of(lambda: stub.DeleteRange(request)) == grpc.StatusCode.PERMISSION_DENIED


def test_appends_and_fetches_messages_in_head_order(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("order")
    assert publish(stub, topic, b"one").head_id == 1
    assert publish(stub, topic, b"two").head_id == 2
    assert stub.GetHead(pb.GetHeadRequest(topic=topic)).head_id == 2
    assert [m.payload for m in fetch_page(stub, topic, from_head_id=1, limit=10)] == [
        b"one",
        b"two",
    ]


def test_tombstone_range_with_marker_updates_and_appends_control_message(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("marker")
    publish(stub, topic, b"one")
    before = len(fetch_page(stub, "$msgbus.delete", limit=10_000))
    reply = stub.DeleteRange(pb.DeleteRangeRequest(topic=topic, from_head_id=1, to_head_id=1))
    assert reply.deleted_count == 1
    markers = fetch_page(stub, "$msgbus.delete", limit=10_000)[before:]
    assert [m.topic for m in markers] == ["$msgbus.delete"]
    assert json.loads(markers[0].payload)["topic"] == topic
    assert fetch_page(stub, topic)[0].deleted


def test_tombstone_marks_messages_without_changing_head(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("keephead")
    for payload in (b"1", b"2", b"3"):
        publish(stub, topic, payload)
    reply = stub.DeleteRange(pb.DeleteRangeRequest(topic=topic, from_head_id=2, to_head_id=3))
    assert reply.deleted_count == 2
    assert stub.GetHead(pb.GetHeadRequest(topic=topic)).head_id == 3
    assert [m.deleted for m in fetch_page(stub, topic)] == [False, True, True]


def test_tombstone_range_is_idempotent(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("idem")
    publish(stub, topic)
    request = pb.DeleteRangeRequest(topic=topic, from_head_id=1, to_head_id=1)
    assert stub.DeleteRange(request).deleted_count == 1
    assert stub.DeleteRange(request).deleted_count == 0


def test_future_tombstone_is_clamped_by_design(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    """The original's `future_tombstone_marks_later_appends` is a weakness (reference 10.5):
    a delete is clamped to the current head, so later appends are not deleted."""
    topic = name("future")
    stub.DeleteRange(pb.DeleteRangeRequest(topic=topic, from_head_id=1, to_head_id=1))
    message = publish(stub, topic)
    assert not message.deleted
    assert not fetch_page(stub, topic)[0].deleted


def test_fifo_ack_only_accepts_front_message(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    queue = name("fifo")
    target = pb.NodeId(tenant_id="t", bl_name="b", device_id="d")
    a = stub.EnqueueFifo(pb.EnqueueFifoRequest(queue=queue, topic="j", target=target)).message
    b = stub.EnqueueFifo(pb.EnqueueFifoRequest(queue=queue, topic="j", target=target)).message
    assert not stub.AckFifo(pb.AckFifoRequest(queue=queue, message_id=b.id)).accepted
    assert stub.PeekFifo(pb.PeekFifoRequest(queue=queue)).message.id == a.id
    assert stub.AckFifo(pb.AckFifoRequest(queue=queue, message_id=a.id)).accepted
    assert stub.PeekFifo(pb.PeekFifoRequest(queue=queue)).message.id == b.id
