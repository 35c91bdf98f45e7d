"""The retention worker: trims each log to its retention rule, and the store to its disk budget.

Every `RETENTION_INTERVAL_S` a pass reads every log's extent (`list_heads`: heads, first heads
and bytes, kept by the store, so nothing is summed) and, for each log whose topic matches a rule
(`retention_rules`), works out how far its prefix must go: below the newest `max-messages`, below
what keeps it within `max-bytes`, below the first message younger than `max-age`. The summaries
it needs are read a page at a time on a reader thread.

Trimming itself goes through the commit pipeline as `TrimOp`s of at most `TRIM_BATCH_ROWS` rows
and about `TRIM_BATCH_BYTES`, so a trim shares transactions with publishes and never holds the
writer for long; the store applies the rules a trim must keep (heads are never reused, a delete
marker stays while it covers a held message). Freed pages are reused by the database, so under a
steady load the file stops growing.

With `--retain-unsynced` (the default) and peers configured, a message of this node's own origin
is kept until a peer's ListHeads has shown that it holds it (`PeerHoldings`, filled by the sync
workers); after a restart nothing local is trimmed until a peer has answered. With a disk budget
and `--discard old`, a pass that finds the store above the budget trims the oldest messages
across all logs, those retain-unsynced protects last, and says so when it has to.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

from msgbus_core.errors import MsgbusError
from msgbus_core.limits import DELETE_TOPIC, MAX_STORED_INT
from msgbus_core.model import NodeId, TopicHead
from msgbus_core.ops import CompactOp, TrimOp, TrimResult
from msgbus_core.store import DiskUsage, MessageSummary, MsgbusStore
from msgbus_server.clock import now_ms
from msgbus_server.disk_budget import DISCARD_OLD, LOW_WATER, DiskBudget, format_bytes
from msgbus_server.head_changes import HeadChanges
from msgbus_server.pipeline import CommitPipeline
from msgbus_server.retention_rules import RetentionPolicy, RetentionRule
from msgbus_server.shared_store import WorkClaims

__all__ = ["PeerHoldings", "RetentionWorker", "TrimReport"]

log = logging.getLogger("msgbus_server.retention")

RETENTION_INTERVAL_S: Final = 1.0
"""Seconds between two retention passes."""
TRIM_BATCH_ROWS: Final = 1000
"""Most rows one `TrimOp` removes."""
TRIM_BATCH_BYTES: Final = 1024 * 1024
"""About the most bytes one `TrimOp` removes; a larger message goes alone. Freeing pages is
what a trim costs: measured on 2026-12-01, a trim of 1,000 rows of 1 KiB, 256 of 4 KiB, 16 of
64 KiB or one of 1 MiB held the writer for a median of 1.7 to 2.8 ms (SQLite and DuckDB),
where 1,000 rows of 4 KiB took 12.8 ms and 8 of 1 MiB 21 ms."""
SCAN_PAGE: Final = 1000
"""Summaries read at a time while a pass looks for where a log's prefix ends."""
FULL_SWEEP_S: Final = 60.0
"""The longest time between two passes that look at every log (the others look only at what
changed)."""
PRESSURE_PAUSE_S: Final = 0.2
"""The least time between two passes when writes keep the disk budget under pressure."""
REPORT_EVERY_S: Final = 60.0
"""How often the worker logs what it trimmed (at most), so a steady load logs one line a
minute rather than one a pass."""


class PeerHoldings:
    """The highest head of each local log that a configured peer has reported holding.

    Filled from every peer's ListHeads (the peer lists this node's logs it holds); in memory
    only, so after a restart a local message counts as unsynced until a peer answers again.
    One entry per local log: as bounded as the local logs are.
    """

    def __init__(self) -> None:
        """An empty book: no peer has reported anything yet."""
        self._heads: dict[str, int] = {}
        self._raised: set[str] = set()

    def report(self, topic: str, head_id: int) -> None:
        """A peer listed head `head_id` of this node's log of `topic`."""
        if head_id > self._heads.get(topic, 0):
            self._heads[topic] = head_id
            self._raised.add(topic)

    def take_raised(self) -> set[str]:
        """The topics whose held head rose since the last call (retention looks at them)."""
        raised, self._raised = self._raised, set()
        return raised

    def held(self, topic: str) -> int:
        """The highest head of this node's log of `topic` some peer holds (0: none known)."""
        return self._heads.get(topic, 0)


@dataclass(slots=True)
class TrimReport:
    """What retention trimmed, for the log (and for tests and metrics)."""

    messages: int = 0
    bytes: int = 0
    logs: set[tuple[str, NodeId]] = field(default_factory=set)

    def add(self, key: tuple[str, NodeId], result: TrimResult) -> None:
        """Count one trim's result."""
        if result.removed:
            self.messages += result.removed
            self.bytes += result.freed_bytes
            self.logs.add(key)


class RetentionWorker:
    """Runs retention passes until stopped; see the module docstring."""

    def __init__(
        self,
        *,
        store: MsgbusStore,
        pipeline: CommitPipeline,
        policy: RetentionPolicy,
        local_node: NodeId,
        budget: DiskBudget | None = None,
        holdings: PeerHoldings | None = None,
        interval_s: float = RETENTION_INTERVAL_S,
        clock: Callable[[], int] = now_ms,
        changes: Callable[[], HeadChanges | None] | None = None,
        work: WorkClaims | None = None,
    ) -> None:
        """`holdings` None means no message is protected (no peer, or --no-retain-unsynced).

        `changes` gives the daemon's head change index (see `_logs_to_check`); without it
        every pass looks at every log. `work` decides which process runs retention when
        several share the store.
        """
        self._work = work
        self._store = store
        self._pipeline = pipeline
        self._policy = policy
        self._local = local_node
        self._budget = budget
        self._holdings = holdings
        self._interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.total = TrimReport()
        """Everything trimmed since the daemon started."""
        self._unreported = TrimReport()
        self._reported_at = time.monotonic()
        self._budget_conflict = False
        self._budget_baseline: int | None = None
        self._changes = changes
        self._epoch = ""
        self._seq = 0
        self._next_sweep = 0.0
        ages = [rule.max_age_ms for rule in policy.rules if rule.max_age_ms is not None]
        # Ages grow with no change at all: sweep often enough to keep an age within about a
        # quarter of itself, and at least every FULL_SWEEP_S for everything else.
        self._sweep_s = (
            min(max(min(ages) / 4000, interval_s), FULL_SWEEP_S) if ages else FULL_SWEEP_S
        )

    async def start(self) -> None:
        """Start the passes in a background task; returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        """Stop after the trim in flight, if any (its commit is not interrupted)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                # Processes sharing a store would trim the same logs: one of them does.
                if self._work is None or await self._work.hold("retention"):
                    await self.run_pass()
            except MsgbusError as error:
                # The store or the pipeline failed (a full disk, shutdown): try again later.
                log.warning("retention pass failed: %s", error)
            except Exception:
                log.exception("retention pass failed unexpectedly")
            await self._pause()

    async def _pause(self) -> None:
        """Wait for the next pass: the interval, or less when writes near the disk budget.

        Under a heavy load a second of writes is a lot of disk: the budget wakes the worker
        as soon as accepted writes bring it near its limit, at most every PRESSURE_PAUSE_S.
        """
        if self._budget is None:
            await asyncio.sleep(self._interval_s)
            return
        await asyncio.sleep(min(PRESSURE_PAUSE_S, self._interval_s))
        pressure = self._budget.pressure
        pressure.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pressure.wait(), self._interval_s - PRESSURE_PAUSE_S)

    async def run_pass(self) -> TrimReport:
        """One pass: the logs to their rules, then the store to its budget. What it trimmed."""
        report = TrimReport()
        if self._policy:
            heads = await self._logs_to_check()
            markers = {h.origin: h for h in heads if h.topic == DELETE_TOPIC}
            trimmed: set[NodeId] = set()
            for head in heads:
                if head.topic != DELETE_TOPIC and await self._apply_rule(head, report):
                    trimmed.add(head.origin)
            # Marker logs last: a marker may go once the messages it covers are trimmed, which
            # may be earlier in this very pass. So the marker log of every origin trimmed here
            # is looked at too, though its own head did not move.
            store = self._store
            for origin in trimmed - markers.keys():
                marker_log = await asyncio.to_thread(store.log_head, DELETE_TOPIC, origin)
                if marker_log.head_id:
                    markers[origin] = marker_log
            for head in markers.values():
                await self._apply_rule(head, report)
        if self._budget is not None:
            await self._keep_to_budget(self._budget, report)
        self._note(report)
        return report

    async def _apply_rule(self, head: TopicHead, report: TrimReport) -> bool:
        """Trim one log as its rule (if any) says; True when something was trimmed."""
        assert self._policy is not None
        rule = self._policy.rule_for(head.topic)
        if rule is None or not head.first_head_id:
            return False
        before = min(await self._rule_target(head, rule), self._protected_from(head))
        if before <= head.first_head_id:
            return False
        removed_before = report.messages
        await self._trim(head, before, report)
        return report.messages > removed_before

    async def _logs_to_check(self) -> list[TopicHead]:
        """The logs whose rule may ask for a trim now.

        Every log on a sweep (the first pass, then every `_sweep_s`: ages grow without any
        change); in between, only the logs whose head changed since the last pass and this
        node's logs a peer now holds more of, so an idle pass over many logs costs nothing.
        """
        changes = self._changes() if self._changes is not None else None
        now = time.monotonic()
        if changes is None or now >= self._next_sweep or changes.epoch != self._epoch:
            if changes is not None:
                self._epoch, self._seq = changes.epoch, changes.seq
            self._next_sweep = now + self._sweep_s
            if self._holdings is not None:
                self._holdings.take_raised()
            return await asyncio.to_thread(self._store.list_heads)
        keys = {key for _, key in changes.since(self._seq, MAX_STORED_INT)}
        self._seq = changes.seq
        if self._holdings is not None:
            keys |= {(topic, self._local) for topic in self._holdings.take_raised()}
        if not keys:
            return []
        store = self._store
        heads = await asyncio.to_thread(lambda: [store.log_head(t, o) for t, o in keys])
        return [head for head in heads if head.head_id]

    # -- the rules --------------------------------------------------------------------------------

    async def _rule_target(self, head: TopicHead, rule: RetentionRule) -> int:
        """The head the log's prefix must be trimmed below to obey `rule` (its first: none)."""
        before = head.first_head_id
        if rule.max_messages is not None:
            before = max(before, head.head_id - rule.max_messages + 1)
        excess = head.bytes - rule.max_bytes if rule.max_bytes is not None else 0
        cutoff = self._clock() - rule.max_age_ms if rule.max_age_ms is not None else None
        if excess <= 0 and cutoff is None:
            return before
        # One scan from the first head serves both limits: it ends once the bytes passed are
        # the excess and the next message is young enough.
        freed = 0
        async for summary in self._scan(head, head.first_head_id):
            too_old = cutoff is not None and summary.created_at_ms < cutoff
            if freed >= excess and not too_old:
                break
            freed += summary.size
            before = max(before, summary.head_id + 1)
        return before

    def _protected_from(self, head: TopicHead) -> int:
        """The lowest head retain-unsynced keeps in this log (past its head: none)."""
        if self._holdings is None or head.origin != self._local:
            return head.head_id + 1
        return self._holdings.held(head.topic) + 1

    async def _scan(self, head: TopicHead, first: int) -> AsyncIterator[MessageSummary]:
        """The log's summaries from `first` on, a page at a time."""
        while first <= head.head_id:
            page: list[MessageSummary] = await asyncio.to_thread(
                self._store.summaries, head.topic, head.origin, first, SCAN_PAGE
            )
            if not page:
                return
            for summary in page:
                yield summary
            first = page[-1].head_id + 1

    # -- trimming ---------------------------------------------------------------------------------

    async def _trim(self, head: TopicHead, before: int, report: TrimReport) -> int:
        """Trim the log below `before` in batches; the bytes freed (read sizes)."""
        key = (head.topic, head.origin)
        freed = 0
        first = head.first_head_id
        while first < before:
            end = await self._batch_end(head, first, before)
            result = await self._pipeline.submit(TrimOp(head.topic, head.origin, end))
            assert isinstance(result, TrimResult)
            report.add(key, result)
            freed += result.freed_bytes
            if not result.removed:
                break  # a delete marker still needed, or someone else trimmed it already
            first = result.first_head_id or before
        return freed

    async def _batch_end(self, head: TopicHead, first: int, before: int) -> int:
        """Where one trim batch from `first` ends: TRIM_BATCH_ROWS rows or ~TRIM_BATCH_BYTES."""
        page = await asyncio.to_thread(
            self._store.summaries,
            head.topic,
            head.origin,
            first,
            min(before - first, TRIM_BATCH_ROWS),
        )
        size = 0
        for summary in page:
            size += summary.size
            if size >= TRIM_BATCH_BYTES:
                return min(summary.head_id + 1, before)
        return min(page[-1].head_id + 1, before) if page else before

    async def _keep_to_budget(self, budget: DiskBudget, report: TrimReport) -> None:
        """Measure the store; with --discard old, trim the oldest messages down to the budget.

        Some stores show (and give back) the space a trim freed only after a checkpoint or a
        vacuum: near the budget, a `CompactOp` follows every pass that trimmed, before the
        store is measured again, so a trim is never repeated for bytes already freed. The
        target leaves room for what the store grew by since the last pass, so a steady load
        stays within the budget, not just returns to it.
        """
        usage = await self._measure(budget, compact=report.messages > 0)
        # How much the store grew since the last pass left it (0 on the first look).
        baseline, self._budget_baseline = self._budget_baseline, budget.used_bytes
        growth = 0 if baseline is None else max(budget.used_bytes - baseline, 0)
        if budget.discard != DISCARD_OLD or budget.used_bytes <= budget.max_bytes * LOW_WATER:
            return
        # Room for about two passes of growth, and never below half of the budget.
        target = max(int(budget.max_bytes * LOW_WATER) - 2 * growth, budget.max_bytes // 2)
        excess = budget.used_bytes - target
        freed = await self._trim_to_budget(budget, usage, excess, report)
        if freed:
            await self._measure(budget, compact=True)
            self._budget_baseline = budget.used_bytes

    async def _measure(self, budget: DiskBudget, *, compact: bool) -> DiskUsage:
        """The store's disk usage, compacted first when it trimmed and is near the budget."""
        usage = await asyncio.to_thread(self._store.disk_usage)
        budget.measured(usage)
        if compact and budget.used_bytes >= budget.max_bytes * LOW_WATER:
            await self._pipeline.submit(CompactOp())
            usage = await asyncio.to_thread(self._store.disk_usage)
            budget.measured(usage)
        return usage

    async def _trim_to_budget(
        self, budget: DiskBudget, usage: DiskUsage, excess: int, report: TrimReport
    ) -> int:
        """Trim the oldest messages until about `excess` bytes of disk are freed; what went."""
        heads = [h for h in await asyncio.to_thread(self._store.list_heads) if h.first_head_id]
        held = sum(h.bytes for h in heads)
        # The files hold more than the messages' own bytes (row and index overhead): scale what
        # must be freed by that ratio, so one pass frees about enough.
        overhead = max(usage.used_bytes / held, 1.0) if held else 1.0
        needed = int(excess / overhead) + 1
        freed = await self._trim_oldest(heads, needed, report, protect=True)
        if freed < needed:
            more = await self._trim_oldest(
                await self._fresh(heads), needed - freed, report, protect=False
            )
            if more and not self._budget_conflict:
                log.warning(
                    "disk budget --max-disk-bytes %s: trimmed %s of this node's messages that "
                    "no peer has reported holding yet (--retain-unsynced gives way to "
                    "--discard old)",
                    format_bytes(budget.max_bytes),
                    format_bytes(more),
                )
            self._budget_conflict = more > 0
            return freed + more
        self._budget_conflict = False
        return freed

    async def _fresh(self, heads: list[TopicHead]) -> list[TopicHead]:
        fresh = []
        for head in heads:
            now = await asyncio.to_thread(self._store.log_head, head.topic, head.origin)
            if now.first_head_id:
                fresh.append(now)
        return fresh

    async def _trim_oldest(
        self, heads: list[TopicHead], needed: int, report: TrimReport, *, protect: bool
    ) -> int:
        """Trim the oldest messages across `heads` until about `needed` bytes are freed."""
        # A heap of each log's oldest held message: (its time, order, log, its head, limit).
        queue: list[tuple[int, int, TopicHead, int, int]] = []

        async def push(order: int, head: TopicHead, from_head: int, limit: int) -> None:
            oldest = await asyncio.to_thread(
                self._store.summaries, head.topic, head.origin, from_head, 1
            )
            if oldest and oldest[0].head_id < limit:
                heapq.heappush(
                    queue, (oldest[0].created_at_ms, order, head, oldest[0].head_id, limit)
                )

        for order, head in enumerate(heads):
            limit = self._protected_from(head) if protect else head.head_id + 1
            await push(order, head, head.first_head_id, limit)
        freed = 0
        while queue and freed < needed:
            _, order, head, start, limit = heapq.heappop(queue)
            rival = queue[0][0] if queue else None
            end = await self._oldest_batch_end(head, start, limit, rival, needed - freed)
            result = await self._pipeline.submit(TrimOp(head.topic, head.origin, end))
            assert isinstance(result, TrimResult)
            report.add((head.topic, head.origin), result)
            freed += result.freed_bytes
            if result.removed and result.first_head_id:
                await push(order, head, result.first_head_id, limit)
        return freed

    async def _oldest_batch_end(
        self, head: TopicHead, start: int, limit: int, rival: int | None, needed: int
    ) -> int:
        """Where a budget trim of one log from `start` ends.

        It stops at `limit` (what must be kept), at the first message newer than `rival` (the
        oldest message of the next log), at `needed` bytes, or at one batch; the oldest message
        of all always goes.
        """
        page = await asyncio.to_thread(
            self._store.summaries, head.topic, head.origin, start, TRIM_BATCH_ROWS
        )
        end, size = start + 1, 0
        for summary in page:
            newer = rival is not None and summary.created_at_ms > rival
            if summary.head_id >= limit or (newer and summary.head_id > start):
                break
            end, size = summary.head_id + 1, size + summary.size
            if size >= needed or size >= TRIM_BATCH_BYTES:
                break
        return min(end, limit)

    # -- reporting --------------------------------------------------------------------------------

    def _note(self, report: TrimReport) -> None:
        for total in (self.total, self._unreported):
            total.messages += report.messages
            total.bytes += report.bytes
        self._unreported.logs |= report.logs
        if not self._unreported.messages:
            return
        # The first trim is logged at once, so an operator sees retention start working.
        first_ever = self.total.messages == self._unreported.messages
        if not first_ever and time.monotonic() - self._reported_at < REPORT_EVERY_S:
            return
        log.info(
            "retention trimmed %d messages (%s) from %d logs",
            self._unreported.messages,
            format_bytes(self._unreported.bytes),
            len(self._unreported.logs),
        )
        self._unreported = TrimReport()
        self._reported_at = time.monotonic()
