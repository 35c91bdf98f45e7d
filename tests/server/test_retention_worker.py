"""The retention worker's decisions, pass by pass, on a real store and commit pipeline.

The worker runs here in-process on `MemoryStore` (the reference store, whose disk usage is the
bytes it holds, so the budget cases are exact) with a clock the test sets. What a daemon does
with the same worker over real files is in tests/reliability/test_retention.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import pytest

from msgbus_core import MemoryStore, NodeId, TopicHead
from msgbus_core.limits import DELETE_TOPIC
from msgbus_core.ops import AppendOp, DeleteRangeOp, Outcome, TrimOp, TrimResult, WriteOp
from msgbus_server.disk_budget import DiskBudget
from msgbus_server.head_changes import HeadChanges
from msgbus_server.health import Health
from msgbus_server.notify import LogNotifier
from msgbus_server.pipeline import CommitPipeline
from msgbus_server.retention import TRIM_BATCH_ROWS, PeerHoldings, RetentionWorker
from msgbus_server.retention_rules import RetentionPolicy, parse_retention

LOCAL = NodeId("t", "b", "local")
OTHER = NodeId("t", "b", "other")
NOW = 10_000_000


class RecordingStore(MemoryStore):
    """The reference store, remembering the size of every trim it applied."""

    def __init__(self) -> None:
        super().__init__()
        self.trims: list[TrimResult] = []

    def write(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        outcomes = super().write(ops)
        self.trims += [o for o in outcomes if isinstance(o, TrimResult) and o.removed]
        return outcomes


@pytest.fixture
async def pipeline() -> AsyncIterator[tuple[RecordingStore, CommitPipeline]]:
    store = RecordingStore()
    pipeline = CommitPipeline(store, LogNotifier(), Health())
    await pipeline.start()
    yield store, pipeline
    await pipeline.stop()


def policy(*specs: str) -> RetentionPolicy:
    return RetentionPolicy(tuple(parse_retention(spec) for spec in specs))


async def publish(
    pipeline: CommitPipeline,
    topic: str,
    count: int,
    *,
    size: int = 100,
    origin: NodeId = LOCAL,
    start_ms: int = NOW,
    step_ms: int = 1,
) -> None:
    ops = [
        AppendOp(topic, origin, b"x" * size, {}, f"{topic}-{start_ms}-{n}", start_ms + n * step_ms)
        for n in range(count)
    ]
    await pipeline.submit_many(ops)


def worker(
    store: MemoryStore,
    pipeline: CommitPipeline,
    rules: RetentionPolicy,
    *,
    budget: DiskBudget | None = None,
    holdings: PeerHoldings | None = None,
    now: int = NOW + 1_000_000,
) -> RetentionWorker:
    return RetentionWorker(
        store=store,
        pipeline=pipeline,
        policy=rules,
        local_node=LOCAL,
        budget=budget,
        holdings=holdings,
        clock=lambda: now,
    )


def first(store: MemoryStore, topic: str, origin: NodeId = LOCAL) -> int:
    return store.log_head(topic, origin).first_head_id


async def test_max_messages_keeps_the_newest_and_the_first_rule_that_matches_wins(
    pipeline: tuple[RecordingStore, CommitPipeline],
) -> None:
    store, pipe = pipeline
    for topic in ("a.one", "a.two", "b.one"):
        await publish(pipe, topic, 30)
    rules = policy("a.*:max-messages=10", "*:max-messages=25")
    report = await worker(store, pipe, rules).run_pass()
    # Each log separately: both a.* logs keep 10, the other log falls to the second rule.
    assert (first(store, "a.one"), first(store, "a.two"), first(store, "b.one")) == (21, 21, 6)
    assert report.messages == 20 + 20 + 5
    assert len(report.logs) == 3
    # A second pass finds nothing more to do.
    assert (await worker(store, pipe, rules).run_pass()).messages == 0


async def test_max_bytes_keeps_the_newest_that_fit(
    pipeline: tuple[RecordingStore, CommitPipeline],
) -> None:
    store, pipe = pipeline
    await publish(pipe, "t", 10, size=100)
    await worker(store, pipe, policy("t:max-bytes=450")).run_pass()
    head = store.log_head("t", LOCAL)
    # 400 bytes fit in 450; 500 would not.
    assert (head.first_head_id, head.bytes) == (7, 400)


async def test_max_age_trims_the_messages_older_than_the_age(
    pipeline: tuple[RecordingStore, CommitPipeline],
) -> None:
    store, pipe = pipeline
    # One message a second, from NOW on; the clock reads NOW + 60.5 s: 60 of them are older
    # than 30 s... those at NOW + 0..30 s.
    await publish(pipe, "t", 61, step_ms=1000)
    clock_now = NOW + 60_500
    await worker(store, pipe, policy("t:max-age=30s"), now=clock_now).run_pass()
    kept = store.fetch("t", LOCAL, 1, 100)
    assert all(m.created_at_ms >= clock_now - 30_000 for m in kept)
    assert kept[0].head_id == 32
    assert kept[-1].head_id == 61


async def test_trims_go_through_the_pipeline_in_bounded_batches(
    pipeline: tuple[RecordingStore, CommitPipeline],
) -> None:
    store, pipe = pipeline
    await publish(pipe, "t", 2 * TRIM_BATCH_ROWS + 500, size=10)
    await worker(store, pipe, policy("t:max-messages=10")).run_pass()
    assert first(store, "t") == 2 * TRIM_BATCH_ROWS + 491
    assert len(store.trims) == 3
    assert max(t.removed for t in store.trims) <= TRIM_BATCH_ROWS


async def test_unsynced_local_messages_stay_until_a_peer_holds_them(
    pipeline: tuple[RecordingStore, CommitPipeline],
) -> None:
    store, pipe = pipeline
    await publish(pipe, "t", 30)
    await publish(pipe, "t", 30, origin=OTHER)
    holdings = PeerHoldings()
    rules = policy("*:max-messages=5")
    await worker(store, pipe, rules, holdings=holdings).run_pass()
    # Another origin's log is not this node's to protect; this node's own log waits.
    assert (first(store, "t"), first(store, "t", OTHER)) == (1, 26)
    holdings.report("t", 12)
    await worker(store, pipe, rules, holdings=holdings).run_pass()
    assert first(store, "t") == 13
    holdings.report("t", 30)
    await worker(store, pipe, rules, holdings=holdings).run_pass()
    assert first(store, "t") == 26


async def test_the_budget_trims_the_oldest_messages_first_across_logs(
    pipeline: tuple[RecordingStore, CommitPipeline],
) -> None:
    store, pipe = pipeline
    # "old" is older than all of "new": the budget must take from "old" first.
    await publish(pipe, "old", 40, size=100, start_ms=NOW)
    await publish(pipe, "new", 40, size=100, start_ms=NOW + 1_000)
    budget = DiskBudget(6_000, "old")
    await worker(store, pipe, RetentionPolicy(), budget=budget).run_pass()
    assert store.disk_usage().used_bytes <= 6_000
    assert first(store, "new") == 1
    assert first(store, "old") > 1
    # Down to the low-water mark, not one byte under the budget.
    assert store.disk_usage().used_bytes <= 0.95 * 6_000


async def test_the_budget_takes_unsynced_messages_last_and_says_so(
    pipeline: tuple[RecordingStore, CommitPipeline], caplog: pytest.LogCaptureFixture
) -> None:
    store, pipe = pipeline
    await publish(pipe, "mine", 40, size=100, start_ms=NOW)
    await publish(pipe, "theirs", 20, size=100, start_ms=NOW + 1_000, origin=OTHER)
    holdings = PeerHoldings()  # no peer has reported anything of "mine"
    budget = DiskBudget(3_000, "old")
    with caplog.at_level(logging.WARNING, logger="msgbus_server.retention"):
        await worker(store, pipe, RetentionPolicy(), budget=budget, holdings=holdings).run_pass()
    # The other origin's log went first and whole; then the budget won over retain-unsynced.
    assert store.log_head("theirs", OTHER).first_head_id == 0
    assert first(store, "mine") > 1
    assert store.disk_usage().used_bytes <= 3_000
    assert "no peer has reported holding yet" in caplog.text


async def test_discard_new_refuses_writes_until_a_rule_frees_space(
    pipeline: tuple[RecordingStore, CommitPipeline],
) -> None:
    store, pipe = pipeline
    await publish(pipe, "t", 50, size=100, step_ms=1000)
    budget = DiskBudget(4_000, "new")
    rules = policy("t:max-age=20s")
    await worker(store, pipe, RetentionPolicy(), budget=budget).run_pass()
    # discard new never trims for the budget: the store stays above it, writes are refused.
    assert first(store, "t") == 1
    with pytest.raises(Exception, match="--max-disk-bytes 4000"):
        budget.check_writable(100)
    # The age rule trims; the next measurement makes room again.
    await worker(store, pipe, rules, budget=budget, now=NOW + 50_000).run_pass()
    assert store.disk_usage().used_bytes < 4_000
    budget.check_writable(100)


async def test_a_marker_log_is_trimmed_only_past_what_its_markers_still_cover(
    pipeline: tuple[RecordingStore, CommitPipeline],
) -> None:
    store, pipe = pipeline
    await publish(pipe, "t", 20)
    for n in range(5):
        await pipe.submit(DeleteRangeOp("t", LOCAL, n + 1, n + 1, f"m{n}", NOW + n))
    await pipe.submit(DeleteRangeOp("t", LOCAL, 15, 15, "m-late", NOW + 9))
    # Every log to one message, the marker log included. A pass trims the marker logs after
    # the others, so the markers of heads trimmed in the same pass go in that pass.
    await worker(store, pipe, policy("*:max-messages=1")).run_pass()
    assert first(store, "t") == 20
    assert first(store, DELETE_TOPIC) == 6
    # A marker that covers a held message stays, whatever a trim asks for.
    await pipe.submit(DeleteRangeOp("t", LOCAL, 20, 20, "m-held", NOW + 10))
    result = await pipe.submit(TrimOp(DELETE_TOPIC, LOCAL, 100))
    assert isinstance(result, TrimResult)
    assert (result.removed, result.first_head_id) == (1, 7)


async def test_between_sweeps_a_pass_looks_only_at_the_logs_that_changed() -> None:
    store = CountingStore()
    changes = HeadChanges()
    pipe = CommitPipeline(store, LogNotifier(changes), Health())
    await pipe.start()
    try:
        for topic in ("a", "b"):
            await publish(pipe, topic, 20)
        holdings = PeerHoldings()
        retention = RetentionWorker(
            store=store,
            pipeline=pipe,
            policy=policy("*:max-messages=5"),
            local_node=LOCAL,
            holdings=holdings,
            changes=lambda: changes,
        )
        await retention.run_pass()  # the first pass sweeps every log; nothing is held yet
        assert store.listed == 1
        assert (first(store, "a"), first(store, "b")) == (1, 1)
        # A peer now holds all of "a"; "b" gains messages. Only those two are looked at, by
        # their own heads, without listing every log.
        holdings.report("a", 20)
        await publish(pipe, "b", 5, start_ms=NOW + 100)
        holdings.report("b", 25)
        await retention.run_pass()
        assert store.listed == 1
        assert (first(store, "a"), first(store, "b")) == (16, 21)
        # Idle: nothing changed, nothing is read.
        looked = store.looked
        await retention.run_pass()
        assert (store.listed, store.looked) == (1, looked)
    finally:
        await pipe.stop()


class CountingStore(RecordingStore):
    """Counts the whole-store listings and the single-log reads retention makes."""

    def __init__(self) -> None:
        super().__init__()
        self.listed = 0
        self.looked = 0

    def list_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[TopicHead]:
        self.listed += 1
        return super().list_heads(after, limit)

    def log_head(self, topic: str, origin: NodeId) -> TopicHead:
        self.looked += 1
        return super().log_head(topic, origin)
