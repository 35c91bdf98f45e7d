"""Faults of a hub of two msgbusd processes on one PostgreSQL database (issue 16).

Every test here runs its own private PostgreSQL server (`postgres_server_factory`), since it
stops, kills or restarts it, or needs it down:

- PostgreSQL restarts (a fast shutdown, and a crash with recovery) under two serving hub
  processes: they answer NOT_SERVING meanwhile (Health, Ready and grpc.health.v1), refuse writes
  with UNAVAILABLE, serve again on their own once the server is back, follow each other's
  commits again, and lose nothing they acknowledged.
- A crash that makes PostgreSQL hand transaction ids out again (they order the processes'
  view of each other's commits) leaves no commit unseen by the other process.
- The crash rounds of `tests/reliability`, on two processes over one database: 16 publishers
  spread over both, one process SIGKILLed mid-run, the publishers failing over to the other;
  every acknowledged message is there with its head and payload, no gap, nothing twice.
- A hub process started while its database is down fails with one line naming the store.

Measured figures (outage timings, rounds, counts) are printed: run with `-s`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from msgbus_core import NodeId
from msgbus_proto import SERVICE_NAME, pb, rpc
from msgbus_sdk import MsgbusClient
from msgbus_server.testing import Daemon, free_port, run_msgbusd, wait_until
from msgbus_testkit.calls import rpc_error, status_of
from msgbus_testkit.logs import check_log_shape, fetch_log, to_pb

if TYPE_CHECKING:
    from conftest import HubStarter
    from msgbus_testkit.postgres import PostgresServerFactory

CRASH_ROUNDS = 4
"""Rounds of the SIGKILL test; the killed process alternates, so each is killed twice."""
PUBLISHERS = 16
"""Publishers of a crash round, half starting on each process."""
CRASH_TOPICS = tuple(f"crash-{i}" for i in range(4))
ACKS_BEFORE_KILL = 200
"""Publishes acknowledged in a round before the random moment of the kill is drawn."""
ACKS_AFTER_KILL = 5
"""Publishes each publisher must get acknowledged after the kill: every one failed over."""
CALL_TIMEOUT_S = 10.0
FAILOVER_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
"""What a call to a process that died answers: the outcome of that call is unknown."""
OUTAGE_TIMEOUT_S = 60.0
"""How long the hub may take to notice the database is down, or back (CI boxes are slow)."""
OUTAGE_PUBLISHES = 20
"""Publishes each background publisher gets acknowledged before PostgreSQL goes down."""


# --- Health, as every interface of a process reports it --------------------------------------


def serving_states(daemon: Daemon) -> dict[str, bool]:
    """Whether Health, Ready and grpc.health.v1 (server and service) say SERVING."""
    channel = daemon.channel()
    stub = rpc.MsgbusServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    states = {
        "Health": stub.Health(pb.HealthRequest(), timeout=10).status == "SERVING",
        "Ready": stub.Ready(pb.ReadyRequest(), timeout=10).ready,
    }
    for service in ("", SERVICE_NAME):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        states[f"grpc.health.v1 {service!r}"] = (
            reply.status == health_pb2.HealthCheckResponse.SERVING
        )
    return states


def wait_serving(daemons: tuple[Daemon, ...], serving: bool, what: str) -> float:
    """Wait until every interface of every daemon says `serving`; the seconds it took."""
    began = time.monotonic()

    def settled(daemon: Daemon) -> bool:
        states = serving_states(daemon).values()
        return all(states) if serving else not any(states)

    wait_until(
        lambda: all(settled(d) for d in daemons),
        message=what,
        timeout=OUTAGE_TIMEOUT_S,
        interval=0.1,
    )
    return time.monotonic() - began


# --- What the hub acknowledged ---------------------------------------------------------------


@dataclass
class Ledger:
    """Every publish the hub acknowledged, and those whose outcome is unknown."""

    acked: dict[str, dict[int, tuple[str, bytes]]] = field(default_factory=dict)
    """topic -> head_id -> (id, payload)."""
    maybe: set[bytes] = field(default_factory=set)
    """Payloads of calls that failed in flight: stored or not, never half-stored."""
    maybe_stored: int = 0
    """How many of those the last `check` found stored."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, messages: list[pb.MessageEnvelope]) -> None:
        """Note acknowledged messages; a head acknowledged twice fails the test."""
        with self.lock:
            for m in messages:
                log = self.acked.setdefault(m.topic, {})
                assert m.head_id not in log, f"head {m.head_id} of {m.topic} acknowledged twice"
                log[m.head_id] = (m.id, m.payload)

    def count(self) -> int:
        """How many publishes were acknowledged."""
        return sum(len(log) for log in self.acked.values())

    def check(self, daemons: tuple[Daemon, ...], origin: NodeId, topics: tuple[str, ...]) -> int:
        """Hold every process's logs to the ledger; returns how many messages were checked.

        Each log reads the same on every process, with heads 1..n and no id twice; every
        acknowledged message is at its head with its id and payload; every other message is
        one whose publish failed in flight; no publish is stored twice.
        """
        ids = [i for log in self.acked.values() for i, _ in log.values()]
        assert len(set(ids)) == len(ids), "an id was acknowledged twice"
        checked = 0
        self.maybe_stored = 0
        for topic in topics:
            reads = [fetch_log(d.stub(), topic, origin) for d in daemons]
            rows = reads[0]
            for daemon, other in zip(daemons[1:], reads[1:], strict=True):
                assert other == rows, f"{topic} reads differently on {daemon.endpoint}"
            check_log_shape(rows, topic)
            payloads = [r.payload for r in rows]
            assert len(set(payloads)) == len(payloads), f"{topic}: a publish stored twice"
            acked = self.acked.get(topic, {})
            assert len(rows) >= max(acked, default=0), f"{topic}: acknowledged heads missing"
            for row in rows:
                expected = acked.get(row.head_id)
                where = f"{topic} head {row.head_id}"
                if expected is None:
                    assert row.payload in self.maybe, f"{where}: a message nobody published"
                    self.maybe_stored += 1
                else:
                    assert (row.id, row.payload) == expected, f"{where}: not what was acked"
                checked += 1
        return checked


# --- PostgreSQL restarts ---------------------------------------------------------------------


def _publish_until_refused(
    daemon: Daemon, topic: str, ledger: Ledger, refused: list[grpc.StatusCode]
) -> Callable[[], None]:
    """A publisher that publishes until its first error, whose code it notes in `refused`."""

    def run() -> None:
        stub = daemon.stub()
        for n in range(1_000_000):
            payload = f"{daemon.port}-{n}".encode()
            try:
                reply = stub.Publish(
                    pb.PublishRequest(topic=topic, payload=payload), timeout=CALL_TIMEOUT_S
                )
            except grpc.RpcError as error:
                with ledger.lock:
                    ledger.maybe.add(payload)
                refused.append(status_of(error))
                return
            ledger.record([reply.message])

    return run


def wait_listed(
    client: MsgbusClient, cursor: str | None, message: pb.MessageEnvelope, what: str
) -> None:
    """Wait until the client's change listings after `cursor` show `message`'s log at its head."""
    position = cursor

    def listed() -> bool:
        nonlocal position
        answer = client.list_heads_changed(position)
        position = answer.cursor
        return any(h.topic == message.topic and h.head_id >= message.head_id for h in answer.heads)

    wait_until(listed, message=f"{what} in the change listing", timeout=OUTAGE_TIMEOUT_S)


def _refusal(
    stub: rpc.MsgbusServiceStub, call: Callable[[rpc.MsgbusServiceStub], object]
) -> grpc.StatusCode:
    """The status code of a call that must fail."""
    return status_of(rpc_error(functools.partial(call, stub)))


@pytest.mark.parametrize("outage", ["restart", "crash"])
def test_a_postgres_outage_is_not_serving_then_the_hub_serves_again_with_everything(
    outage: str, postgres_server_factory: PostgresServerFactory, start_hub: HubStarter
) -> None:
    server = postgres_server_factory()
    dsn = server.create_database()
    hub = (start_hub(dsn, "a"), start_hub(dsn, "b"))
    origin = hub[0].node
    topic = "kept"
    ledger = Ledger()
    refused: list[grpc.StatusCode] = []
    # One publisher per process keeps publishing until PostgreSQL goes away under it.
    publishers = [
        threading.Thread(target=_publish_until_refused(d, topic, ledger, refused), daemon=True)
        for d in hub
    ]
    for thread in publishers:
        thread.start()
    try:
        wait_until(
            lambda: ledger.count() >= 2 * OUTAGE_PUBLISHES,
            message="publishes before the outage",
            timeout=OUTAGE_TIMEOUT_S,
        )
    finally:
        if outage == "restart":
            server.stop()  # fast shutdown: sessions are cut, a checkpoint written
        else:
            server.kill()  # SIGKILL of every postgres process: the next start recovers
        down_at = time.monotonic()
        for thread in publishers:
            thread.join(OUTAGE_TIMEOUT_S)
    assert refused == [grpc.StatusCode.UNAVAILABLE] * 2, f"publishes in flight got {refused}"
    acked_before = ledger.count()

    wait_serving(hub, False, "NOT_SERVING everywhere while PostgreSQL is down")
    not_serving_s = time.monotonic() - down_at
    refused_calls: dict[str, Callable[[rpc.MsgbusServiceStub], object]] = {
        "Publish": lambda s: s.Publish(
            pb.PublishRequest(topic=topic, payload=b"refused"), timeout=CALL_TIMEOUT_S
        ),
        "PublishBatch": lambda s: s.PublishBatch(
            pb.PublishBatchRequest(entries=[pb.PublishRequest(topic=topic, payload=b"no")]),
            timeout=CALL_TIMEOUT_S,
        ),
        "EnqueueFifo": lambda s: s.EnqueueFifo(
            pb.EnqueueFifoRequest(queue="q", topic="jobs", target=to_pb(origin)),
            timeout=CALL_TIMEOUT_S,
        ),
        # Reads cannot be served either, and say so the same way.
        "GetHead": lambda s: s.GetHead(
            pb.GetHeadRequest(topic=topic, origin=to_pb(origin)), timeout=CALL_TIMEOUT_S
        ),
        "Fetch": lambda s: s.Fetch(
            pb.FetchRequest(topic=topic, origin=to_pb(origin), from_head_id=1, limit=10),
            timeout=CALL_TIMEOUT_S,
        ),
    }
    # All at once: a read waits for a reader connection (5 s) before it gives up.
    with ThreadPoolExecutor(len(hub) * len(refused_calls)) as pool:
        answers = {
            (daemon.endpoint, name): pool.submit(_refusal, daemon.stub(), call)
            for daemon in hub
            for name, call in refused_calls.items()
        }
        for (endpoint, name), answer in answers.items():
            code = answer.result()
            assert code == grpc.StatusCode.UNAVAILABLE, f"{name} on {endpoint}: {code}"

    server.start()
    up_at = time.monotonic()
    serving_again_s = wait_serving(hub, True, "SERVING everywhere with PostgreSQL back")
    for daemon in hub:
        reply = daemon.stub().Publish(
            pb.PublishRequest(topic=topic, payload=f"after-{daemon.port}".encode()), timeout=30
        )
        ledger.record([reply.message])
    # Each process follows the other's commits again: its change listing shows them.
    for reader, writer in (hub, hub[::-1]):
        with MsgbusClient.connect(reader.endpoint) as on_reader:
            cursor = on_reader.list_heads_changed(None).cursor
            reply = writer.stub().Publish(
                pb.PublishRequest(topic=topic, payload=f"via-{writer.port}".encode()), timeout=30
            )
            ledger.record([reply.message])
            wait_listed(on_reader, cursor, reply.message, f"{writer.endpoint}'s commit")
    # The refused writes are in no ledger: one that was stored fails the check.
    checked = ledger.check(hub, origin, (topic,))
    for daemon in hub:
        assert daemon.poll() is None, "a daemon exited during the outage"
        assert "Traceback" not in daemon.stderr_text()
    print(
        f"{outage}: {acked_before} publishes acknowledged before; NOT_SERVING everywhere "
        f"{not_serving_s:.2f} s after the outage began; SERVING again "
        f"{serving_again_s:.2f} s after PostgreSQL answered (after {up_at - down_at:.2f} s down); "
        f"{checked} messages checked on both processes"
    )


# --- Transaction ids that a crash hands out again ---------------------------------------------

LOSSY_SETTINGS = {"synchronous_commit": "off", "wal_writer_delay": "10s"}
"""Commits that are not flushed for 10 s: a crash within that time loses them."""


def test_a_process_follows_the_other_after_a_crash_handed_transaction_ids_out_again(
    postgres_server_factory: PostgresServerFactory, start_hub: HubStarter
) -> None:
    # A crash loses the transactions whose WAL was not flushed, and PostgreSQL then hands
    # their ids out again, below where the other processes have followed the commits. An
    # aborted transaction is never flushed at once, so any crash shortly after one does it;
    # with asynchronous commits (synchronous_commit off, an operator's choice) it is certain,
    # which makes it reproducible. B is paused across the crash (a stalled machine, a long GC
    # pause), so A's first commit after it lands before B reads the store again.
    server = postgres_server_factory(settings=LOSSY_SETTINGS)
    dsn = server.create_database()
    a, b = start_hub(dsn, "a"), start_hub(dsn, "b")
    with server.connect() as conn:
        conn.execute("CHECKPOINT")  # the schema is kept: only what follows is lost
    with MsgbusClient.connect(b.endpoint) as on_b:
        # Two commits on A, each followed by B: B has read past the first one's id.
        for n in range(2):
            cursor = on_b.list_heads_changed(None).cursor
            reply = a.stub().Publish(pb.PublishRequest(topic="lost", payload=b"%d" % n))
            wait_listed(on_b, cursor, reply.message, f"lost commit {n}")
        cursor = on_b.list_heads_changed(None).cursor
        b.signal(signal.SIGSTOP)
        try:
            server.kill()  # within 10 s: neither commit was flushed
            server.start()
            stub = a.stub()
            reply = wait_until(
                lambda: stub.Publish(pb.PublishRequest(topic="after", payload=b"new"), timeout=10),
                message="a publish on A after the crash",
                timeout=OUTAGE_TIMEOUT_S,
            )
        finally:
            b.signal(signal.SIGCONT)
        wait_listed(on_b, cursor, reply.message, "A's first commit after the crash")
        # What makes this test able to fail: the crash did lose both commits.
        kept = [h.topic for h in on_b.list_heads()]
        assert kept == ["after"], f"the crash lost no commit (flushed within 10 s?): {kept}"


# --- A hub process SIGKILLed under load ------------------------------------------------------


@dataclass
class CrashRound:
    """What one round of the SIGKILL test counted."""

    acked_before_kill: int = 0
    acked_after_kill: int = 0
    failovers: int = 0
    """Publishers that switched to the other process after an error."""
    unexpected_errors: list[grpc.StatusCode] = field(default_factory=list)
    """Failed calls to the surviving process, or to the victim before its kill."""


async def _crash_round(
    hub: tuple[Daemon, Daemon], victim: int, number: int, ledger: Ledger, rng: random.Random
) -> CrashRound:
    """Load both processes, SIGKILL `hub[victim]` at a random moment, fail over, stop."""
    counts = CrashRound()
    channels = [daemon.aio_channel() for daemon in hub]
    stubs = [rpc.MsgbusServiceStub(channel) for channel in channels]
    killing = asyncio.Event()
    killed = asyncio.Event()
    stop = asyncio.Event()
    after_kill = [0] * PUBLISHERS

    async def publisher(index: int) -> None:
        side = index % 2
        topic_rng = random.Random(f"{number}-{index}")
        for n in range(1_000_000_000):
            if stop.is_set():
                return
            # Mostly single publishes, every fifth a batch: both are one transaction.
            entries = [
                pb.PublishRequest(
                    topic=topic_rng.choice(CRASH_TOPICS),
                    payload=f"r{number}-p{index}-{n}-{i}".encode(),
                )
                for i in range(3 if n % 5 == 4 else 1)
            ]
            stub = stubs[side]
            try:
                if len(entries) == 1:
                    messages = [(await stub.Publish(entries[0], timeout=CALL_TIMEOUT_S)).message]
                else:
                    request = pb.PublishBatchRequest(entries=entries)
                    messages = list(
                        (await stub.PublishBatch(request, timeout=CALL_TIMEOUT_S)).messages
                    )
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code not in FAILOVER_CODES:
                    raise
                if side != victim or not killing.is_set():
                    counts.unexpected_errors.append(code)
                with ledger.lock:
                    ledger.maybe.update(e.payload for e in entries)
                # The outcome is unknown: go on with a new publish on the other process, never
                # a resend of this one (which could store it twice).
                side = 1 - side
                counts.failovers += 1
                continue
            assert [(m.topic, m.payload) for m in messages] == [
                (e.topic, e.payload) for e in entries
            ], "the reply is not our messages"
            ledger.record(messages)
            if killed.is_set():
                counts.acked_after_kill += len(messages)
                after_kill[index] += 1
            else:
                counts.acked_before_kill += len(messages)

    tasks = [asyncio.create_task(publisher(i)) for i in range(PUBLISHERS)]

    async def watched(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + OUTAGE_TIMEOUT_S
        while not condition():
            for task in tasks:
                if task.done():
                    task.result()  # a publisher failed: raise its error
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    try:
        await watched(lambda: counts.acked_before_kill >= ACKS_BEFORE_KILL, "publishes")
        # The random moment of the crash, not a wait for a condition.
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        killing.set()
        await asyncio.to_thread(hub[victim].kill)
        killed.set()
        await watched(lambda: min(after_kill) >= ACKS_AFTER_KILL, "every publisher failing over")
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close(None)
    return counts


def test_a_hub_process_sigkilled_under_load_loses_no_acknowledged_message(
    postgres_server_factory: PostgresServerFactory, start_hub: HubStarter
) -> None:
    seed = int(os.environ.get("MSGBUS_CRASH_SEED", random.randrange(2**32)))
    print(f"seed {seed} (set MSGBUS_CRASH_SEED to replay the kill moments)")
    rng = random.Random(seed)
    server = postgres_server_factory()
    dsn = server.create_database()
    hub = (start_hub(dsn, "a"), start_hub(dsn, "b"))
    origin = hub[0].node
    ledger = Ledger()
    began = time.monotonic()
    for number in range(CRASH_ROUNDS):
        victim = number % 2
        try:
            counts = asyncio.run(_crash_round(hub, victim, number, ledger, rng))
        except AssertionError as error:
            raise AssertionError(f"seed {seed}, round {number}: {error}") from error
        assert not counts.unexpected_errors, (
            f"seed {seed}, round {number}: calls failed on a live process: "
            f"{counts.unexpected_errors}"
        )
        assert counts.failovers >= PUBLISHERS // 2, "publishers on the killed process went on"
        hub[victim].restart()
        wait_serving(hub, True, "both processes serving after the restart")
        checked = ledger.check(hub, origin, CRASH_TOPICS)
        print(
            f"round {number}: killed {'AB'[victim]}; acknowledged {counts.acked_before_kill} "
            f"before and {counts.acked_after_kill} after the kill; {counts.failovers} "
            f"failovers; {len(ledger.maybe)} unknown outcomes so far ({ledger.maybe_stored} "
            f"stored); {checked} messages checked on both processes"
        )
    for daemon in hub:
        assert "Traceback" not in daemon.stderr_text()
    print(
        f"{CRASH_ROUNDS} rounds, {ledger.count()} acknowledged messages, "
        f"{time.monotonic() - began:.1f} s"
    )


# --- A database that is down at startup ------------------------------------------------------


def test_a_hub_process_started_while_its_database_is_down_fails_with_one_line(
    postgres_server_factory: PostgresServerFactory,
) -> None:
    server = postgres_server_factory()
    dsn = server.create_database("hub")
    server.stop()
    # A password in the connection string must not show in the error.
    with_password = dsn.replace("postgres@", "postgres:s3cret@")
    result = run_msgbusd(
        [
            "--storage",
            "postgres",
            "--data",
            with_password,
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--tenant-id",
            "acme",
            "--bl-name",
            "hub",
            "--device-id",
            "h1",
        ]
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert "postgres store" in lines[0], lines[0]
    assert f"127.0.0.1:{server.port}/hub" in lines[0], lines[0]
    assert "s3cret" not in result.stderr
    print(lines[0])
