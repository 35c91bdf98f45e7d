"""Several msgbusd processes on one PostgreSQL database serve one hub (issue 16).

Two processes A and B, with the same node identity and `--storage postgres` on one database,
are reached over real gRPC, as a TCP load balancer would spread clients over them. Whatever a
client does on one process, a client of the other must see as if there were one daemon: heads
assigned once and without gaps across both, live subscribers fed by the other's commits (a lost
notification costing latency, never a message), one FIFO front, one ListHeads, and each peer
synced by one process at a time, with takeover when it dies.

Measured figures (cross-process delivery delay, counts) are printed: run with `-s`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import grpc
import psycopg
import pytest

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_sdk import HeadsChanged, MsgbusClient, PublishEntry
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.logs import check_log_shape, fetch_log, to_pb

if TYPE_CHECKING:
    from conftest import HubStarter

TOPICS = ("orders", "metrics", "audit")
PUBLISHERS_PER_PROCESS = 8
CALLS_PER_PUBLISHER = 24
"""Publish and PublishBatch calls of each publisher thread, alternating."""
LATENCY_SAMPLES = 40
"""Messages published one at a time per direction, each awaited on the other process."""
LISTENER_KILLS = 4
FIFO_MESSAGES = 12
CHANGED_LOGS = 300
SYNC_INTERVAL_MS = 200
DEVICE_NODE = "acme/dev/d1"
LISTENER_APP = "msgbusd-listener"
"""The application_name of the connection on which a hub process LISTENs for commits."""


@dataclass(frozen=True)
class Acked:
    """One message a process acknowledged: where it went and who took it."""

    topic: str
    head_id: int
    id: str
    payload: bytes
    process: str


@pytest.fixture
def hub(postgres_dsn: str, start_hub: HubStarter) -> tuple[Daemon, Daemon]:
    """Processes A and B of one hub on a fresh database."""
    return start_hub(postgres_dsn, "a"), start_hub(postgres_dsn, "b")


@contextlib.contextmanager
def clients(*daemons: Daemon) -> Iterator[list[MsgbusClient]]:
    """One SDK client per process (the SDK's own failover is not what is tested here)."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(MsgbusClient.connect(d.endpoint, timeout=30)) for d in daemons]


class Follower:
    """A live Subscribe stream on one process, read on a thread: what arrived, and when.

    A raw gRPC stream rather than the SDK's subscription, which would repair a gap by
    reopening the stream and so hide one: here a gap or a repeat is seen as it was sent.
    """

    def __init__(self, daemon: Daemon, topic: str, origin: NodeId) -> None:
        self._channel = grpc.insecure_channel(daemon.endpoint)
        stub = rpc.MsgbusServiceStub(self._channel)
        request = pb.SubscribeRequest(topic=topic, origin=to_pb(origin), from_head_id=1)
        self._call = stub.Subscribe(request)
        self._lock = threading.Lock()
        self._arrived: list[tuple[pb.MessageEnvelope, float]] = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, name=f"follow-{topic}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                now = time.monotonic()
                batch = list(response.messages)
                if response.HasField("message"):
                    batch.insert(0, response.message)
                with self._lock:
                    self._arrived.extend((message, now) for message in batch)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = error

    def arrived(self) -> list[tuple[pb.MessageEnvelope, float]]:
        """Every message delivered so far, with the monotonic time it was read."""
        with self._lock:
            return list(self._arrived)

    def wait_for(self, count: int, what: str) -> list[tuple[pb.MessageEnvelope, float]]:
        """Wait until `count` messages arrived (fails at once if the stream broke)."""

        def enough() -> bool:
            if self.error is not None:
                raise AssertionError(f"the subscription broke: {self.error}")
            return len(self.arrived()) >= count

        wait_until(enough, message=what, timeout=30, interval=0.002)
        return self.arrived()

    def close(self) -> None:
        """Cancel the stream and wait for the reader thread."""
        self._call.cancel()  # type: ignore[no-untyped-call]
        self._thread.join(10)
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def assert_delivered_in_order(
    follower: Follower, published: list[tuple[int, bytes]], where: str
) -> None:
    """The follower got exactly `published` (head_id, payload), in head order, nothing twice."""
    got = [(m.head_id, m.payload) for m, _ in follower.arrived()]
    heads = [head for head, _ in got]
    assert heads == list(range(1, len(heads) + 1)), f"{where}: a gap or a repeat in {heads}"
    assert got == sorted(published), f"{where}: delivered messages differ from the published"


def summary(delays_s: list[float]) -> str:
    """Median, p95 and max of delays in milliseconds."""
    ordered = sorted(delays_s)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"median {statistics.median(ordered) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms over {len(ordered)}"
    )


def test_concurrent_publishers_on_both_processes_get_unique_gap_free_heads(
    hub: tuple[Daemon, Daemon],
) -> None:
    a, b = hub
    acked: list[Acked] = []
    batches: list[list[Acked]] = []
    lock = threading.Lock()
    start = threading.Barrier(2 * PUBLISHERS_PER_PROCESS)

    def publisher(client: MsgbusClient, process: str, index: int) -> None:
        rng = random.Random(index)
        start.wait()
        for call in range(CALLS_PER_PUBLISHER):
            if call % 2:
                topic = rng.choice(TOPICS)
                payload = f"{process}{index}-{call}".encode()
                sent = [client.publish(topic, payload)]
                entries = [(topic, payload)]
            else:
                entries = [
                    (rng.choice(TOPICS), f"{process}{index}-{call}-{n}".encode())
                    for n in range(rng.randint(2, 6))
                ]
                sent = client.publish_batch(PublishEntry(t, p) for t, p in entries)
            got = [Acked(m.topic, m.head_id, m.id, m.payload, process) for m in sent]
            assert [(g.topic, g.payload) for g in got] == entries, "replies out of order"
            with lock:
                acked.extend(got)
                if len(got) > 1:
                    batches.append(got)

    began = time.monotonic()
    with clients(a, b) as (on_a, on_b), ThreadPoolExecutor(2 * PUBLISHERS_PER_PROCESS) as pool:
        futures = [
            pool.submit(publisher, client, process, index)
            for index in range(PUBLISHERS_PER_PROCESS)
            for client, process in ((on_a, "a"), (on_b, "b"))
        ]
        for future in futures:
            future.result()
    elapsed = time.monotonic() - began

    switches = 0
    for topic in TOPICS:
        log = sorted((m for m in acked if m.topic == topic), key=lambda m: m.head_id)
        heads = [m.head_id for m in log]
        assert heads == list(range(1, len(log) + 1)), f"{topic}: heads not unique and gap-free"
        assert {m.process for m in log} == {"a", "b"}, f"{topic}: one process wrote it all"
        switches += sum(1 for x, y in itertools.pairwise(log) if x.process != y.process)
        expected = [(m.head_id, m.id, m.payload) for m in log]
        for daemon in (a, b):
            rows = fetch_log(daemon.stub(), topic, a.node)
            check_log_shape(rows, f"{topic} read on {daemon.endpoint}")
            assert [(r.head_id, r.id, r.payload) for r in rows] == expected, (
                f"{topic} read on {daemon.endpoint} differs from what was acknowledged"
            )
    # A batch is one transaction: its entries of one topic got consecutive heads, whatever the
    # other process committed meanwhile.
    for batch in batches:
        for topic in TOPICS:
            heads = [m.head_id for m in batch if m.topic == topic]
            if heads:
                consecutive = list(range(heads[0], heads[0] + len(heads)))
                assert heads == consecutive, f"batch entries of {topic} got heads {heads}"
    assert len({m.id for m in acked}) == len(acked), "an id was given twice"
    print(
        f"{len(acked)} messages ({len(batches)} batches) from {2 * PUBLISHERS_PER_PROCESS} "
        f"publishers on 2 processes in {elapsed:.2f} s; head order switched process "
        f"{switches} times"
    )


def test_live_subscribers_see_the_other_process_commits_in_order(
    hub: tuple[Daemon, Daemon],
) -> None:
    a, b = hub
    topic = "live"
    published: list[tuple[int, bytes]] = []
    delays: dict[str, list[float]] = {"a->b": [], "b->a": [], "a->a": []}
    with (
        clients(a, b) as (on_a, on_b),
        Follower(a, topic, a.node) as follow_a,
        Follower(b, topic, a.node) as follow_b,
    ):
        # Each message is published, then awaited on the subscribers before the next: its
        # delay is from the publish call to its arrival on the other process's stream.
        for direction, client, local, remote in (
            ("a->b", on_a, follow_a, follow_b),
            ("b->a", on_b, follow_b, follow_a),
        ):
            for n in range(LATENCY_SAMPLES):
                payload = f"{direction}-{n}".encode()
                sent_at = time.monotonic()
                head = client.publish(topic, payload).head_id
                published.append((head, payload))
                arrived = remote.wait_for(len(published), f"{direction} message {n}")
                delays[direction].append(arrived[-1][1] - sent_at)
                local_arrived = local.wait_for(len(published), f"{direction} message {n}")
                if direction == "a->b":
                    delays["a->a"].append(local_arrived[-1][1] - sent_at)
        # Then a burst from both at once, singles and batches: each stream stays in head order.
        lock = threading.Lock()

        def burst(client: MsgbusClient, name: str) -> None:
            for n in range(20):
                if n % 2:
                    sent = [client.publish(topic, f"{name}-burst-{n}".encode())]
                else:
                    sent = client.publish_batch(
                        (topic, f"{name}-burst-{n}-{i}".encode()) for i in range(5)
                    )
                with lock:
                    published.extend((m.head_id, m.payload) for m in sent)

        with ThreadPoolExecutor(4) as pool:
            for future in [
                pool.submit(burst, client, f"{name}{i}")
                for i in range(2)
                for client, name in ((on_a, "a"), (on_b, "b"))
            ]:
                future.result()
        for follower, where in ((follow_a, "on A"), (follow_b, "on B")):
            follower.wait_for(len(published), f"every message {where}")
            assert_delivered_in_order(follower, published, f"the subscriber {where}")
    for direction, samples in delays.items():
        print(f"publish to delivery, {direction}: {summary(samples)}")
    print(f"{len(published)} messages delivered in order on both processes")


def _listener_pids(dsn: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (LISTENER_APP,),
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def _terminate_listeners(dsn: str) -> int:
    """Terminate every hub process's LISTEN connection on this database; how many."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database()",
            (LISTENER_APP,),
        ).fetchall()
    return sum(1 for (done,) in rows if done)


def test_a_lost_notification_costs_latency_not_a_message(
    postgres_dsn: str, hub: tuple[Daemon, Daemon]
) -> None:
    a, b = hub
    topic = "unannounced"
    published: list[tuple[int, bytes]] = []
    delays: list[float] = []
    with clients(a) as (on_a,), Follower(b, topic, a.node) as follow_b:
        for kill in range(LISTENER_KILLS):
            # Both processes listen (A's feed follows B's commits too): wait for both, so that
            # every round cuts B's listener for sure.
            wait_until(
                lambda: len(_listener_pids(postgres_dsn)) == 2,
                message="a listener of each process",
                timeout=30,
            )
            assert _terminate_listeners(postgres_dsn) == 2
            # Published while B listens on nothing: these notifications are lost.
            sent_at = time.monotonic()
            for n in range(10):
                payload = f"unannounced-{kill}-{n}".encode()
                published.append((on_a.publish(topic, payload).head_id, payload))
            arrived = follow_b.wait_for(len(published), f"round {kill} on B")
            delays.append(arrived[-1][1] - sent_at)
        assert_delivered_in_order(follow_b, published, "the subscriber on B")
    stderr = b.stderr_text()
    assert "cannot follow other processes' commits" in stderr, "B's listener was never cut"
    assert "following other processes' commits again" in stderr
    assert "Traceback" not in stderr
    print(
        f"{len(published)} messages after {LISTENER_KILLS} killed listeners; last one of each "
        f"round delivered on B after {summary(delays)}"
    )


def test_fifo_front_only_ack_holds_across_processes(hub: tuple[Daemon, Daemon]) -> None:
    a, b = hub
    queue = "jobs"
    with clients(a, b) as (on_a, on_b):
        enqueued = [
            (on_a if n % 2 else on_b).enqueue_fifo(queue, "jobs", DEVICE_NODE, f"job-{n}".encode())
            for n in range(FIFO_MESSAGES)
        ]
        assert [m.sequence for m in enqueued] == list(range(1, FIFO_MESSAGES + 1))
        start = threading.Barrier(2)

        def ack(client: MsgbusClient, message_id: str) -> bool:
            start.wait()
            return client.ack_fifo(queue, message_id)

        wins: Counter[str] = Counter()
        with ThreadPoolExecutor(2) as pool:
            for n, message in enumerate(enqueued):
                assert on_a.peek_fifo(queue) == message, f"A's front before ack {n}"
                assert on_b.peek_fifo(queue) == message, f"B's front before ack {n}"
                if n + 1 < FIFO_MESSAGES:
                    # Only the front may be acked or rejected, on either process.
                    later = enqueued[n + 1].id
                    for client in (on_a, on_b):
                        assert not client.ack_fifo(queue, later)
                        assert not client.reject_fifo(queue, later)
                        assert not client.ack_fifo(queue, "unknown")
                # Both processes ack the front at the same moment: exactly one succeeds.
                results = [
                    pool.submit(ack, on_a, message.id),
                    pool.submit(ack, on_b, message.id),
                ]
                outcome = [future.result() for future in results]
                assert sorted(outcome) == [False, True], f"ack {n} from both: {outcome}"
                wins["a" if outcome[0] else "b"] += 1
        assert on_a.peek_fifo(queue) is None
        assert on_b.peek_fifo(queue) is None
        # Sequences are never reused, whichever process enqueues next.
        assert on_b.enqueue_fifo(queue, "jobs", DEVICE_NODE, b"last").sequence == (
            FIFO_MESSAGES + 1
        )
    print(f"{FIFO_MESSAGES} fronts acked from both processes at once; winners {dict(wins)}")


def test_list_heads_on_either_process_lists_the_other_process_logs(
    hub: tuple[Daemon, Daemon],
) -> None:
    a, b = hub
    with clients(a, b) as (on_a, on_b):
        for n in range(3):
            on_a.publish("made-on-a", f"{n}".encode())
        for n in range(2):
            on_b.publish("made-on-b", f"{n}".encode())
        expected = {"made-on-a": 3, "made-on-b": 2}
        listings: dict[str, HeadsChanged] = {}
        for name, client in (("A", on_a), ("B", on_b)):
            heads = client.list_heads()
            assert {h.topic: h.head_id for h in heads} == expected, f"ListHeads on {name}"
            paged = list(client.iter_heads(page_size=1))
            assert paged == heads, f"ListHeads on {name}, one head per page"
            listings[name] = client.list_heads_changed(None)
            assert listings[name].full

        # Changes committed through the other process show in each process's cursor.
        on_a.publish("made-on-a", b"3")
        on_a.publish("new-on-a", b"0")
        on_b.publish("made-on-b", b"2")
        changed = {"made-on-a": 4, "new-on-a": 1, "made-on-b": 3}
        for name, client in (("A", on_a), ("B", on_b)):
            seen: dict[str, int] = {}
            cursor = listings[name].cursor

            def caught_up(client: MsgbusClient = client, seen: dict[str, int] = seen) -> bool:
                nonlocal cursor
                answer = client.list_heads_changed(cursor)
                assert not answer.full
                cursor = answer.cursor
                seen.update((h.topic, h.head_id) for h in answer.heads)
                return seen == changed

            wait_until(caught_up, message=f"the changes of both processes on {name}", timeout=30)

            # An idle hub lists nothing (the other process's commits, relayed, do not repeat).
            def idle(client: MsgbusClient = client) -> bool:
                nonlocal cursor
                answer = client.list_heads_changed(cursor)
                cursor = answer.cursor
                return not answer.heads

            wait_until(idle, message=f"an empty change listing on {name}", timeout=30)


def test_a_change_listing_polled_while_the_other_process_commits_misses_no_log(
    hub: tuple[Daemon, Daemon],
) -> None:
    a, b = hub
    topics = [f"polled-{n}" for n in range(CHANGED_LOGS)]
    listed: set[str] = set()
    polls = 0
    with clients(a, b) as (on_a, on_b), ThreadPoolExecutor(1) as pool:
        cursor = on_b.list_heads_changed(None).cursor
        # A new log per publish: each change is relayed into B while B answers the polls.
        publishing = pool.submit(lambda: [on_a.publish(topic, b"x") for topic in topics])

        def all_listed() -> bool:
            nonlocal cursor, polls
            answer = on_b.list_heads_changed(cursor)
            cursor = answer.cursor
            polls += 1
            listed.update(h.topic for h in answer.heads)
            return publishing.done() and listed >= set(topics)

        wait_until(all_listed, message="every log in B's change listings", interval=0)
        publishing.result()
    print(f"{CHANGED_LOGS} logs committed on A, all listed by {polls} polls of B")


def _claim_lines(daemon: Daemon, claim: str) -> list[str]:
    return [line for line in daemon.stderr_text().splitlines() if f"{claim}: " in line]


def test_peer_sync_runs_in_one_process_and_the_other_takes_over_when_it_dies(
    tmp_path: Path, postgres_dsn: str, start_hub: HubStarter
) -> None:
    with Daemon.start(tmp_path / "device", storage="sqlite", node=DEVICE_NODE) as device:
        args = ["--peer", device.endpoint, "--sync-interval-ms", str(SYNC_INTERVAL_MS)]
        a = start_hub(postgres_dsn, "a", extra_args=args)
        b = start_hub(postgres_dsn, "b", extra_args=args)
        claim = f"sync with peer {device.endpoint}"
        topic = "telemetry"
        with MsgbusClient.connect(device.endpoint) as on_device:
            on_device.publish_batch((topic, f"first-{n}".encode()) for n in range(100))

            def hub_holds(daemon: Daemon, count: int) -> bool:
                return len(fetch_log(daemon.stub(), topic, device.node)) >= count

            for daemon in (a, b):
                wait_until(functools.partial(hub_holds, daemon, 100), message="the messages")
            # Each process logs its first answer to the claim: one runs it, the other does not.
            wait_until(
                lambda: all(_claim_lines(d, claim) for d in (a, b)),
                message="both processes' claim answers",
            )
            runs = [d for d in (a, b) if any("runs it now" in x for x in _claim_lines(d, claim))]
            assert len(runs) == 1, f"{claim} ran in {len(runs)} processes"
            holder = runs[0]
            other = b if holder is a else a
            assert any("another process runs it" in x for x in _claim_lines(other, claim))

            holder.kill()
            on_device.publish_batch((topic, f"second-{n}".encode()) for n in range(100))
            wait_until(
                lambda: any("runs it now" in x for x in _claim_lines(other, claim)),
                message="the surviving process taking the peer over",
            )
            wait_until(lambda: hub_holds(other, 200), message="the device's later messages")
            source = fetch_log(device.stub(), topic, device.node)
            synced = fetch_log(other.stub(), topic, device.node)
            check_log_shape(synced, "the device's log on the hub")
            assert [(m.head_id, m.id, m.payload) for m in synced] == [
                (m.head_id, m.id, m.payload) for m in source
            ], "the hub's copy differs from the device's log"
            assert len(synced) == 200
    for line in _claim_lines(a, claim) + _claim_lines(b, claim):
        print(line)
