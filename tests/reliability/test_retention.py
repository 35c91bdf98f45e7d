"""Retention and the disk budget of a real daemon: real database files, real retention passes.

Each test would fail on a daemon without the feature it covers: one that never trims keeps every
head from 1 and its file grows with everything written; one that trims without saying so leaves
a subscriber or a Fetch unable to tell a trim from a gap; one without a budget never refuses a
write. The footprint of a store is its database file plus its write-ahead log (SQLite
`msgbus.sqlite-wal`, DuckDB `msgbus.duckdb.wal`): what a small disk actually pays.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import pytest

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_sdk import MsgbusClient, Trim
from msgbus_server.retention import RETENTION_INTERVAL_S
from msgbus_server.testing import Daemon, WaitTimeout, wait_until
from msgbus_testkit.logs import fetch_log
from msgbus_testkit.nodes import NODE

MIB: Final = 1024 * 1024
KIB: Final = 1024
DELETE = "$msgbus.delete"
NODE_ID = NodeId.from_key(NODE)


# -- reading a daemon ---------------------------------------------------------------------------


def footprint(daemon: Daemon) -> int:
    """The bytes the daemon's store takes on disk: the database file and its write-ahead log."""
    wal = "-wal" if daemon.storage == "sqlite" else ".wal"
    total = 0
    for path in (daemon.data_path, daemon.data_path.with_name(daemon.data_path.name + wal)):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def get_head(stub: rpc.MsgbusServiceStub, topic: str) -> pb.GetHeadResponse:
    """GetHead of the local node's log of `topic`."""
    reply: pb.GetHeadResponse = stub.GetHead(pb.GetHeadRequest(topic=topic), timeout=10)
    return reply


def first_head(stub: rpc.MsgbusServiceStub, topic: str) -> int:
    """The lowest head the local log of `topic` still holds (0: none)."""
    return get_head(stub, topic).first_head_id


def wait_first_head(
    stub: rpc.MsgbusServiceStub, topic: str, expected: int, timeout: float = 60.0
) -> None:
    """Wait until retention has trimmed the local log of `topic` to start at `expected`."""
    wait_until(
        lambda: first_head(stub, topic) == expected,
        message=f"{topic} to start at head {expected}",
        timeout=timeout,
    )


def fetch_responses(
    stub: rpc.MsgbusServiceStub, topic: str, from_head_id: int, *, pack: int = 0
) -> list[pb.FetchResponse]:
    """Every response of one Fetch of up to 10,000 messages (`pack` per response, 0: one each)."""
    request = pb.FetchRequest(
        topic=topic, from_head_id=from_head_id, limit=10_000, max_messages_per_response=pack
    )
    return list(stub.Fetch(request, timeout=60))


def envelopes_of(responses: list[pb.FetchResponse]) -> list[pb.MessageEnvelope]:
    """The messages of Fetch responses, in order, whether packed or one per response."""
    found: list[pb.MessageEnvelope] = []
    for response in responses:
        if response.HasField("message"):
            found.append(response.message)
        found.extend(response.messages)
    return found


def payload_for(topic: str, head_id: int) -> bytes:
    """A payload whose length differs from head to head, so byte counts tell heads apart."""
    return f"{topic}:{head_id}:".encode() * (head_id % 7 + 1)


def publish_numbered(stub: rpc.MsgbusServiceStub, topic: str, first: int, last: int) -> None:
    """Publish `payload_for(topic, h)` for heads first..last of a log whose head is first - 1."""
    entries = [
        pb.PublishRequest(topic=topic, payload=payload_for(topic, h))
        for h in range(first, last + 1)
    ]
    reply = stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=30)
    assert [m.head_id for m in reply.messages] == list(range(first, last + 1))


# -- 1. max-messages -----------------------------------------------------------------------------


def test_max_messages_trims_the_prefix_and_says_where_the_log_starts(
    tmp_path: Path, backend: str
) -> None:
    args = ["--retention", "trim.*:max-messages=10"]
    with Daemon.start(tmp_path, storage=backend, extra_args=args) as daemon:
        stub = daemon.stub()
        publish_numbered(stub, "trim.a", 1, 50)
        publish_numbered(stub, "keep.a", 1, 50)
        wait_first_head(stub, "trim.a", 41)

        held = {h: payload_for("trim.a", h) for h in range(41, 51)}
        head = get_head(stub, "trim.a")
        assert (head.head_id, head.found, head.first_head_id) == (50, True, 41)
        assert head.bytes == sum(len(p) for p in held.values())

        # One message per response: only the first says where the log starts now.
        responses = fetch_responses(stub, "trim.a", 1)
        assert [r.message.head_id for r in responses] == list(range(41, 51))
        assert [r.first_head_id for r in responses] == [41] + [0] * 9
        assert {r.message.head_id: r.message.payload for r in responses} == held
        # Packed, the same: the field on the first response only.
        packed = fetch_responses(stub, "trim.a", 1, pack=4)
        assert [r.first_head_id for r in packed] == [41, 0, 0]
        assert [m.head_id for m in envelopes_of(packed)] == list(range(41, 51))
        # From the first head on, nothing was skipped, so nothing is said.
        assert [r.first_head_id for r in fetch_responses(stub, "trim.a", 41)] == [0] * 10

        # The rule matches trim.* only: keep.a is whole, and says so with first head 1.
        keep = get_head(stub, "keep.a")
        assert (keep.head_id, keep.first_head_id) == (50, 1)
        assert keep.bytes == sum(len(payload_for("keep.a", h)) for h in range(1, 51))
        assert [m.head_id for m in envelopes_of(fetch_responses(stub, "keep.a", 1))] == list(
            range(1, 51)
        )
        assert all(r.first_head_id == 0 for r in fetch_responses(stub, "keep.a", 1))

        listed = {h.topic: h for h in stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads}
        assert (listed["trim.a"].first_head_id, listed["trim.a"].head_id) == (41, 50)
        assert listed["trim.a"].bytes == head.bytes
        assert (listed["keep.a"].first_head_id, listed["keep.a"].head_id) == (1, 50)
        assert listed["keep.a"].bytes == keep.bytes

        # The trim is durable, and heads are never reused: the next publish is 51.
        daemon.restart()
        stub = daemon.stub()
        assert first_head(stub, "trim.a") == 41
        sent = stub.Publish(pb.PublishRequest(topic="trim.a", payload=b"after"), timeout=10)
        assert sent.message.head_id == 51
        wait_first_head(stub, "trim.a", 42)
        assert get_head(stub, "keep.a").first_head_id == 1


# -- 2. the file stops growing under a steady load -----------------------------------------------


@dataclass(frozen=True)
class SteadyLoad:
    """A paced PublishBatch load: `entries` fresh random payloads of `payload` bytes a batch.

    Payloads are random and all different: DuckDB compresses repeated values, so a repeated
    payload would hide how much the file really holds.
    """

    payload: int
    entries: int
    pace_s: float
    batches: int

    @property
    def batch_bytes(self) -> int:
        """The payload bytes of one batch."""
        return self.payload * self.entries

    @property
    def written(self) -> int:
        """The payload bytes of the whole load."""
        return self.batch_bytes * self.batches

    @property
    def per_pass(self) -> int:
        """What the load writes between two retention passes."""
        return int(self.batch_bytes / self.pace_s * RETENTION_INTERVAL_S)


def run_load(
    daemon: Daemon, load: SteadyLoad, topics: tuple[str, ...]
) -> tuple[list[int], list[pb.MessageEnvelope]]:
    """Run `load` (each batch's entries spread over `topics`), sampling the footprint after
    every batch; the samples and the last batch as stored."""
    stub = daemon.stub()
    samples: list[int] = []
    last: list[pb.MessageEnvelope] = []
    started = time.monotonic()
    for batch in range(load.batches):
        entries = [
            pb.PublishRequest(topic=topics[i % len(topics)], payload=os.urandom(load.payload))
            for i in range(load.entries)
        ]
        reply = stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=30)
        last = list(reply.messages)
        samples.append(footprint(daemon))
        # Paced, not as fast as possible: a steady rate is what retention must keep up with.
        ahead = started + (batch + 1) * load.pace_s - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    return samples, last


# SQLite: 64 x 4 KiB every 100 ms, 2.5 MiB/s, 25 MiB in all. DuckDB: 64 x 8 KiB, 5 MiB/s, for
# 16 s, 80 MiB: DuckDB's WAL alone takes 16 MiB before it is checkpointed into the file, so only
# a load several times that tells a store that trims from one that does not. (At 10 MiB/s, with
# another test loading the same two cores, retention fell seconds behind on DuckDB.)
STEADY: Final = {
    "sqlite": SteadyLoad(payload=4 * KIB, entries=64, pace_s=0.1, batches=100),
    "duckdb": SteadyLoad(payload=8 * KIB, entries=64, pace_s=0.1, batches=160),
}
KEPT_BYTES: Final = 2 * MIB
SQLITE_WAL_CYCLE: Final = 4 * MIB
"""SQLite checkpoints its WAL at 1,000 pages of 4 KiB."""
DUCKDB_WAL_CYCLE: Final = 16 * MIB
"""DuckDB checkpoints its WAL into the file at 16 MiB (its checkpoint_threshold)."""


def steady_bound(storage: str, load: SteadyLoad) -> int:
    """The footprint a store that trims to `KEPT_BYTES` stays under, for `load`.

    A pass every second trims to the rule, so the messages held are at most the kept bytes plus
    about two passes of writes (the one being made and the one in flight).
    - SQLite: a 4 KiB payload and its row do not fit one 4 KiB page, so rows take about 1.3
      times their payload (1.5 allowed); the WAL holds at most its checkpoint cycle plus the
      commit that crosses it (7 MiB allowed; measured 5-6.3 MiB). About 17.5 MiB, measured
      10.5-12 MiB; 25 MiB are written.
    - DuckDB: a checkpoint writes what the WAL holds into new blocks before it frees the old
      version's, so the file alternates between about one and two times (WAL cycle + kept):
      measured 18.8 and 36 MiB, whatever the rate. On top, the WAL (its cycle and one batch),
      and one pass of writes for a checkpoint that comes while a trim is behind. About 57.5 MiB,
      measured 52.2 MiB; 80 MiB are written.
    """
    if storage == "sqlite":
        return int(1.5 * (KEPT_BYTES + 2 * load.per_pass)) + 7 * MIB
    return 2 * (DUCKDB_WAL_CYCLE + KEPT_BYTES) + DUCKDB_WAL_CYCLE + load.batch_bytes + load.per_pass


def growth_slack(storage: str, load: SteadyLoad) -> int:
    """How much higher the second half's largest footprint may be than the first half's.

    The two halves' samples catch the WAL at different points of its cycle (and DuckDB's file
    in its smaller or its larger state): one WAL cycle and one batch. A store that never trims
    grows by half the load between the halves (12 MiB on SQLite, 40 MiB on DuckDB).
    """
    cycle = SQLITE_WAL_CYCLE if storage == "sqlite" else DUCKDB_WAL_CYCLE
    return cycle + load.batch_bytes


@pytest.mark.parametrize("limit", ["max-bytes", "max-messages"])
def test_file_size_stays_bounded_under_a_steady_load(
    tmp_path: Path, backend: str, limit: str
) -> None:
    load = STEADY[backend]
    kept = f"{KEPT_BYTES // MIB}MiB" if limit == "max-bytes" else str(KEPT_BYTES // load.payload)
    args = ["--retention", f"load.*:{limit}={kept}"]
    with Daemon.start(tmp_path, storage=backend, extra_args=args) as daemon:
        samples, last = run_load(daemon, load, ("load.a",))
        stub = daemon.stub()
        bound = steady_bound(backend, load)
        half = len(samples) // 2
        early, late = max(samples[:half]), max(samples[half:])
        print(
            f"{backend} {limit}: footprint max {max(samples) / MIB:.1f} MiB (first half "
            f"{early / MIB:.1f}, second {late / MIB:.1f}), bound {bound / MIB:.1f} MiB, "
            f"{load.written / MIB:.0f} MiB written"
        )
        assert bound < load.written * 3 // 4, "the bound must fail a store that keeps everything"
        assert growth_slack(backend, load) < load.written // 4
        assert max(samples) <= bound, f"footprint {max(samples)} above {bound}: {samples}"
        assert late <= early + growth_slack(backend, load), f"the file kept growing: {samples}"

        head = get_head(stub, "load.a")
        assert head.head_id == load.entries * load.batches
        assert head.first_head_id > 1
        # The rule holds once a pass has run after the load.
        expected = KEPT_BYTES // load.payload
        wait_until(
            lambda: get_head(stub, "load.a").first_head_id == head.head_id - expected + 1,
            message=f"load.a trimmed to its newest {expected} messages",
        )
        responses = fetch_responses(stub, "load.a", 1, pack=100)
        assert responses[0].first_head_id == head.head_id - expected + 1
        held = envelopes_of(responses)
        assert held[0].head_id == responses[0].first_head_id
        assert [m.head_id for m in held] == list(range(held[0].head_id, head.head_id + 1))
        assert [m.payload for m in held[-len(last) :]] == [m.payload for m in last]


# -- 3. a subscription overtaken by retention ----------------------------------------------------


SUBSCRIBED: Final = 20
"""max-messages of the subscribed log."""


def test_a_subscription_overtaken_by_retention_reports_the_trim_and_goes_on(
    tmp_path: Path,
) -> None:
    args = ["--retention", f"sub.*:max-messages={SUBSCRIBED}"]
    with Daemon.start(tmp_path, extra_args=args) as daemon:
        stub = daemon.stub()
        publish_numbered(stub, "sub.a", 1, 5)
        trims: list[Trim] = []
        with MsgbusClient.connect(daemon.endpoint) as bus:
            # Without reconnect a gap is raised, not repaired by a silent reopen: any gap fails.
            subscription = bus.subscribe(
                "sub.a", from_head_id=1, reconnect=False, on_trim=trims.append
            )
            with subscription:
                delivered = [next(subscription).head_id for _ in range(5)]
                assert delivered == [1, 2, 3, 4, 5]
                # The subscriber stops reading while the log runs far past max-messages: far
                # more than the daemon reads ahead for one stream (a page of 100) plus what
                # gRPC buffers, so some heads are trimmed before the stream reaches them.
                payload = os.urandom(32 * KIB)
                last = 5
                for _ in range(8):
                    entries = [pb.PublishRequest(topic="sub.a", payload=payload)] * 100
                    stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=30)
                    last += 100
                wait_until(
                    lambda: first_head(stub, "sub.a") == last - SUBSCRIBED + 1,
                    message="retention to pass the subscriber",
                )
                while delivered[-1] < last:
                    delivered.append(next(subscription).head_id)
                assert subscription.trims == len(trims)
        print(f"delivered {len(delivered)} of heads 1..{last}; trims {trims}")
        assert trims, "the subscription never reported the trim"
        jumps = [(a, b) for a, b in itertools.pairwise(delivered) if b != a + 1]
        # Every jump in what was delivered is a reported trim, and every trim is a jump.
        assert [(t.expected_head_id, t.first_head_id) for t in trims] == [
            (a + 1, b) for a, b in jumps
        ]
        assert all(
            t.topic == "sub.a" and t.skipped == t.first_head_id - t.expected_head_id for t in trims
        )
        assert all(b > a for a, b in itertools.pairwise(delivered))
        assert delivered[-SUBSCRIBED:] == list(range(last - SUBSCRIBED + 1, last + 1))

        # A raw Subscribe from 1 on the trimmed log starts at the first head and says so.
        call = stub.Subscribe(pb.SubscribeRequest(topic="sub.a", from_head_id=1), timeout=30)
        responses = iter(call)
        try:
            first = next(responses)
            second = next(responses)
        finally:
            call.cancel()  # type: ignore[no-untyped-call]
        assert first.message.head_id == first.first_head_id == last - SUBSCRIBED + 1
        assert second.message.head_id == first.message.head_id + 1
        assert second.first_head_id == 0


# -- 6. --discard new ----------------------------------------------------------------------------


def publish_refusal(
    stub: rpc.MsgbusServiceStub, topic: str, payload: bytes
) -> pb.MessageEnvelope | grpc.RpcError:
    """Publish; the stored message, or the RESOURCE_EXHAUSTED error that refused it."""
    try:
        reply = stub.Publish(pb.PublishRequest(topic=topic, payload=payload), timeout=10)
    except grpc.RpcError as error:
        if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return error
    return reply.message


def test_discard_new_refuses_writes_at_the_budget_and_serves_again_after_trimming(
    tmp_path: Path, backend: str
) -> None:
    # An empty store takes 0.06 MiB (SQLite) or 0.8 MiB (DuckDB): 12 MiB is about 190 messages
    # of 64 KiB on either.
    args = ["--max-disk-bytes", "12MiB", "--discard", "new", "--retention", "fill.*:max-age=3s"]
    with Daemon.start(tmp_path, storage=backend, extra_args=args) as daemon:
        stub = daemon.stub()
        acked: dict[int, bytes] = {}
        refusal: grpc.RpcError | None = None
        for _ in range(1000):
            payload = os.urandom(64 * KIB)
            outcome = publish_refusal(stub, "fill.a", payload)
            if isinstance(outcome, grpc.RpcError):
                refusal = outcome
                break
            acked[outcome.head_id] = payload
        assert refusal is not None, f"1000 messages of 64 KiB ({footprint(daemon)} B) all taken"
        assert "--max-disk-bytes" in (refusal.details() or "")
        print(f"{backend}: refused after {len(acked)} messages, {footprint(daemon) / MIB:.1f} MiB")
        # The refused publish stored nothing, and the daemon still serves.
        assert get_head(stub, "fill.a").head_id == max(acked)
        assert stub.Health(pb.HealthRequest(), timeout=10).status == "SERVING"
        last_acked = max(acked)

        # Retention trims what is older than 3 s; the next measurement finds room again.
        def accepted() -> pb.MessageEnvelope | None:
            payload = os.urandom(64 * KIB)
            outcome = publish_refusal(stub, "fill.a", payload)
            if isinstance(outcome, grpc.RpcError):
                return None
            acked[outcome.head_id] = payload
            return outcome

        try:
            again = wait_until(
                accepted, message="a publish accepted again", interval=0.2, timeout=20
            )
        except WaitTimeout as timeout:
            head = get_head(stub, "fill.a")
            raise AssertionError(
                f"{timeout}; fill.a holds {head.first_head_id}..{head.head_id} ({head.bytes} B), "
                f"footprint {footprint(daemon)} B"
            ) from None
        # Heads follow on from the last acknowledged one: no refused publish took a head.
        assert again.head_id == last_acked + 1
        held = fetch_log(stub, "fill.a")
        assert held, "the newest message is held"
        assert [m.head_id for m in held] == list(range(held[0].head_id, again.head_id + 1))
        for message in held:
            assert message.payload == acked[message.head_id], f"head {message.head_id} changed"


# -- 7. --discard old ----------------------------------------------------------------------------


BUDGET: Final = 16 * MIB
BUDGET_LOAD: Final = SteadyLoad(payload=8 * KIB, entries=64, pace_s=0.1, batches=80)
"""5 MiB/s on two topics, 40 MiB in all: two and a half budgets."""


def budget_bound(storage: str, load: SteadyLoad) -> int:
    """The footprint a store kept to `BUDGET` with --discard old stays under.

    The budget is measured once a pass, so about two passes of writes land on top of it before
    the oldest messages are trimmed. It counts the WAL, and the free pages inside the files as
    reusable, so the files hold at most the budget plus those writes:
    - SQLite: those writes take about 1.5 times their payload in pages. 31 MiB; measured
      19.6 MiB (25.5 MiB before compaction near the budget); 40 MiB are written.
    - DuckDB: a checkpoint writes its new blocks before it frees the old ones, so the file holds
      up to two versions of that. 52 MiB (measured 38-39 MiB), above what this run writes: on
      DuckDB it is the first heads and the trimming stopping once within budget that fail a
      store that never trims.
    """
    if storage == "sqlite":
        return BUDGET + int(1.5 * 2 * load.per_pass)
    return 2 * (BUDGET + 2 * load.per_pass)


def first_heads(stub: rpc.MsgbusServiceStub) -> dict[str, int]:
    """Every log's first head, by topic."""
    return {
        h.topic: h.first_head_id for h in stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads
    }


class Unchanged:
    """A wait_until condition: true once `read()` returns what it returned on the last poll.

    `seen` keeps every answer, for the failure message.
    """

    def __init__(self, read: Callable[[], object]) -> None:
        self._read = read
        self.seen: list[object] = []

    def __call__(self) -> bool:
        self.seen.append(self._read())
        return len(self.seen) > 1 and self.seen[-1] == self.seen[-2]


def test_discard_old_keeps_the_store_within_the_budget(tmp_path: Path, backend: str) -> None:
    args = ["--max-disk-bytes", f"{BUDGET // MIB}MiB"]
    with Daemon.start(tmp_path, storage=backend, extra_args=args) as daemon:
        stub = daemon.stub()
        # run_load raises on any refused publish: --discard old never refuses.
        samples, last = run_load(daemon, BUDGET_LOAD, ("budget.a", "budget.b"))
        bound = budget_bound(backend, BUDGET_LOAD)
        print(
            f"{backend} --discard old: footprint max {max(samples) / MIB:.1f} MiB, "
            f"bound {bound / MIB:.1f} MiB, {BUDGET_LOAD.written / MIB:.0f} MiB written"
        )
        assert max(samples) <= bound, f"footprint {max(samples)} above {bound}: {samples}"
        # Once within the budget, trimming stops: the newest messages are not trimmed away
        # pass after pass. Polled a pass and a half apart, so a pass runs between two reads.
        settled = Unchanged(lambda: first_heads(stub))
        try:
            wait_until(
                settled,
                message="trimming to stop once the store is within its budget",
                interval=1.5 * RETENTION_INTERVAL_S,
                timeout=20,
            )
        except WaitTimeout as timeout:
            raise AssertionError(f"{timeout}; first heads polled: {settled.seen}") from None
        heads = first_heads(stub)
        for topic in ("budget.a", "budget.b"):
            held = {m.head_id: m.payload for m in fetch_log(stub, topic)}
            newest = [m for m in last if m.topic == topic]
            lost = [m.head_id for m in newest if held.get(m.head_id) != m.payload]
            assert not lost, f"{topic} (first head {heads[topic]}) lost its newest: {lost}"
            assert heads[topic] > 1, f"{topic} was never trimmed"
        assert footprint(daemon) <= bound


# -- 8. tombstones and delete markers ------------------------------------------------------------


MARKER_TRIM_S: Final = 15.0
"""How long a marker may outlive the last message it covers: a few retention passes."""


def test_trimming_past_deleted_ranges_drops_their_tombstones_then_their_markers(
    tmp_path: Path,
) -> None:
    # The marker log's own rule keeps one marker; a marker stays anyway while a message it
    # covers is held. tick.a keeps one message, so trimming it shows a pass has run.
    args = [
        "--retention", "tomb.*:max-messages=30",
        "--retention", f"{DELETE}:max-messages=1",
        "--retention", "tick.*:max-messages=1",
    ]  # fmt: skip
    with Daemon.start(tmp_path, extra_args=args) as daemon:
        stub = daemon.stub()
        ticks = 0

        def whole_pass() -> None:
            """Return once a whole retention pass ran after the call (marker logs included).

            A pass that trims tick.a to a head published now read the logs after this call;
            the pass after it began once that one ended.
            """
            nonlocal ticks
            for _ in range(2):
                ticks += 2
                publish_numbered(stub, "tick.a", ticks - 1, ticks)
                wait_first_head(stub, "tick.a", ticks)

        def delete(low: int, high: int) -> None:
            request = pb.DeleteRangeRequest(topic="tomb.a", from_head_id=low, to_head_id=high)
            assert stub.DeleteRange(request, timeout=10).deleted_count == high - low + 1

        publish_numbered(stub, "tomb.a", 1, 20)
        delete(5, 8)
        delete(12, 15)
        whole_pass()
        # Both markers cover held (erased) messages, so neither goes.
        markers = get_head(stub, DELETE)
        assert (markers.first_head_id, markers.head_id) == (1, 2)
        deleted = [m.head_id for m in fetch_log(stub, "tomb.a") if m.deleted]
        assert deleted == [5, 6, 7, 8, 12, 13, 14, 15]

        # 40 messages: tomb.a keeps 11..40, so 5..8 are trimmed and their marker may go.
        publish_numbered(stub, "tomb.a", 21, 40)
        wait_first_head(stub, "tomb.a", 11)
        # The pass that trimmed 5..8 trims the marker too (marker logs go last in a pass), or
        # the next one does: a few passes at most, not the next sweep of every log (60 s).
        wait_first_head(stub, DELETE, 2, timeout=MARKER_TRIM_S)
        served = fetch_log(stub, "tomb.a")
        assert [m.head_id for m in served] == list(range(11, 41))
        assert [m.head_id for m in served if m.deleted] == [12, 13, 14, 15]
        assert all(m.payload == b"" and not m.headers for m in served if m.deleted)
        assert all(m.payload == payload_for("tomb.a", m.head_id) for m in served if not m.deleted)
        responses = fetch_responses(stub, DELETE, 1)
        assert [r.message.head_id for r in responses] == [2]
        assert responses[0].first_head_id == 2

        # A third marker: the rule now asks for the second to go, but 12..15 are still held.
        delete(35, 36)
        whole_pass()
        assert first_head(stub, DELETE) == 2
        publish_numbered(stub, "tomb.a", 41, 50)
        wait_first_head(stub, "tomb.a", 21)
        wait_first_head(stub, DELETE, 3, timeout=MARKER_TRIM_S)
        served = fetch_log(stub, "tomb.a")
        assert [m.head_id for m in served if m.deleted] == [35, 36]
