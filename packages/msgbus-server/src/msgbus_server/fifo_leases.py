"""The FIFO lease RPCs, which apply the `--fifo-max-attempts` rules (`fifo_attempts`).

LeaseFifo, AckFifoLease, RejectFifoLease, ExtendFifoLease, ListFifo and RedriveFifo.

How leases and the original front-only RPCs share a queue (see `msgbus_core.fifo_leases`):
PeekFifo, AckFifo and RejectFifo see the front as the lowest message no live lease holds, so an
original client never takes a message a worker holds, and a queue nobody leases behaves exactly
as before. Every failed attempt counts toward the queue's max_attempts: a RejectFifoLease, an
expired lease, and an original RejectFifo. The message that reaches it moves to `QUEUE.dead`
in the same transaction. Without a matching `--fifo-max-attempts` rule a queue has no limit
(max_attempts 0), as the original's queues had none.

Every write goes through the commit pipeline and is durable before it is answered; ListFifo
reads on the reader executor. A LeaseFifo with `wait_ms` waits for an enqueue on its queue in
this daemon (`QueueSignals`), and tries again at least every `RECHECK_S` for leases that ran
out and for what other processes sharing a PostgreSQL database enqueued.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.fifo_leases import (
    AckLeaseOp,
    ExtendLeaseOp,
    FifoLease,
    LeaseOp,
    RedriveOp,
    RejectLeaseOp,
    RejectLeaseResult,
    dead_letter_queue,
)
from msgbus_core.model import FifoMessage
from msgbus_core.validation import validate_name
from msgbus_proto import pb
from msgbus_server import convert
from msgbus_server.clock import now_ms
from msgbus_server.fifo_attempts import MAX_QUEUE_BYTES_WITH_DEAD, MaxAttempts
from msgbus_server.page_tokens import key_after, key_token
from msgbus_server.pipeline import CommitPipeline

T = TypeVar("T")

MAX_LEASE_MESSAGES: Final = 1_000
"""The most messages one LeaseFifo may ask for."""
DEFAULT_VISIBILITY_MS: Final = 30_000
"""How long a lease holds when the request says 0."""
MAX_VISIBILITY_MS: Final = 43_200_000
"""The longest lease (12 h) a LeaseFifo or ExtendFifoLease may ask for."""
MAX_WAIT_MS: Final = 60_000
"""The longest a LeaseFifo may wait for a message."""
RECHECK_S: Final = 0.25
"""How often a waiting LeaseFifo tries again without an enqueue signal (expired leases, other
processes)."""
LIST_PAGE_DEFAULT: Final = 100
"""Messages per ListFifo page for page_size 0."""
LIST_PAGE_MAX: Final = 1_000
"""The largest ListFifo page_size honoured; a larger one is clamped."""
REDRIVE_BATCH: Final = 1_000
"""Dead letters one RedriveFifo transaction moves; "all" is several batches, each atomic."""


# -- requests -------------------------------------------------------------------------------------


def lease_queue(value: str) -> str:
    """A queue that may be leased or redriven: a queue name short enough for `QUEUE.dead`."""
    queue = validate_name("queue", value)
    size = len(queue.encode("utf-8"))
    if size > MAX_QUEUE_BYTES_WITH_DEAD:
        raise InvalidArgumentError(
            f"queue is {size} bytes; a queue that is leased or redriven has at most "
            f"{MAX_QUEUE_BYTES_WITH_DEAD} UTF-8 bytes, so that QUEUE.dead is a valid queue name",
            field="queue",
        )
    return queue


def visibility(value: int) -> int:
    """A lease's visibility_ms: 0 means DEFAULT_VISIBILITY_MS; above MAX_VISIBILITY_MS refused."""
    if value > MAX_VISIBILITY_MS:
        raise InvalidArgumentError(
            f"visibility_ms is {value}; the limit is {MAX_VISIBILITY_MS} (12 h)",
            field="visibility_ms",
        )
    return value or DEFAULT_VISIBILITY_MS


def lease_count(value: int) -> int:
    """LeaseFifo's max_messages: 0 means 1; above MAX_LEASE_MESSAGES refused."""
    if value > MAX_LEASE_MESSAGES:
        raise InvalidArgumentError(
            f"max_messages is {value}; the limit is {MAX_LEASE_MESSAGES}", field="max_messages"
        )
    return value or 1


def lease_wait_ms(value: int) -> int:
    """LeaseFifo's wait_ms, at most MAX_WAIT_MS."""
    if value > MAX_WAIT_MS:
        raise InvalidArgumentError(
            f"wait_ms is {value}; the limit is {MAX_WAIT_MS} (60 s)", field="wait_ms"
        )
    return value


def _lease_token() -> str:
    """A new lease op's token: 16 random bytes, so no lease id is ever handed out twice."""
    return os.urandom(16).hex()


def _page_after(token: str) -> int:
    """The sequence a ListFifo page token names; INVALID_ARGUMENT naming page_token if not."""
    (text,) = key_after(token, 1)
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise InvalidArgumentError(
            "page_token is malformed: pass a next_page_token unchanged", field="page_token"
        )
    return int(text)


def lease_to_pb(lease: FifoLease) -> pb.FifoLease:
    """A lease as the contract's message."""
    return pb.FifoLease(
        message=convert.fifo_to_pb(lease.message),
        lease_id=lease.lease_id,
        expires_at_ms=lease.expires_at_ms,
    )


class QueueSignals:
    """Wake-ups for LeaseFifo calls waiting on a queue; holds an entry only while one waits."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}

    def notify(self, queue: str) -> None:
        """Something became available in `queue`: wake its waiters."""
        event = self._events.get(queue)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(event: asyncio.Event, timeout_s: float) -> None:
        """Wait until `event` (from `watch`) is set, or `timeout_s` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)

    def watch(self, queue: str) -> asyncio.Event:
        """A fresh event for `queue`, set by the next `notify`; `unwatch` when done."""
        self._waiting[queue] = self._waiting.get(queue, 0) + 1
        event = self._events.get(queue)
        if event is None or event.is_set():
            event = self._events[queue] = asyncio.Event()
        return event

    def unwatch(self, queue: str) -> None:
        """One waiter of `queue` is done; the entry goes with the last one."""
        left = self._waiting.get(queue, 1) - 1
        if left:
            self._waiting[queue] = left
        else:
            self._waiting.pop(queue, None)
            self._events.pop(queue, None)

    def __len__(self) -> int:
        """Queues someone waits on."""
        return len(self._events)


Read = Callable[[Callable[[], T]], Awaitable[T]]


class FifoLeaseRpcs:
    """The six lease handlers, given what they need of `MsgbusService`."""

    def __init__(
        self,
        *,
        store: Any,
        pipeline: CommitPipeline,
        read: Read[Any],
        fail: Callable[[Any, Exception], Awaitable[NoReturn]],
        max_attempts: MaxAttempts,
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._read = read
        self._fail = fail
        self.max_attempts = max_attempts
        """The `--fifo-max-attempts` rules; the original RejectFifo and AckFifo use them too."""
        self.signals = QueueSignals()
        """Wakes waiting LeaseFifo calls; EnqueueFifo notifies it."""

    async def lease(self, request: pb.LeaseFifoRequest, context: Any) -> pb.LeaseFifoResponse:
        """Lease up to max_messages messages, waiting up to wait_ms for one."""
        try:
            queue = lease_queue(request.queue)
            count = lease_count(request.max_messages)
            hold = visibility(request.visibility_ms)
            wait_ms = lease_wait_ms(request.wait_ms)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_ms / 1000
            limit = self.max_attempts.for_queue(queue)
            while True:
                event = self.signals.watch(queue)
                try:
                    op = LeaseOp(queue, count, hold, now_ms(), _lease_token(), limit)
                    leases = await self._pipeline.submit(op)
                    assert isinstance(leases, list)
                    remaining = deadline - loop.time()
                    if leases or remaining <= 0:
                        break
                    await self.signals.wait(event, min(remaining, RECHECK_S))
                finally:
                    self.signals.unwatch(queue)
        except Exception as error:
            await self._fail(context, error)
        return pb.LeaseFifoResponse(leases=[lease_to_pb(lease) for lease in leases])

    async def ack(self, request: pb.AckFifoLeaseRequest, context: Any) -> pb.AckFifoLeaseResponse:
        """Remove the leased message; `accepted` false when the lease is not held."""
        try:
            queue = validate_name("queue", request.queue)
            lease_id = validate_name("lease_id", request.lease_id)
            accepted = await self._pipeline.submit(AckLeaseOp(queue, lease_id, now_ms()))
        except Exception as error:
            await self._fail(context, error)
        return pb.AckFifoLeaseResponse(accepted=bool(accepted))

    async def reject(
        self, request: pb.RejectFifoLeaseRequest, context: Any
    ) -> pb.RejectFifoLeaseResponse:
        """End the lease as a failed attempt; the message is available again, or dead."""
        try:
            queue = validate_name("queue", request.queue)
            lease_id = validate_name("lease_id", request.lease_id)
            limit = self.max_attempts.for_queue(queue)
            result = await self._pipeline.submit(RejectLeaseOp(queue, lease_id, now_ms(), limit))
            assert isinstance(result, RejectLeaseResult)
        except Exception as error:
            await self._fail(context, error)
        if result.accepted and not result.dead_lettered:
            self.signals.notify(queue)
        return pb.RejectFifoLeaseResponse(
            accepted=result.accepted, dead_lettered=result.dead_lettered
        )

    async def extend(
        self, request: pb.ExtendFifoLeaseRequest, context: Any
    ) -> pb.ExtendFifoLeaseResponse:
        """Keep a held lease for visibility_ms more from now."""
        try:
            queue = validate_name("queue", request.queue)
            lease_id = validate_name("lease_id", request.lease_id)
            hold = visibility(request.visibility_ms)
            expires = await self._pipeline.submit(ExtendLeaseOp(queue, lease_id, now_ms(), hold))
            assert isinstance(expires, int)
        except Exception as error:
            await self._fail(context, error)
        return pb.ExtendFifoLeaseResponse(accepted=expires > 0, expires_at_ms=expires)

    async def list(self, request: pb.ListFifoRequest, context: Any) -> pb.ListFifoResponse:
        """One page of a queue in sequence order, leased messages included."""
        try:
            queue = validate_name("queue", request.queue)
            after = _page_after(request.page_token) if request.page_token else 0
            limit = min(request.page_size or LIST_PAGE_DEFAULT, LIST_PAGE_MAX)
            # One more than the page, to tell whether another page follows.
            read = functools.partial(self._store.list_fifo, queue, after, limit + 1, now_ms())
            messages: list[FifoMessage] = await self._read(read)
        except Exception as error:
            await self._fail(context, error)
        response = pb.ListFifoResponse(
            messages=[convert.fifo_to_pb(message) for message in messages[:limit]]
        )
        if len(messages) > limit:
            response.next_page_token = key_token((str(messages[limit - 1].sequence),))
        return response

    async def redrive(self, request: pb.RedriveFifoRequest, context: Any) -> pb.RedriveFifoResponse:
        """Move dead letters back to the queue's back, in atomic batches."""
        moved = 0
        try:
            queue = lease_queue(request.queue)
            wanted = request.max_messages
            while not wanted or moved < wanted:
                batch = REDRIVE_BATCH if not wanted else min(REDRIVE_BATCH, wanted - moved)
                count = await self._pipeline.submit(RedriveOp(queue, batch, now_ms()))
                assert isinstance(count, int)
                moved += count
                if count < batch:
                    break
        except Exception as error:
            await self._fail(context, error)
        if moved:
            self.signals.notify(queue)
        return pb.RedriveFifoResponse(moved_count=moved)


__all__ = [
    "DEFAULT_VISIBILITY_MS",
    "LIST_PAGE_DEFAULT",
    "LIST_PAGE_MAX",
    "MAX_LEASE_MESSAGES",
    "MAX_VISIBILITY_MS",
    "MAX_WAIT_MS",
    "REDRIVE_BATCH",
    "FifoLeaseRpcs",
    "QueueSignals",
    "dead_letter_queue",
    "lease_queue",
    "lease_to_pb",
]
