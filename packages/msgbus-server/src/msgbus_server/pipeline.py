"""The commit pipeline: one writer thread owns the store's write side.

Handlers `await pipeline.submit(op)`. The writer thread takes everything pending, applies it in
ONE `store.write(ops)` transaction (one fsync however many publishers are waiting: group
commit), and then, on the event loop, notifies every log that advanced in commit order and
resolves the callers' futures. No caller hears about its write before the transaction is durable.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from msgbus_core.errors import MsgbusError, StorageError
from msgbus_core.limits import DELETE_TOPIC
from msgbus_core.model import Message, NodeId
from msgbus_core.ops import (
    DeleteResult,
    Outcome,
    ProbeOp,
    ReplicateResult,
    TrimResult,
    WriteOp,
    WriteResult,
)
from msgbus_core.store import MsgbusStore
from msgbus_server.health import Health, Subsystem
from msgbus_server.notify import LogNotifier

logger = logging.getLogger("msgbus_server.pipeline")

MAX_OPS_PER_TRANSACTION = 8192
"""Bound on one transaction; a backlog larger than this is committed in several."""
FAILED_TRANSACTION = "storage error: the last write transaction failed"
"""The start of the health reason while the last transaction failed, followed by its error
(Ready answers it as its error)."""


class CommitObserver(Protocol):
    """Told about every write transaction, on the writer thread (the daemon's metrics)."""

    def transaction(
        self,
        submissions: Sequence[Sequence[WriteOp]],
        outcomes: Sequence[Outcome],
        seconds: float,
        failed: bool,
    ) -> None:
        """One transaction of `submissions` (each one `submit` or `submit_many` call's ops).

        `outcomes` has one entry per op, in order (empty when the transaction `failed`);
        `seconds` is how long the store took to apply and durably commit it.
        """
        ...


@dataclass(slots=True)
class _Pending:
    ops: Sequence[WriteOp]
    future: asyncio.Future[list[Outcome]]


_STOP = object()


def _replicated_heads(changed: Sequence[Message]) -> Iterator[tuple[str, NodeId, int]]:
    """Each log a replicate changed, once per run of its messages, with the highest head.

    A replicate is one log's sync batch of up to thousands of messages: one notify per log
    does what one per message would (a notify without the message drops the log's kept copies
    either way, and its waiters wake to read the store), at a fraction of catch-up's cost.
    """
    current: Message | None = None
    top = 0
    for message in changed:
        if current is not None and (
            message.topic != current.topic
            or (message.origin is not current.origin and message.origin != current.origin)
        ):
            yield current.topic, current.origin, top
            top = 0
        current = message
        top = max(top, message.head_id)
    if current is not None:
        yield current.topic, current.origin, top


class CommitPipeline:
    """Serialises every write through one thread and groups concurrent writes per transaction.

    Each transaction reports to `health`: a failed one makes the daemon not serving until one
    commits again. On a quiet node that is the daemon's `probe`, which its health monitor
    writes while the pipeline fails. An `observer`, when given, is told about each one too.
    """

    def __init__(
        self,
        store: MsgbusStore,
        notifier: LogNotifier,
        health: Health | None = None,
        observer: CommitObserver | None = None,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._accepting = False
        self._health = health if health is not None else Health()
        self._observer = observer

    async def start(self) -> None:
        """Start the writer thread."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = loop.create_future()
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="msgbus-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Refuse new writes, commit everything already submitted, then stop the thread."""
        if self._thread is None or self._stopped is None:
            return
        if self._accepting:
            self._accepting = False
            self._queue.put(_STOP)
        await asyncio.shield(self._stopped)
        self._thread.join()
        self._thread = None

    async def submit(self, op: WriteOp) -> WriteResult:
        """Apply one op durably and return its result; raise its error if it failed."""
        outcome = (await self._enqueue((op,)))[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def probe(self) -> bool:
        """Commit a transaction that changes nothing (a `ProbeOp`); True when it committed.

        Like every transaction, it reports to `health`: one that commits clears the failure of
        an earlier one, and one that fails keeps the daemon not serving, with its error.
        """
        try:
            await self.submit(ProbeOp())
        except MsgbusError:
            return False
        return True

    async def submit_many(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        """Apply `ops` in one transaction (never split); one outcome per op, errors included."""
        if not ops:
            return []
        return await self._enqueue(ops)

    def begin(
        self, ops: Sequence[WriteOp], future: asyncio.Future[list[Outcome]] | None = None
    ) -> asyncio.Future[list[Outcome]]:
        """Queue `ops` for one transaction now, and return the future of their outcomes.

        For a caller that must queue in order and await later (a PublishStream keeps several
        requests in flight, answered in order); `submit_many` is this, awaited at once.
        `future`, a pending future of the loop, is resolved instead of a new one: a task that
        already waits on it wakes once, when the commit is durable. Nothing uses it when this
        raises.
        """
        if not ops:
            raise ValueError("begin needs at least one op")
        return self._enqueue(ops, future)

    def _enqueue(
        self, ops: Sequence[WriteOp], future: asyncio.Future[list[Outcome]] | None = None
    ) -> asyncio.Future[list[Outcome]]:
        if not self._accepting or self._loop is None:
            raise StorageError("msgbusd is shutting down; writes are no longer accepted")
        if future is None:
            future = self._loop.create_future()
        self._queue.put(_Pending(ops, future))
        return future

    # -- writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Pending] = []
            size = 0
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Pending)
                batch.append(item)
                size += len(item.ops)
                if size >= MAX_OPS_PER_TRANSACTION:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)
        # _STOP is queued after the last accepted submit, so nothing is left behind.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._set_stopped)

    def _set_stopped(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _commit(self, batch: list[_Pending]) -> None:
        ops: list[WriteOp] = [op for pending in batch for op in pending.ops]
        failure: Exception | None = None
        outcomes: list[Outcome] = []
        started = time.perf_counter()
        try:
            outcomes = self._store.write(ops)
            if len(outcomes) != len(ops):
                raise StorageError(f"store returned {len(outcomes)} outcomes for {len(ops)} ops")
        except MsgbusError as error:
            failure = error
            logger.error("write transaction of %d ops failed: %s", len(ops), error)
        except Exception as error:
            logger.exception("write transaction of %d ops failed unexpectedly", len(ops))
            failure = StorageError(f"write transaction failed: {error}")
        seconds = time.perf_counter() - started
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._finish, batch, outcomes, failure)
        if self._observer is not None:
            # After the callers' wake-up is scheduled: counting must not delay their answers,
            # and a failure to count must not stop the writer.
            try:
                self._observer.transaction(
                    [pending.ops for pending in batch], outcomes, seconds, failure is not None
                )
            except Exception:
                logger.exception("the commit observer failed (a bug)")

    # -- event loop -----------------------------------------------------------------------------

    def _finish(
        self, batch: list[_Pending], outcomes: list[Outcome], failure: Exception | None
    ) -> None:
        """Notify advanced logs in commit order, then resolve the futures (loop thread)."""
        if failure is not None:
            self._health.report(Subsystem.PIPELINE, False, f"{FAILED_TRANSACTION}: {failure}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            return
        self._health.report(Subsystem.PIPELINE, True)
        notifier = self._notifier
        notify = notifier.notify
        for outcome in outcomes:
            if isinstance(outcome, Message):
                # The message as committed: live subscribers take it without a store read.
                notify(outcome.topic, outcome.origin, outcome.head_id, outcome)
            elif isinstance(outcome, DeleteResult):
                if outcome.marker is not None:
                    notify(DELETE_TOPIC, outcome.marker.origin, outcome.marker.head_id)
            elif isinstance(outcome, ReplicateResult):
                for topic, origin, head_id in _replicated_heads(outcome.changed):
                    notify(topic, origin, head_id)
            elif isinstance(outcome, TrimResult) and outcome.removed:
                notifier.forget_recent()
        start = 0
        for pending in batch:
            end = start + len(pending.ops)
            if not pending.future.done():
                pending.future.set_result(outcomes[start:end])
            start = end
