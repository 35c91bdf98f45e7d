"""Automatic coalescing of concurrent ``publish()`` calls into PublishBatch RPCs (async client).

One unary RPC per message caps a Python daemon at a few thousand publishes per second; one
PublishBatch of many entries costs the daemon about as much as one Publish. So concurrent
publishes of one client are gathered into batches, without a timed linger:

- a publish on an idle coalescer (nothing queued, nothing in flight) goes out at once, as a
  plain Publish, from the caller's own task;
- otherwise it joins a queue, and the queue is flushed at the end of the current event-loop pass
  (``call_soon``): the publishes that became runnable in the same pass (a ``gather``, or waiters
  woken by the previous batch) share one batch;
- at most :data:`MAX_IN_FLIGHT` RPCs are outstanding; what arrives while they are in flight
  accumulates and goes out as the next batch when one completes. So batches grow with load
  and stay at one entry when the client is idle;
- a batch holds at most :data:`MAX_BATCH_ENTRIES` entries and about :data:`MAX_BATCH_BYTES`,
  far below the daemon's receive limit (at least 32 MiB) and below gRPC's default 4 MiB.

Each caller still gets its own envelope or its own error. The daemon rejects a whole batch, and
stores nothing, when an entry is invalid, naming the entry (the error's ``index``): that entry
is then re-sent alone as a plain Publish, so its caller gets exactly the error a lone publish
gets, and the others are re-sent as a batch. Re-sending is safe only because the daemon
validates every entry before it stores anything, so a batch rejected for a named entry stored
nothing. Any other error is never retried, so a publish is never duplicated: it goes to every
caller of the batch, as it would with one RPC per publish (UNAVAILABLE, DEADLINE_EXCEEDED, ...);
a batch whose entries all carry idempotency keys was already resent by the client's own
exactly-once retry (``_idempotency``) before its error gets here.
A daemon without PublishBatch (UNIMPLEMENTED) switches the client to plain Publish for good.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from msgbus_proto import pb

from ._errors import (
    ClientClosedError,
    InvalidArgumentError,
    MsgbusError,
    PermissionDeniedError,
    ProtocolError,
    UnimplementedError,
)
from ._generated.msgbus.v1 import MessageEnvelope
from ._idempotency import BatchAnswer, BatchRequest, published, published_batch

__all__ = ["MAX_BATCH_BYTES", "MAX_BATCH_ENTRIES", "MAX_IN_FLIGHT", "PublishCoalescer"]

MAX_BATCH_ENTRIES: Final = 4096
"""Entries per coalesced batch (the daemon accepts up to 10,000)."""

MAX_BATCH_BYTES: Final = 3 * 1024 * 1024
"""Encoded bytes per coalesced batch; an entry larger than this travels alone. Below gRPC's
default 4 MiB receive limit, so a batch never fails for a size its entries would not."""

MAX_IN_FLIGHT: Final = 2
"""Coalesced RPCs outstanding at once: one commits while the next one is on the wire."""

SINGLE_CONCURRENCY: Final = 256
"""Plain Publish calls in flight at once when a batch has to be re-sent entry by entry."""

PublishFn = Callable[[pb.PublishRequest], Awaitable[pb.PublishResponse]]
PublishBatchFn = Callable[[BatchRequest], Awaitable[BatchAnswer]]


@dataclass(slots=True)
class _Pending:
    request: pb.PublishRequest
    size: int
    future: asyncio.Future[MessageEnvelope]


def _copy(error: MsgbusError) -> MsgbusError:
    # One exception object per caller: raising a shared one from many tasks would chain their
    # tracebacks together.
    return type(error)(error.message, error.code, field=error.field, index=error.index)


class PublishCoalescer:
    """Gathers concurrent publishes of one client into PublishBatch calls (see the module)."""

    def __init__(self, publish: PublishFn, publish_batch: PublishBatchFn) -> None:
        """``publish`` and ``publish_batch`` make the RPCs and raise :class:`MsgbusError`."""
        self._publish = publish
        self._publish_batch = publish_batch
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0
        self._flush_handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batching = True
        """False once the daemon answered UNIMPLEMENTED to PublishBatch."""

    async def publish(self, request: pb.PublishRequest) -> MessageEnvelope:
        """Publish one message, batched with whatever else is being published meanwhile."""
        if not self.batching:
            return published(await self._publish(request))
        loop = asyncio.get_running_loop()
        if not self._in_flight and self._flush_handle is None and not self._closed:
            # The lone publish of an idle client goes out from the caller's own task: no
            # flush callback, no task and no gather, which cost four event-loop passes and two
            # tasks per sequential publish. It counts as in flight, so what arrives meanwhile
            # queues and goes out behind it, as behind a batch. Idle means nothing is queued
            # either: a queue is only left over while a flush is scheduled or an RPC is out.
            self._in_flight += 1
            try:
                return published(await self._publish(request))
            finally:
                self._in_flight -= 1
                if self._queue:
                    self._schedule(loop)
        future: asyncio.Future[MessageEnvelope] = loop.create_future()
        self._queue.append(_Pending(request, request.ByteSize(), future))
        self._schedule(loop)
        # A caller cancelled while queued cancels this future, and the flush skips it.
        return await future

    def close(self) -> None:
        """Fail what is still queued; RPCs in flight end with the channel."""
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(ClientClosedError())

    # -- batching -------------------------------------------------------------------------------

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._flush_handle is None and self._in_flight < MAX_IN_FLIGHT and not self._closed:
            self._flush_handle = loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        while self._queue and self._in_flight < MAX_IN_FLIGHT:
            batch = self._take()
            if not batch:
                return
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        queue = self._queue
        while queue and len(batch) < MAX_BATCH_ENTRIES:
            pending = queue[0]
            if pending.future.done():  # its caller was cancelled
                queue.popleft()
                continue
            if batch and size + pending.size > MAX_BATCH_BYTES:
                break
            queue.popleft()
            batch.append(pending)
            size += pending.size
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            await self._deliver(batch)
        except BaseException as error:
            # Never leave a caller waiting, whatever went wrong here.
            for pending in batch:
                if not pending.future.done():
                    if isinstance(error, MsgbusError):
                        pending.future.set_exception(_copy(error))
                    elif isinstance(error, Exception):
                        pending.future.set_exception(error)
                    else:
                        pending.future.cancel()
            if not isinstance(error, Exception):
                raise
        finally:
            self._in_flight -= 1
            if self._queue:
                self._schedule(asyncio.get_running_loop())

    async def _deliver(self, batch: list[_Pending]) -> None:
        alone: list[_Pending] = []
        while self.batching:
            # Callers cancelled before a (re)send are dropped: nothing of theirs is stored.
            batch = [pending for pending in batch if not pending.future.done()]
            if len(batch) <= 1:
                break
            request = pb.PublishStreamRequest(entries=[pending.request for pending in batch])
            try:
                response = await self._publish_batch(request)
            except UnimplementedError:
                # An original daemon: it never stores anything for an unknown RPC.
                self.batching = False
                break
            except (InvalidArgumentError, PermissionDeniedError) as error:
                index = error.index
                if index is not None and index < len(batch):
                    # Validation of a named entry rejects the batch before anything is stored.
                    alone.append(batch.pop(index))
                    continue
                self._fail(batch, error)
                batch = []
                break
            except MsgbusError as error:
                # The outcome is unknown (or the store failed as a whole): no retry, every
                # caller gets the error, as with one Publish each.
                self._fail(batch, error)
                batch = []
                break
            self._resolve(batch, response)
            batch = []
            break
        await self._publish_each([*alone, *batch])

    @staticmethod
    def _fail(batch: list[_Pending], error: MsgbusError) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(_copy(error))

    @staticmethod
    def _resolve(batch: list[_Pending], response: BatchAnswer) -> None:
        messages = response.messages
        if len(messages) != len(batch):
            error = ProtocolError(
                f"server answered {len(messages)} envelopes for a batch of {len(batch)}"
            )
            PublishCoalescer._fail(batch, error)
            return
        for pending, envelope in zip(batch, published_batch(response), strict=True):
            if not pending.future.done():
                pending.future.set_result(envelope)

    async def _publish_each(self, entries: list[_Pending]) -> None:
        if not entries:
            return
        if len(entries) == 1:
            # One entry needs neither the bound nor a task of its own.
            await self._publish_one(entries[0])
            return
        # Bounded, so that falling back from a batch of thousands does not turn into thousands
        # of simultaneous calls.
        limit = asyncio.Semaphore(SINGLE_CONCURRENCY)

        async def one(pending: _Pending) -> None:
            async with limit:
                await self._publish_one(pending)

        await asyncio.gather(*(one(pending) for pending in entries))

    async def _publish_one(self, pending: _Pending) -> None:
        if pending.future.done():
            return
        try:
            envelope = published(await self._publish(pending.request))
        except MsgbusError as error:
            if not pending.future.done():
                pending.future.set_exception(error)
            return
        if not pending.future.done():
            pending.future.set_result(envelope)
