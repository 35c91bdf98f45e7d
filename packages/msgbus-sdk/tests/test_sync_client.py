"""Every method of the blocking MsgbusClient against a real daemon (SQLite store)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from msgbus_sdk import (
    ConfigurationError,
    InvalidArgumentError,
    MsgbusClient,
    NodeId,
    PermissionDeniedError,
    UnavailableError,
)
from msgbus_server.testing import Daemon, free_port

LOCAL = NodeId(tenant_id="tenant", bl_name="default", device_id="device")
OTHER = NodeId(tenant_id="tenant", bl_name="default", device_id="elsewhere")


@pytest.fixture
def bus(daemon: Daemon) -> Iterator[MsgbusClient]:
    with MsgbusClient.connect(daemon.endpoint) as client:
        yield client


def test_connect_and_close(daemon: Daemon) -> None:
    with MsgbusClient.connect(f"http://{daemon.endpoint}/") as client:
        assert client.node == LOCAL
        assert client.target == f"http://{daemon.endpoint}/"
    assert client.closed
    with pytest.raises(ConfigurationError, match="closed"):
        client.health()


def test_connect_to_a_dead_port_raises_unavailable() -> None:
    with pytest.raises(UnavailableError):
        MsgbusClient.connect(f"127.0.0.1:{free_port()}", timeout=5)


def test_health_and_ready(bus: MsgbusClient) -> None:
    assert (bus.health().status, bus.health().node) == ("SERVING", LOCAL)
    ready = bus.ready()
    assert (ready.ready, ready.status) == (True, "READY")


def test_publish_fetch_and_iter_fetch(bus: MsgbusClient, topic: str) -> None:
    published = [bus.publish(topic, f"m{i}", {"i": str(i)}) for i in range(15)]
    assert [m.head_id for m in published] == list(range(1, 16))
    page = bus.fetch(topic, from_head_id=3, limit=4)
    assert [(m.head_id, m.payload, m.headers) for m in page] == [
        (h, f"m{h - 1}".encode(), {"i": str(h - 1)}) for h in range(3, 7)
    ]
    assert [m.head_id for m in bus.iter_fetch(topic, page_size=4)] == list(range(1, 16))
    assert [m.head_id for m in bus.iter_fetch(topic, LOCAL, 14)] == [14, 15]
    assert [m.head_id for m in bus.iter_fetch(topic, to_head_id=2)] == [1, 2]
    with pytest.raises(InvalidArgumentError):
        bus.fetch("")


def test_publish_to_a_foreign_origin_is_denied(daemon: Daemon, topic: str) -> None:
    with (
        MsgbusClient.connect(daemon.endpoint, default_origin=OTHER) as other,
        pytest.raises(PermissionDeniedError, match="origin"),
    ):
        other.publish(topic, b"x")


def test_subscribe_replays_then_follows_live(bus: MsgbusClient, topic: str) -> None:
    for i in range(7):
        bus.publish(topic, str(i))
    received: list[int] = []
    with bus.subscribe(topic, replay_limit=2) as subscription:
        for message in subscription:
            received.append(message.head_id)
            if message.head_id == 7:
                bus.publish(topic, b"live")
            if message.head_id == 8:
                assert message.payload == b"live"
                break
    assert received == list(range(1, 9))
    assert list(subscription) == []  # closed: iteration is over


def test_subscription_close_from_another_thread_ends_iteration(
    bus: MsgbusClient, topic: str
) -> None:
    subscription = bus.subscribe(topic)
    bus.publish(topic, b"first")
    assert next(subscription).head_id == 1
    timer = threading.Timer(0.2, subscription.close)
    timer.start()
    assert list(subscription) == []
    timer.join()


def test_heads_sync_states_and_delete(bus: MsgbusClient, topic: str) -> None:
    assert not bus.get_head(topic).found
    for i in range(3):
        bus.publish(topic, str(i))
    assert bus.get_head(topic, LOCAL).head_id == 3
    assert any(h.topic == topic and h.head_id == 3 for h in bus.list_heads())
    assert bus.list_peer_sync_states() == []
    assert bus.delete_range(topic, 1, 2) == 2
    assert [m.deleted for m in bus.fetch(topic)] == [True, True, False]
    assert any(h.topic == "$msgbus.delete" for h in bus.list_heads())


def test_fifo(bus: MsgbusClient, topic: str) -> None:
    queue = f"q.{topic}"
    assert bus.peek_fifo(queue) is None
    job = bus.enqueue_fifo(queue, topic, OTHER, b"job", {"a": "b"})
    assert job.sequence == 1
    assert job.target == OTHER
    assert bus.reject_fifo(queue, "not-the-front") is False
    assert bus.reject_fifo(queue, job.id) is True
    front = bus.peek_fifo(queue)
    assert front is not None
    assert front.attempts == 1
    assert bus.ack_fifo(queue, job.id) is True
    assert bus.peek_fifo(queue) is None
    with pytest.raises(InvalidArgumentError):
        bus.enqueue_fifo(queue, topic, NodeId(), b"x")
