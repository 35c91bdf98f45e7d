"""subscribe_pattern on both clients: many logs, one cursor per log, resumed exactly."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import defaultdict

import pytest

from msgbus_sdk import (
    AsyncMsgbusClient,
    CommitPolicy,
    ConfigurationError,
    InvalidArgumentError,
    MsgbusClient,
    ReconnectPolicy,
    UnavailableError,
)
from msgbus_server.testing import Daemon, wait_until

FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.5)


def _publish(bus: MsgbusClient, topic: str, count: int) -> None:
    for i in range(count):
        wait_until(
            functools.partial(bus.publish, topic, str(i)),
            message=f"a publish to {topic}",
            timeout=30,
            retry_on=(UnavailableError,),
        )


async def test_async_pattern_subscription_resumes_every_log_after_a_restart(
    fresh_daemon: Daemon, topic: str
) -> None:
    logs = [f"{topic}.a", f"{topic}.b", f"{topic}.c"]
    with MsgbusClient.connect(fresh_daemon.endpoint) as writer:
        for log in logs:
            _publish(writer, log, 5)
    received: dict[str, list[int]] = defaultdict(list)
    async with await AsyncMsgbusClient.connect(fresh_daemon.endpoint) as bus:
        subscription = bus.subscribe_pattern(f"{topic}.*", replay_limit=2, reconnect=FAST)

        async def consume() -> None:
            async for message in subscription:
                received[message.topic].append(message.head_id)
                if sum(len(heads) for heads in received.values()) == 3 * 5 + 3 * 4 + 6:
                    return

        consumer = asyncio.create_task(consume())
        await asyncio.to_thread(
            wait_until,
            lambda: sum(len(heads) for heads in received.values()) >= 15,
            message="the backlog",
            timeout=30,
            interval=0.02,
        )
        await asyncio.to_thread(fresh_daemon.kill)
        await asyncio.to_thread(fresh_daemon.restart)
        with MsgbusClient.connect(fresh_daemon.endpoint) as writer:
            for log in logs:
                _publish(writer, log, 4)
            _publish(writer, f"{topic}.new", 6)  # a log that appears after the restart
        await asyncio.wait_for(consumer, 60)
    assert dict(received) == {
        **{log: list(range(1, 10)) for log in logs},
        f"{topic}.new": list(range(1, 7)),
    }
    node = fresh_daemon.node.key
    assert subscription.positions == {
        **{(log, node): 9 for log in logs},
        (f"{topic}.new", node): 6,
    }
    with pytest.raises(AttributeError):
        _ = subscription.next_head_id


def test_sync_pattern_subscription_resume_after_and_origin_pattern(
    daemon: Daemon, topic: str
) -> None:
    node = daemon.node.key
    with MsgbusClient.connect(daemon.endpoint) as bus:
        for log in (f"{topic}.x", f"{topic}.y"):
            _publish(bus, log, 6)
        subscription = bus.subscribe_pattern(
            f"{topic}.*",
            origin_pattern=f"{daemon.node.tenant_id}/*",
            from_head_id=3,
            resume_after={(f"{topic}.x", node): 5},
        )
        seen: list[tuple[str, int]] = []
        done = threading.Event()

        def consume() -> None:
            for message in subscription:
                seen.append((message.topic, message.head_id))
                if len(seen) == 1 + 4:
                    done.set()
                    return

        worker = threading.Thread(target=consume)
        worker.start()
        assert done.wait(30)
        worker.join(10)
        subscription.close()
        assert sorted(seen) == [(f"{topic}.x", 6)] + [(f"{topic}.y", h) for h in range(3, 7)]
        assert subscription.positions == {(f"{topic}.x", node): 6, (f"{topic}.y", node): 6}

        other = bus.subscribe_pattern(f"{topic}.*", origin_pattern="a/[b", reconnect=False)
        with pytest.raises(InvalidArgumentError) as caught:
            next(iter(other))
        assert caught.value.field == "origin_pattern"
        with pytest.raises(ConfigurationError):
            bus.subscribe_pattern("")
        with pytest.raises(ConfigurationError):
            bus.subscribe_pattern("t.*", resume_after={("t.a", "not-a-node"): 1})


def test_durable_pattern_subscription_resumes_each_log_after_its_committed_cursor(
    daemon: Daemon, topic: str
) -> None:
    node = daemon.node.key
    logs = [f"{topic}.a", f"{topic}.b"]
    name = f"hub-{topic}"
    with MsgbusClient.connect(daemon.endpoint) as bus:
        for log in logs:
            _publish(bus, log, 4)
        first: list[tuple[str, int]] = []
        with bus.subscribe_pattern(
            f"{topic}.*", durable=name, auto_commit=CommitPolicy(every=1)
        ) as subscription:
            for message in subscription:
                first.append((message.topic, message.head_id))
                if len(first) == 8:
                    break
        # Leaving the block without an error commits the last message too: every head.
        committed = {(c.topic, c.head_id) for c in bus.list_cursors(name)}
        assert committed == {(log, 4) for log in logs}
        for log in logs:
            _publish(bus, log, 2)
        _publish(bus, f"{topic}.c", 1)
        again: list[tuple[str, int]] = []
        subscription = bus.subscribe_pattern(f"{topic}.*", durable=name)
        for message in subscription:
            again.append((message.topic, message.head_id))
            if len(again) == 5:
                subscription.commit(message)
                break
        subscription.close()
        assert sorted(first) == sorted((log, h) for log in logs for h in range(1, 5))
        assert sorted(again) == sorted(
            [(log, h) for log in logs for h in (5, 6)] + [(f"{topic}.c", 1)]
        )
        assert bus.get_cursor(name, again[-1][0], node) is not None
