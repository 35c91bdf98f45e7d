"""Every method of AsyncMsgbusClient against a real daemon (SQLite store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from msgbus_sdk import (
    AsyncMsgbusClient,
    ConfigurationError,
    InvalidArgumentError,
    MessageEnvelope,
    NodeId,
    PermissionDeniedError,
    UnavailableError,
)
from msgbus_server.testing import Daemon

LOCAL = NodeId(tenant_id="tenant", bl_name="default", device_id="device")
OTHER = NodeId(tenant_id="tenant", bl_name="default", device_id="elsewhere")


@pytest.fixture
async def bus(daemon: Daemon) -> AsyncIterator[AsyncMsgbusClient]:
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as client:
        yield client


async def test_connect_reports_the_daemons_node_and_accepts_url_targets(daemon: Daemon) -> None:
    async with await AsyncMsgbusClient.connect(f"http://{daemon.endpoint}") as client:
        assert client.node == LOCAL
        assert not client.closed
    assert client.closed


async def test_connect_to_a_dead_port_raises_unavailable_quickly(tmp_path: object) -> None:
    from msgbus_server.testing import free_port

    with pytest.raises(UnavailableError) as info:
        await AsyncMsgbusClient.connect(f"127.0.0.1:{free_port()}", timeout=5)
    assert info.value.retryable


async def test_health_and_ready(bus: AsyncMsgbusClient) -> None:
    health = await bus.health()
    assert (health.status, health.node) == ("SERVING", LOCAL)
    ready = await bus.ready()
    assert (ready.ready, ready.status, ready.error, ready.node) == (True, "READY", "", LOCAL)


async def test_publish_returns_the_stored_envelope(bus: AsyncMsgbusClient, topic: str) -> None:
    first = await bus.publish(topic, b"one", {"k": "v"})
    second = await bus.publish(topic, "two")
    assert isinstance(first, MessageEnvelope)
    assert (first.head_id, second.head_id) == (1, 2)
    assert (first.topic, first.origin, first.payload, first.headers) == (
        topic,
        LOCAL,
        b"one",
        {"k": "v"},
    )
    assert second.payload == b"two"
    assert len(first.id) == 36
    assert first.created_at_ms > 0
    assert not first.deleted


async def test_publish_errors_carry_the_servers_message(bus: AsyncMsgbusClient) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        await bus.publish("", b"x")
    assert "topic" in info.value.message
    with pytest.raises(PermissionDeniedError):
        await bus.publish("$msgbus.delete", b"x")


async def test_default_origin_applies_to_writes(daemon: Daemon, topic: str) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint, default_origin=OTHER) as other:
        with pytest.raises(PermissionDeniedError):
            await other.publish(topic, b"x")
    async with await AsyncMsgbusClient.connect(
        daemon.endpoint, default_origin="tenant/default/device"
    ) as local:
        assert (await local.publish(topic, b"x")).origin == LOCAL
        assert local.default_origin == LOCAL


async def test_fetch_returns_one_page(bus: AsyncMsgbusClient, topic: str) -> None:
    for i in range(5):
        await bus.publish(topic, f"m{i}")
    page = await bus.fetch(topic, from_head_id=2, limit=3)
    assert [m.head_id for m in page] == [2, 3, 4]
    assert [m.payload for m in page] == [b"m1", b"m2", b"m3"]
    assert await bus.fetch(topic, LOCAL, 5, 10) == [
        (await bus.fetch(topic, "tenant/default/device", 5))[0]
    ]
    assert await bus.fetch("sdk.nothing.here") == []
    assert await bus.fetch(topic, OTHER) == []


async def test_iter_fetch_pages_lazily_through_the_whole_range(
    bus: AsyncMsgbusClient, topic: str
) -> None:
    for i in range(25):
        await bus.publish(topic, str(i))
    heads = [m.head_id async for m in bus.iter_fetch(topic, page_size=7)]
    assert heads == list(range(1, 26))
    bounded = [m.head_id async for m in bus.iter_fetch(topic, None, 5, 12, page_size=3)]
    assert bounded == list(range(5, 13))
    # Stopping early is fine: the iterator is lazy.
    async for message in bus.iter_fetch(topic, page_size=10):
        assert message.head_id == 1
        break
    assert [m async for m in bus.iter_fetch("sdk.nothing.here")] == []


async def test_subscribe_replays_past_replay_limit_then_follows_live(
    bus: AsyncMsgbusClient, topic: str
) -> None:
    for i in range(12):
        await bus.publish(topic, str(i))
    received: list[int] = []
    async with bus.subscribe(topic, replay_limit=5) as subscription:
        async for message in subscription:
            received.append(message.head_id)
            if message.head_id == 12:
                await bus.publish(topic, b"live")
            if message.head_id == 13:
                assert message.payload == b"live"
                break
        assert subscription.next_head_id == 14
    assert received == list(range(1, 14))


async def test_subscribe_from_a_later_head(bus: AsyncMsgbusClient, topic: str) -> None:
    for i in range(4):
        await bus.publish(topic, str(i))
    subscription = bus.subscribe(topic, LOCAL, from_head_id=3, reconnect=False)
    first = await anext(subscription)
    second = await anext(subscription)
    await subscription.aclose()
    assert (first.head_id, second.head_id) == (3, 4)
    with pytest.raises(StopAsyncIteration):
        await anext(subscription)


async def test_subscribe_errors_are_not_retried(bus: AsyncMsgbusClient) -> None:
    with pytest.raises(InvalidArgumentError):
        await anext(bus.subscribe(""))


async def test_closing_the_client_ends_subscriptions(daemon: Daemon, topic: str) -> None:
    client = await AsyncMsgbusClient.connect(daemon.endpoint)
    subscription = client.subscribe(topic)
    waiter = asyncio.ensure_future(anext(subscription))
    await asyncio.sleep(0)  # let the stream open before closing
    await client.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiter, 30)


async def test_heads_and_get_head(bus: AsyncMsgbusClient, topic: str) -> None:
    assert (await bus.get_head(topic)).found is False
    await bus.publish(topic, b"a")
    await bus.publish(topic, b"b")
    head = await bus.get_head(topic)
    assert (head.head_id, head.found) == (2, True)
    heads = {(h.topic, h.head_id) for h in await bus.list_heads()}
    assert (topic, 2) in heads
    listed = next(h for h in await bus.list_heads() if h.topic == topic)
    assert listed.origin == LOCAL


async def test_list_peer_sync_states_is_empty_without_peers(bus: AsyncMsgbusClient) -> None:
    assert await bus.list_peer_sync_states() == []


async def test_delete_range_erases_payloads(bus: AsyncMsgbusClient, topic: str) -> None:
    for i in range(4):
        await bus.publish(topic, str(i))
    assert await bus.delete_range(topic, 2, 3) == 2
    assert await bus.delete_range(topic, 2, 3) == 0
    page = await bus.fetch(topic)
    assert [(m.head_id, m.deleted, m.payload) for m in page] == [
        (1, False, b"0"),
        (2, True, b""),
        (3, True, b""),
        (4, False, b"3"),
    ]
    with pytest.raises(InvalidArgumentError):
        await bus.delete_range(topic, 3, 2)
    with pytest.raises(PermissionDeniedError):
        await bus.delete_range(topic, 1, 1, origin=OTHER)


async def test_fifo_enqueue_peek_reject_ack(bus: AsyncMsgbusClient, topic: str) -> None:
    queue = f"q.{topic}"
    assert await bus.peek_fifo(queue) is None
    first = await bus.enqueue_fifo(queue, topic, OTHER, b"job-1", {"kind": "test"})
    second = await bus.enqueue_fifo(queue, topic, "tenant/default/elsewhere", "job-2")
    assert (first.sequence, second.sequence) == (1, 2)
    assert (first.source, first.target, first.headers) == (LOCAL, OTHER, {"kind": "test"})
    front = await bus.peek_fifo(queue)
    assert front is not None
    assert front.id == first.id
    assert await bus.ack_fifo(queue, second.id) is False
    assert await bus.reject_fifo(queue, first.id) is True
    again = await bus.peek_fifo(queue)
    assert again is not None
    assert (again.id, again.attempts) == (first.id, 1)
    assert await bus.ack_fifo(queue, first.id) is True
    front = await bus.peek_fifo(queue)
    assert front is not None
    assert front.id == second.id
    assert await bus.ack_fifo(queue, second.id) is True
    assert await bus.peek_fifo(queue) is None
    with pytest.raises(InvalidArgumentError):
        await bus.peek_fifo("")


async def test_a_closed_client_refuses_calls(daemon: Daemon) -> None:
    client = await AsyncMsgbusClient.connect(daemon.endpoint)
    await client.close()
    await client.close()  # idempotent
    with pytest.raises(ConfigurationError, match="closed"):
        await client.health()
