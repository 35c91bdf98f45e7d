"""Reconnecting subscriptions across daemon restarts: no gap, no duplicate, bounded attempts."""

from __future__ import annotations

import asyncio
import threading

import pytest

from msgbus_sdk import (
    AsyncMsgbusClient,
    MessageEnvelope,
    MsgbusClient,
    ReconnectPolicy,
    UnavailableError,
)
from msgbus_server.testing import Daemon, wait_until

FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.5)


def _publish_when_back(bus: MsgbusClient, topic: str, payload: bytes) -> MessageEnvelope:
    """Publish, retrying while the client's channel notices the daemon is back."""
    return wait_until(
        lambda: bus.publish(topic, payload),
        message=f"a publish to {topic} to succeed after the restart",
        timeout=30,
        retry_on=(UnavailableError,),
    )


def _bounce(daemon: Daemon, how: str) -> None:
    if how == "kill":
        daemon.kill()  # SIGKILL: the stream breaks without a status
    else:
        daemon.stop()  # SIGTERM: the daemon ends its streams
    daemon.restart()  # same port, same SQLite file


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_async_subscription_resumes_after_restart_without_gap_or_duplicate(
    fresh_daemon: Daemon, topic: str, how: str
) -> None:
    with MsgbusClient.connect(fresh_daemon.endpoint) as writer:
        for i in range(1, 6):
            writer.publish(topic, str(i))
    received: list[int] = []
    async with await AsyncMsgbusClient.connect(fresh_daemon.endpoint) as bus:
        subscription = bus.subscribe(topic, replay_limit=2, reconnect=FAST)

        async def consume() -> None:
            async for message in subscription:
                received.append(message.head_id)
                assert message.payload == str(message.head_id).encode()
                if message.head_id == 12:
                    return

        consumer = asyncio.create_task(consume())
        # The condition only reads what the consumer records: polled from a worker thread, so
        # the loop stays free to run the consumer.
        await asyncio.to_thread(
            wait_until,
            lambda: len(received) >= 5,
            message="the first 5 messages",
            timeout=30,
            interval=0.02,
        )
        await asyncio.to_thread(_bounce, fresh_daemon, how)
        with MsgbusClient.connect(fresh_daemon.endpoint) as writer:
            for i in range(6, 13):
                assert _publish_when_back(writer, topic, str(i).encode()).head_id == i
        await asyncio.wait_for(consumer, 60)
    assert received == list(range(1, 13))
    assert subscription.next_head_id == 13


def test_sync_subscription_resumes_after_restart_without_gap_or_duplicate(
    fresh_daemon: Daemon, topic: str
) -> None:
    received: list[int] = []
    errors: list[BaseException] = []
    with MsgbusClient.connect(fresh_daemon.endpoint) as bus:
        for i in range(1, 4):
            bus.publish(topic, str(i))
        subscription = bus.subscribe(topic, reconnect=FAST)

        def consume() -> None:
            try:
                for message in subscription:
                    received.append(message.head_id)
                    if message.head_id == 8:
                        return
            except BaseException as exc:  # reported to the test thread below
                errors.append(exc)

        consumer = threading.Thread(target=consume)
        consumer.start()
        wait_until(lambda: len(received) == 3, message="the replay", timeout=30, interval=0.02)
        _bounce(fresh_daemon, "kill")
        for i in range(4, 9):
            _publish_when_back(bus, topic, str(i).encode())
        consumer.join(60)
        subscription.close()
    assert not consumer.is_alive()
    assert errors == []
    assert received == list(range(1, 9))


async def test_bounded_attempts_give_up_with_the_last_error(
    fresh_daemon: Daemon, topic: str
) -> None:
    async with await AsyncMsgbusClient.connect(fresh_daemon.endpoint) as bus:
        await bus.publish(topic, b"1")
        policy = ReconnectPolicy(initial_delay=0.01, max_delay=0.05, max_attempts=3)
        subscription = bus.subscribe(topic, reconnect=policy)
        assert (await anext(subscription)).head_id == 1
        await asyncio.to_thread(fresh_daemon.kill)
        with pytest.raises(UnavailableError):
            await asyncio.wait_for(anext(subscription), 60)


def test_without_reconnect_the_first_break_is_raised(fresh_daemon: Daemon, topic: str) -> None:
    with MsgbusClient.connect(fresh_daemon.endpoint) as bus:
        bus.publish(topic, b"1")
        subscription = bus.subscribe(topic, reconnect=False)
        assert next(subscription).head_id == 1
        fresh_daemon.kill()
        with pytest.raises(UnavailableError):
            next(subscription)
