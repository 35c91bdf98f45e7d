"""The FIFO worker: ``bus.work(queue)`` leases jobs, keeps their leases and settles them.

The blocking one is generated from this module by ``tools/unasync.py``: edit this one and
regenerate. Conversions and timing are ``_fifo_leases``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ._errors import MsgbusError, ProtocolError, TransientError
from ._fifo_leases import keepalive_interval_s
from ._generated.msgbus.v1 import FifoLease, FifoMessage

if TYPE_CHECKING:
    from ._async_client import AsyncMsgbusClient

__all__ = ["AsyncJob", "AsyncWorker"]

_log = logging.getLogger("msgbus_sdk")

RETRY_PAUSE_S = 0.5
"""How long the worker waits before it leases again after a transient failure (a restart)."""


class AsyncJob:
    """One leased message handed out by :meth:`AsyncMsgbusClient.work`.

    ``async with job:`` acks it when the block succeeds and rejects it when the block raises
    (a failed attempt: the daemon redelivers it, or moves it to ``QUEUE.dead`` once it reached
    the queue's max_attempts). The exception is logged (one warning line; the traceback at
    DEBUG) and not raised further, so the worker loop goes on with the next job. While the job
    runs, the worker extends its lease.
    """

    def __init__(self, worker: AsyncWorker, lease: FifoLease, message: FifoMessage) -> None:
        self._worker = worker
        self.lease = lease
        """The lease: its id and expiry."""
        self.message = message
        """The leased message, with its attempts so far."""
        self.settled = False
        """True once the job was acked or rejected (or its settling failed)."""

    @property
    def payload(self) -> bytes:
        """The message's payload."""
        return self.message.payload

    @property
    def attempts(self) -> int:
        """Failed attempts before this one (rejects and expired leases)."""
        return self.message.attempts

    async def ack(self) -> bool:
        """Remove the message; ``False`` when its lease ran out (it will be redelivered)."""
        try:
            return await self._worker.client.ack_fifo_lease(self._worker.queue, self.lease.lease_id)
        finally:
            self._worker.settled(self)

    async def reject(self) -> bool:
        """Count a failed attempt; ``True`` when the message moved to the dead-letter queue."""
        try:
            response = await self._worker.client.reject_fifo_lease(
                self._worker.queue, self.lease.lease_id
            )
            return response.dead_lettered
        finally:
            self._worker.settled(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self.settled:
            return False
        if exc is None:
            if not await self.ack():
                _log.warning(
                    "job %s of %s finished after its lease ran out: it will run again",
                    self.message.id,
                    self._worker.queue,
                )
            return False
        dead = await self.reject()
        # One line a failure; the traceback at DEBUG, for whoever looks into it.
        _log.warning(
            "job %s of %s failed (attempt %d): %r%s",
            self.message.id,
            self._worker.queue,
            self.attempts + 1,
            exc,
            "; moved to the dead-letter queue" if dead else "",
        )
        _log.debug("job %s failed", self.message.id, exc_info=exc)
        # An ordinary exception is the job's failure, settled by the reject; a cancellation or
        # KeyboardInterrupt goes on.
        return isinstance(exc, Exception)


class AsyncWorker:
    """An async iterator of jobs leased from one FIFO queue, at most ``concurrency`` at once.

    Returned by :meth:`AsyncMsgbusClient.work`. Each ``__anext__`` waits until fewer than
    ``concurrency`` jobs are running (handed out and not yet acked or rejected), then leases
    one message, waiting for one to arrive. Process jobs in tasks to run them concurrently.
    Leases of running jobs are extended every third of ``visibility_ms``. Closing the worker
    leaves the leases of unsettled jobs to run out: their messages are redelivered.
    """

    def __init__(
        self,
        client: AsyncMsgbusClient,
        queue: str,
        concurrency: int,
        visibility_ms: int,
        wait_ms: int,
    ) -> None:
        """Used by the client's ``work``."""
        self.client = client
        self.queue = queue
        self._visibility_ms = visibility_ms
        self._wait_ms = wait_ms
        self._slots = asyncio.Semaphore(concurrency)
        self._running: dict[str, AsyncJob] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._keeper: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        """Jobs handed out and not yet settled."""
        with self._lock:
            return len(self._running)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> AsyncJob:
        await self._slots.acquire()
        try:
            lease = await self._lease_one()
        except BaseException:
            self._slots.release()
            raise
        if lease.message is None:
            self._slots.release()
            raise ProtocolError("the daemon answered a lease without its message")
        job = AsyncJob(self, lease, lease.message)
        with self._lock:
            self._running[lease.lease_id] = job
        return job

    async def _lease_one(self) -> FifoLease:
        """The next lease, waiting for a message (and across daemon restarts)."""
        while not self._stopped.is_set():
            self._start_keeper()
            try:
                leases = await self.client.lease_fifo(
                    self.queue, 1, visibility_ms=self._visibility_ms, wait_ms=self._wait_ms
                )
            except TransientError as error:
                _log.warning("leasing from %s failed, trying again: %s", self.queue, error)
                await self._pause(RETRY_PAUSE_S)
                continue
            if leases:
                return leases[0]
        raise StopAsyncIteration

    def settled(self, job: AsyncJob) -> None:
        """A job was acked or rejected: its slot is free."""
        if job.settled:
            return
        job.settled = True
        with self._lock:
            self._running.pop(job.lease.lease_id, None)
        self._slots.release()

    def _start_keeper(self) -> None:
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep_leases())

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _keep_leases(self) -> None:
        """Extend the leases of the running jobs, every third of the visibility."""
        interval = keepalive_interval_s(self._visibility_ms)
        while not self._stopped.is_set():
            await self._pause(interval)
            with self._lock:
                running = list(self._running.values())
            for job in running:
                if job.settled or self._stopped.is_set():
                    continue
                try:
                    expires = await self.client.extend_fifo_lease(
                        self.queue, job.lease.lease_id, self._visibility_ms
                    )
                except MsgbusError as error:
                    _log.warning("extending the lease of job %s failed: %s", job.message.id, error)
                    continue
                if not expires:
                    _log.warning(
                        "the lease of job %s of %s ran out before it was extended",
                        job.message.id,
                        self.queue,
                    )

    async def aclose(self) -> None:
        """Stop leasing and stop extending; unsettled jobs' leases run out by themselves."""
        self._stopped.set()
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
