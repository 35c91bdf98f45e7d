"""Durable cursors in the SDK against real daemons: the cursor methods of both clients, and
``subscribe(topic, durable=NAME)`` resuming after its cursor, committing explicitly and by
``CommitPolicy``; a consumer process killed mid-stream and restarted sees every message at
least once and none it committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from msgbus_sdk import (
    AsyncMsgbusClient,
    CommitPolicy,
    ConfigurationError,
    ConflictError,
    Cursor,
    InvalidArgumentError,
    MsgbusClient,
)
from msgbus_server.testing import Daemon, wait_until


def _publish(bus: MsgbusClient, topic: str, count: int) -> None:
    bus.publish_batch([(topic, b"m%d" % n) for n in range(1, count + 1)])


def test_cursor_methods_of_the_blocking_client(daemon: Daemon, topic: str) -> None:
    with MsgbusClient.connect(daemon.endpoint) as bus:
        _publish(bus, topic, 5)
        assert bus.get_cursor("sdk-billing", topic) is None
        stored = bus.commit_cursor("sdk-billing", topic, 3)
        assert isinstance(stored, Cursor)
        assert (stored.name, stored.topic, stored.head_id) == ("sdk-billing", topic, 3)
        assert stored.origin == bus.node
        assert bus.get_cursor("sdk-billing", topic) == stored
        with pytest.raises(ConflictError, match="above the head 5"):
            bus.commit_cursor("sdk-billing", topic, 6)
        with pytest.raises(InvalidArgumentError) as bad:
            bus.commit_cursor("", topic, 1)
        assert bad.value.field == "name"
        with pytest.raises(ConfigurationError, match="head_id"):
            bus.commit_cursor("sdk-billing", topic, -1)
        for n in range(12):
            bus.commit_cursor(f"sdk-page-{n:02d}", topic, 1)
        paged = list(bus.iter_cursors(page_size=5))
        assert [c.name for c in paged if c.name.startswith("sdk-page-")] == [
            f"sdk-page-{n:02d}" for n in range(12)
        ]
        assert [c.topic for c in bus.list_cursors("sdk-page-03")] == [topic]
        assert bus.delete_cursor("sdk-page-03", topic) == 1
        assert bus.delete_cursor("sdk-billing") == 1
        assert bus.get_cursor("sdk-billing", topic) is None


async def test_cursor_methods_of_the_asyncio_client(daemon: Daemon, topic: str) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as bus:
        await bus.publish(topic, b"one")
        await bus.commit_cursor("sdk-async", topic, 1)
        got = await bus.get_cursor("sdk-async", topic)
        assert got is not None
        assert got.head_id == 1
        assert [c.topic for c in await bus.list_cursors("sdk-async")] == [topic]
        assert await bus.delete_cursor("sdk-async", topic) == 1


def test_durable_subscription_resumes_after_an_explicit_commit(daemon: Daemon, topic: str) -> None:
    with MsgbusClient.connect(daemon.endpoint) as bus:
        _publish(bus, topic, 10)
        with bus.subscribe(topic, durable="sdk-explicit") as subscription:
            seen = [next(subscription).head_id for _ in range(4)]
            assert seen == [1, 2, 3, 4]
            subscription.commit()  # the last delivered: 4
            assert subscription.committed_head_id == 4
        # Nothing is committed by leaving the block without auto_commit.
        with bus.subscribe(topic, durable="sdk-explicit") as subscription:
            first = next(subscription)
            assert first.head_id == 5
            second = next(subscription)
            subscription.commit(second)
            subscription.commit(first)  # below the committed head: not sent, no step back
            assert subscription.committed_head_id == 6
        cursor = bus.get_cursor("sdk-explicit", topic)
        assert cursor is not None
        assert cursor.head_id == 6
        # Another name has its own cursor: it starts where from_head_id says.
        with bus.subscribe(topic, from_head_id=9, durable="sdk-other") as other:
            assert next(other).head_id == 9


def test_auto_commit_by_count_commits_only_processed_messages(daemon: Daemon, topic: str) -> None:
    with MsgbusClient.connect(daemon.endpoint) as bus:
        _publish(bus, topic, 20)
        policy = CommitPolicy(every=3)
        subscription = bus.subscribe(topic, durable="sdk-count", auto_commit=policy)
        heads = [next(subscription).head_id for _ in range(7)]
        assert heads == list(range(1, 8))
        # Asking for 7 made 1..6 processed: 1..3 were committed at the 4th, 4..6 at the 7th;
        # 7 itself is still being processed.
        cursor = bus.get_cursor("sdk-count", topic)
        assert cursor is not None
        assert cursor.head_id == 6
        subscription.close()  # commits what was processed (6): 7 is seen again
        with bus.subscribe(topic, durable="sdk-count", auto_commit=policy) as again:
            assert next(again).head_id == 7
            assert next(again).head_id == 8
        # Leaving the block without an error: 8 was processed too, and committed.
        cursor = bus.get_cursor("sdk-count", topic)
        assert cursor is not None
        assert cursor.head_id == 8


def test_auto_commit_by_time(daemon: Daemon, topic: str) -> None:
    clock = [0.0]
    with MsgbusClient.connect(daemon.endpoint) as bus:
        _publish(bus, topic, 5)
        subscription = bus.subscribe(
            topic, durable="sdk-time", auto_commit=CommitPolicy(interval_s=30.0)
        )
        # The policy's clock, moved by the test instead of waited for.
        subscription._cursors._clock = lambda: clock[0]
        subscription._cursors._last_commit = 0.0
        next(subscription)
        next(subscription)
        assert bus.get_cursor("sdk-time", topic) is None
        clock[0] = 31.0
        next(subscription)  # 2 processed; 30 s passed: committed
        cursor = bus.get_cursor("sdk-time", topic)
        assert cursor is not None
        assert cursor.head_id == 2
        subscription.close()


def test_bad_commit_policies_and_auto_commit_without_a_name(daemon: Daemon, topic: str) -> None:
    with pytest.raises(ConfigurationError, match="every, interval_s"):
        CommitPolicy()
    with pytest.raises(ConfigurationError, match="every must be at least 1"):
        CommitPolicy(every=0)
    with pytest.raises(ConfigurationError, match="interval_s must be above 0"):
        CommitPolicy(interval_s=0)
    with (
        MsgbusClient.connect(daemon.endpoint) as bus,
        pytest.raises(ConfigurationError, match="auto_commit needs durable"),
    ):
        bus.subscribe(topic, auto_commit=CommitPolicy(every=1))  # type: ignore[call-overload]


async def test_asyncio_durable_subscription_resumes(daemon: Daemon, topic: str) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as bus:
        await bus.publish_batch([(topic, b"x%d" % n) for n in range(6)])
        policy = CommitPolicy(every=1)
        async with bus.subscribe(topic, durable="sdk-aio", auto_commit=policy) as subscription:
            async for message in subscription:
                if message.head_id == 3:
                    break
        async with bus.subscribe(topic, durable="sdk-aio", auto_commit=policy) as subscription:
            assert (await subscription.__anext__()).head_id == 4


_CONSUMER = textwrap.dedent(
    """
    import sys
    from msgbus_sdk import CommitPolicy, MsgbusClient

    endpoint, topic, log, last = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with MsgbusClient.connect(endpoint) as bus, open(log, "a") as seen:
        policy = CommitPolicy(every=7)
        with bus.subscribe(topic, durable="killed", auto_commit=policy) as subscription:
            for message in subscription:
                # Processing: the head is on disk before the next message is asked for.
                seen.write(f"{message.head_id}\\n")
                seen.flush()
                if message.head_id == last:
                    break
    """
)


def _seen(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line) for line in log.read_text().split()]


def test_a_killed_consumer_sees_every_message_at_least_once_and_none_it_committed(
    fresh_daemon: Daemon, tmp_path: Path
) -> None:
    topic, total = "sdk.killed", 3_000
    with MsgbusClient.connect(fresh_daemon.endpoint) as bus:
        _publish(bus, topic, total)
    first_log, second_log = tmp_path / "first.txt", tmp_path / "second.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-c", _CONSUMER, fresh_daemon.endpoint, topic]
    consumer = subprocess.Popen([*args, str(first_log), str(total)], env=env)
    try:
        wait_until(lambda: len(_seen(first_log)) >= 500, message="the consumer never got going")
    finally:
        consumer.send_signal(signal.SIGKILL)
        consumer.wait(timeout=30)
    first = _seen(first_log)
    assert first, "the first consumer saw nothing"
    assert first[-1] < total, "the consumer finished before it was killed; kill it sooner"
    with MsgbusClient.connect(fresh_daemon.endpoint) as bus:
        cursor = bus.get_cursor("killed", topic)
    assert cursor is not None
    committed = cursor.head_id
    assert 0 < committed <= first[-1]
    restarted = subprocess.run([*args, str(second_log), str(total)], env=env, timeout=120)
    assert restarted.returncode == 0
    second = _seen(second_log)
    # None it committed: the restarted consumer starts right after the cursor ...
    assert second[0] == committed + 1
    # ... and every message was seen at least once, in order within each run.
    assert first == list(range(1, first[-1] + 1))
    assert second == list(range(committed + 1, total + 1))
    assert set(first) | set(second) == set(range(1, total + 1))


def test_a_durable_subscription_goes_on_across_a_daemon_restart(fresh_daemon: Daemon) -> None:
    topic = "sdk.durable.restart"
    with MsgbusClient.connect(fresh_daemon.endpoint) as bus:
        _publish(bus, topic, 6)
        policy = CommitPolicy(every=1)
        with bus.subscribe(topic, durable="restarted", auto_commit=policy) as subscription:
            assert [next(subscription).head_id for _ in range(3)] == [1, 2, 3]
            fresh_daemon.restart()
            # The stream reopens after the restart; the commits made meanwhile are retried.
            assert [next(subscription).head_id for _ in range(3)] == [4, 5, 6]
        cursor = bus.get_cursor("restarted", topic)
        assert cursor is not None
        assert cursor.head_id == 6
        with bus.subscribe(topic, durable="restarted") as again:
            _publish(bus, topic, 1)
            assert next(again).head_id == 7
