"""The asyncio client's lone-publish fast path, against real daemons: a publish on an idle
client goes out from its caller's own task (no task, no PublishBatch) and writes the stream
itself; a lone publish cancelled inside its write fails alone (the publishes queued behind it
go again on a new stream); one cancelled after its write, or while queued, leaves the stream
going (a queued one stores nothing); a lone publish racing concurrent ones keeps their order
and each one's error; and a keyed publish whose first attempt failed is still retried
(tenacity takes over after the first failure)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

import pytest

from msgbus_sdk import (
    AsyncMsgbusClient,
    MessageEnvelope,
    PermissionDeniedError,
    TransientError,
    is_duplicate,
)
from msgbus_server.testing import Daemon


def _count_tasks(loop: asyncio.AbstractEventLoop, created: list[str]) -> None:
    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        created.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)


async def test_sequential_publishes_create_no_task_and_no_batch(daemon: Daemon, topic: str) -> None:
    loop = asyncio.get_running_loop()
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as bus:
        await bus.publish(topic, b"opens the stream")
        batches: list[int] = []
        coalescer = bus._coalescer
        assert coalescer is not None
        real = coalescer._publish_batch

        async def counting(request: Any) -> Any:
            batches.append(len(request.entries))
            return await real(request)

        coalescer._publish_batch = counting
        created: list[str] = []
        _count_tasks(loop, created)
        try:
            sent = [await bus.publish(topic, str(i)) for i in range(20)]
        finally:
            loop.set_task_factory(None)
    assert [(m.head_id, m.payload) for m in sent] == [(i + 2, str(i).encode()) for i in range(20)]
    assert created == []
    assert batches == []


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalescing", "plain"])
async def test_a_lone_publish_cancelled_in_its_write_fails_alone(
    daemon: Daemon, topic: str, coalesce: bool
) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint, coalesce_publishes=coalesce) as bus:
        await bus.publish(topic, b"first")
        publisher = bus._publishers[0]
        assert publisher is not None
        cancelled = asyncio.create_task(bus.publish(topic, b"cancelled"))
        waiting = asyncio.create_task(bus.publish(topic, b"waiting"))
        await asyncio.sleep(0)  # both run to their first wait
        stream = publisher._stream
        assert stream is not None
        # The idle stream's lone publish writes itself; the other one waits to be written.
        assert stream.writing
        assert len(stream.outbox) == (0 if coalesce else 1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        # grpc.aio ended the stream with the cancelled write; the waiting publish, never
        # written, went again on a new stream.
        assert (await waiting).payload == b"waiting"
        last = await bus.publish(topic, b"last")
        assert publisher._stream is not stream
        assert bus.publishes_over_stream
        stored = [m.payload for m in await bus.fetch(topic)]
    # The cancelled one may have reached the daemon before the stream was cancelled.
    assert stored in (
        [b"first", b"waiting", b"last"],
        [b"first", b"cancelled", b"waiting", b"last"],
    )
    assert last.head_id == len(stored)


async def test_a_publish_cancelled_while_it_waits_leaves_the_stream_going(
    daemon: Daemon, topic: str
) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint, coalesce_publishes=False) as bus:
        await bus.publish(topic, b"first")
        publisher = bus._publishers[0]
        assert publisher is not None
        stream = publisher._stream
        assert stream is not None
        written = asyncio.create_task(bus.publish(topic, b"written"))
        queued = asyncio.create_task(bus.publish(topic, b"queued"))
        others = asyncio.create_task(bus.publish(topic, b"other"))
        await asyncio.sleep(0)
        assert stream.writing
        assert len(stream.outbox) == 2
        # Cancelled after its write (it waits for its answer): its outcome is the daemon's.
        while stream.writing:  # noqa: ASYNC110 - the write's progress, one loop pass at a time
            await asyncio.sleep(0)
        written.cancel()
        # Cancelled in the outbox: never written, so nothing of it is stored.
        queued.cancel()
        outcome = await asyncio.gather(written, queued, return_exceptions=True)
        assert isinstance(outcome[1], asyncio.CancelledError)
        assert (await others).payload == b"other"
        after = await asyncio.gather(*(bus.publish(topic, str(i)) for i in range(10)))
        assert [m.payload for m in after] == [str(i).encode() for i in range(10)]
        # The cancellations left the stream going.
        assert publisher._stream is stream
        stored = [m.payload for m in await bus.fetch(topic)]
    assert stored == [b"first", b"written", b"other", *(str(i).encode() for i in range(10))]


async def test_a_lone_publish_racing_concurrent_ones_keeps_order_and_errors(
    daemon: Daemon, topic: str
) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint) as bus:
        for round_ in range(2):
            # The first of each round finds the client idle and goes out from its own task; the
            # rest queue behind it and travel as a batch. In the second round the lone one is
            # the invalid one.
            bad = 0 if round_ else 3
            topics = ["$msgbus.x" if i == bad else topic for i in range(8)]
            results = await asyncio.gather(
                *(bus.publish(t, f"{round_}:{i}") for i, t in enumerate(topics)),
                return_exceptions=True,
            )
            error = results[bad]
            assert isinstance(error, PermissionDeniedError)
            assert error.field == "topic"
            good = [r for i, r in enumerate(results) if i != bad]
            assert all(isinstance(r, MessageEnvelope) for r in good)
            envelopes = [r for r in good if isinstance(r, MessageEnvelope)]
            assert [m.payload for m in envelopes] == [
                f"{round_}:{i}".encode() for i in range(8) if i != bad
            ]
            heads = [m.head_id for m in envelopes]
            assert heads == sorted(heads)
        assert (await bus.get_head(topic)).head_id == 14


async def test_a_keyed_publish_whose_first_attempt_failed_is_retried(
    fresh_daemon: Daemon, topic: str
) -> None:
    async with await AsyncMsgbusClient.connect(fresh_daemon.endpoint, timeout=5) as bus:
        await bus.publish(topic, b"before")
        fresh_daemon.stop()
        during = asyncio.create_task(bus.publish(topic, b"during", idempotency_key="through"))
        # The first attempt fails on the stopped daemon; tenacity's retries reach it restarted.
        await asyncio.to_thread(fresh_daemon.restart)
        sent = await asyncio.wait_for(during, 60)
        assert sent.payload == b"during"
        assert (await bus.get_head(topic)).head_id == 2
        assert is_duplicate(await bus.publish(topic, b"again", idempotency_key="through"))


async def test_a_keyed_publish_gives_up_at_the_retry_deadline(
    fresh_daemon: Daemon, topic: str
) -> None:
    async with await AsyncMsgbusClient.connect(
        fresh_daemon.endpoint, timeout=1, publish_retry_deadline=0.5
    ) as bus:
        await bus.publish(topic, b"before")
        fresh_daemon.stop()
        with pytest.raises(TransientError):
            await bus.publish(topic, b"lost", idempotency_key="lost")
