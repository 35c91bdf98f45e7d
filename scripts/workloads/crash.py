"""Crash rounds: load a real msgbusd, SIGKILL it at a random moment, restart it, check everything.

Shared by `tests/reliability/test_crash.py` (a bounded number of rounds in the suite) and
`scripts/crash_soak.py` (as many rounds as you like). One `CrashLedger` remembers, across rounds,
what the daemon acknowledged and what was still in flight when it died; `restart_and_check`
holds the restarted daemon to it.

The load of one round, all on one asyncio loop over its own channels:
- 16 publishers on 4 topics, with unique payloads and headers;
- a FIFO queue (one per round) fed by 2 enqueuers and drained by a peek/ack consumer;
- a deleter that keeps deleting a few already acknowledged heads of one topic;
- a peer daemon that keeps receiving publishes, which the daemon under test syncs in.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until
from workloads.logs import check_log_shape, fetch_log

PUBLISHERS = 16
TOPICS = tuple(f"crash-{i}" for i in range(4))
DELETE_TOPIC_NAME = TOPICS[0]
PEER_TOPIC = "from-peer"
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Published:
    """What the daemon answered for one acknowledged publish."""

    id: str
    payload: bytes
    headers: tuple[tuple[str, str], ...]


@dataclass
class CrashLedger:
    """Everything the daemon acknowledged, and everything it might or might not have kept."""

    acked: dict[str, dict[int, Published]] = field(default_factory=dict)
    maybe_payloads: set[bytes] = field(default_factory=set)
    """Publishes in flight at the kill: stored or not, never half-stored."""
    deletes: list[tuple[str, int, int]] = field(default_factory=list)
    maybe_deletes: list[tuple[str, int, int]] = field(default_factory=list)
    rounds: int = 0
    startup_s: list[float] = field(default_factory=list)
    """Process start to the first SERVING Health answer, per restart."""
    startup_ms_reported: list[int] = field(default_factory=list)
    """The daemon's own figure (store open and recovery to serving), per restart."""
    messages_checked: int = 0
    fifo_checked: int = 0
    peer_rows_checked: int = 0

    def sent_payloads(self) -> set[bytes]:
        acked = {p.payload for log in self.acked.values() for p in log.values()}
        return acked | self.maybe_payloads

    def summary(self) -> str:
        startup = self.startup_s or [0.0]
        return (
            f"rounds={self.rounds} messages_checked={self.messages_checked} "
            f"fifo_checked={self.fifo_checked} peer_rows_checked={self.peer_rows_checked} "
            f"startup_to_health_s median={statistics.median(startup):.3f} "
            f"max={max(startup):.3f} daemon_reported_startup_ms max="
            f"{max(self.startup_ms_reported, default=0)}"
        )


@dataclass
class FifoRound:
    queue: str
    enqueued: list[tuple[str, bytes]] = field(default_factory=list)
    """(id, payload) of acknowledged enqueues, in acknowledgement order."""
    maybe_enqueued: set[bytes] = field(default_factory=set)
    acked_ids: set[str] = field(default_factory=set)
    maybe_acked_ids: set[str] = field(default_factory=set)


async def _until_broken(call: Callable[[], Awaitable[bool]]) -> None:
    """Run `call` until it returns False (the daemon died under it)."""
    while await call():
        pass


async def run_round(
    daemon: Daemon,
    peer: Daemon,
    ledger: CrashLedger,
    rng: random.Random,
    *,
    min_kill_s: float = 0.3,
    max_kill_s: float = 1.5,
) -> FifoRound:
    """Load the daemon and SIGKILL it after a random delay; returns the round's FIFO record."""
    number = ledger.rounds
    fifo = FifoRound(queue=f"jobs-{number}")
    target = pb.NodeId(tenant_id="t", bl_name="b", device_id="worker")
    first_ack = asyncio.Event()
    channels = [daemon.aio_channel() for _ in range(4)]
    peer_channel = peer.aio_channel()
    stubs = [rpc.MsgbusServiceStub(c) for c in channels]

    def publisher(index: int) -> Callable[[], Awaitable[bool]]:
        stub = stubs[index % len(stubs)]
        topic = TOPICS[index % len(TOPICS)]
        counter = iter(range(1_000_000_000))

        async def once() -> bool:
            n = next(counter)
            payload = f"r{number}-p{index}-{n}".encode()
            headers = {"p": str(index), "n": str(n)}
            try:
                reply = await stub.Publish(
                    pb.PublishRequest(topic=topic, payload=payload, headers=headers),
                    timeout=CALL_TIMEOUT_S,
                )
            except grpc.RpcError:
                ledger.maybe_payloads.add(payload)
                return False
            m = reply.message
            assert (m.topic, m.payload) == (topic, payload), "the reply is not our message"
            log = ledger.acked.setdefault(topic, {})
            assert m.head_id not in log, f"head {m.head_id} of {topic} acknowledged twice"
            log[m.head_id] = Published(m.id, payload, tuple(sorted(headers.items())))
            first_ack.set()
            return True

        return once

    def enqueuer(index: int) -> Callable[[], Awaitable[bool]]:
        stub = stubs[index]
        counter = iter(range(1_000_000_000))

        async def once() -> bool:
            payload = f"r{number}-e{index}-{next(counter)}".encode()
            request = pb.EnqueueFifoRequest(
                queue=fifo.queue, topic="jobs", target=target, payload=payload
            )
            try:
                reply = await stub.EnqueueFifo(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError:
                fifo.maybe_enqueued.add(payload)
                return False
            fifo.enqueued.append((reply.message.id, payload))
            return True

        return once

    async def consume() -> bool:
        stub = stubs[2]
        try:
            front = await stub.PeekFifo(pb.PeekFifoRequest(queue=fifo.queue), timeout=5)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code == grpc.StatusCode.NOT_FOUND
        message_id = front.message.id
        try:
            reply = await stub.AckFifo(
                pb.AckFifoRequest(queue=fifo.queue, message_id=message_id), timeout=5
            )
        except grpc.RpcError:
            fifo.maybe_acked_ids.add(message_id)
            return False
        assert reply.accepted, "the only consumer failed to ack the front it just peeked"
        fifo.acked_ids.add(message_id)
        return True

    async def delete() -> bool:
        log = ledger.acked.get(DELETE_TOPIC_NAME, {})
        top = max(log, default=0)
        if top < 10:
            await first_ack.wait()
            await asyncio.sleep(0)  # let publishers run; this is a yield, not a wait
            return True
        start = rng.randint(max(top - 30, 1), top - 3)
        span = (DELETE_TOPIC_NAME, start, start + 2)
        request = pb.DeleteRangeRequest(
            topic=DELETE_TOPIC_NAME, from_head_id=span[1], to_head_id=span[2]
        )
        try:
            await stubs[3].DeleteRange(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError:
            ledger.maybe_deletes.append(span)
            return False
        ledger.deletes.append(span)
        return True

    peer_stub = rpc.MsgbusServiceStub(peer_channel)
    peer_counter = iter(range(1_000_000_000))

    async def publish_on_peer() -> bool:
        # The peer is not killed: this keeps the sync of the daemon under test busy.
        n = next(peer_counter)
        request = pb.PublishBatchRequest(
            entries=[
                pb.PublishRequest(topic=PEER_TOPIC, payload=f"r{number}-x{n}-{i}".encode())
                for i in range(20)
            ]
        )
        await peer_stub.PublishBatch(request, timeout=CALL_TIMEOUT_S)
        return True

    async def kill_later() -> float:
        await asyncio.wait_for(first_ack.wait(), 60)
        delay = rng.uniform(min_kill_s, max_kill_s)
        await asyncio.sleep(delay)  # the random moment of the crash, not a wait for a condition
        await asyncio.to_thread(daemon.kill)
        return delay

    workers = [asyncio.create_task(_until_broken(publisher(i))) for i in range(PUBLISHERS)]
    workers += [asyncio.create_task(_until_broken(enqueuer(i))) for i in range(2)]
    workers += [asyncio.create_task(_until_broken(consume))]
    workers += [asyncio.create_task(_until_broken(delete))]
    feeder = asyncio.create_task(_until_broken(publish_on_peer))
    try:
        await kill_later()
        await asyncio.wait_for(asyncio.gather(*workers), 60)
    finally:
        feeder.cancel()
        for task in workers:
            task.cancel()
        await asyncio.gather(feeder, *workers, return_exceptions=True)
        for channel in [*channels, peer_channel]:
            await channel.close(None)
    ledger.rounds += 1
    return fifo


def restart_and_check(daemon: Daemon, peer: Daemon, ledger: CrashLedger, fifo: FifoRound) -> None:
    """Restart the killed daemon and hold it to everything the ledger says."""
    daemon.restart()
    ledger.startup_s.append(daemon.startup_s)
    ledger.startup_ms_reported.append(daemon.reported_startup_ms())
    stub = daemon.stub()
    _check_logs(stub, ledger)
    _check_fifo(stub, fifo, ledger)
    _check_sync(stub, peer, ledger)


def _check_logs(stub: rpc.MsgbusServiceStub, ledger: CrashLedger) -> None:
    sent = ledger.sent_payloads()
    deleted_for_sure = {
        (topic, head) for topic, start, end in ledger.deletes for head in range(start, end + 1)
    }
    maybe_deleted = deleted_for_sure | {
        (topic, head)
        for topic, start, end in ledger.maybe_deletes
        for head in range(start, end + 1)
    }
    for topic in TOPICS:
        rows = fetch_log(stub, topic)
        check_log_shape(rows, topic)
        acked = ledger.acked.get(topic, {})
        assert len(rows) >= max(acked, default=0), f"{topic}: acknowledged heads are missing"
        for row in rows:
            ledger.messages_checked += 1
            expected = acked.get(row.head_id)
            where = f"{topic} head {row.head_id}"
            if expected is not None:
                assert row.id == expected.id, f"{where}: id changed"
            if (topic, row.head_id) in deleted_for_sure:
                assert row.deleted, f"{where}: an acknowledged delete was lost"
            if row.deleted:
                assert (topic, row.head_id) in maybe_deleted, f"{where}: deleted by nobody"
                continue
            if expected is not None:
                assert row.payload == expected.payload, f"{where}: payload changed"
                assert tuple(sorted(row.headers.items())) == expected.headers, where
            else:
                assert row.payload in sent, f"{where}: a message nobody published"
    markers = fetch_log(stub, "$msgbus.delete")
    check_log_shape(markers, "delete markers")
    assert len(ledger.deletes) <= len(markers) <= len(ledger.deletes) + len(ledger.maybe_deletes)


def _check_fifo(stub: rpc.MsgbusServiceStub, fifo: FifoRound, ledger: CrashLedger) -> None:
    """Drain the round's queue: what was acknowledged and not acked is there, in order."""
    drained: list[pb.FifoMessage] = []
    while True:
        try:
            front = stub.PeekFifo(pb.PeekFifoRequest(queue=fifo.queue), timeout=10).message
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            break
        drained.append(front)
        ack = pb.AckFifoRequest(queue=fifo.queue, message_id=front.id)
        assert stub.AckFifo(ack, timeout=10).accepted
    ids = [m.id for m in drained]
    assert len(set(ids)) == len(ids), "a FIFO message came back twice"
    sequences = [m.sequence for m in drained]
    assert sequences == sorted(sequences), "the queue lost its order"
    assert not set(ids) & fifo.acked_ids, "an acked FIFO message came back"
    known = {payload for _, payload in fifo.enqueued} | fifo.maybe_enqueued
    assert all(m.payload in known for m in drained), "a FIFO message nobody enqueued"
    gone = fifo.acked_ids | fifo.maybe_acked_ids
    must_remain = [i for i, _ in fifo.enqueued if i not in gone]
    assert set(must_remain) <= set(ids), "an acknowledged FIFO enqueue was lost"
    ledger.fifo_checked += len(fifo.enqueued)


def _check_sync(stub: rpc.MsgbusServiceStub, peer: Daemon, ledger: CrashLedger) -> None:
    states = stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=10).states
    # Written before the first round (see crash_rounds), so it must survive every kill.
    assert any(s.peer == peer.endpoint and s.topic for s in states), "the sync state was lost"
    peer_node = peer.node
    local = fetch_log(stub, PEER_TOPIC, peer_node)
    check_log_shape(local, "the log synced from the peer")
    remote = fetch_log(peer.stub(), PEER_TOPIC, peer_node)
    assert local == remote[: len(local)], "the synced log differs from the peer's"
    ledger.peer_rows_checked += len(local)


def wait_for_sync_state(stub: rpc.MsgbusServiceStub, peer: Daemon) -> None:
    """Wait until the daemon has recorded syncing a log from the peer."""

    def recorded() -> bool:
        states = stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=10).states
        return any(s.peer == peer.endpoint and s.topic == PEER_TOPIC for s in states)

    wait_until(recorded, message="the first sync state record")


def crash_rounds(daemon: Daemon, peer: Daemon, rounds: int, seed: int) -> CrashLedger:
    """Run `rounds` kill/restart/check rounds; returns the ledger with the figures."""
    rng = random.Random(seed)
    ledger = CrashLedger()
    wait_for_sync_state(daemon.stub(), peer)
    for _ in range(rounds):
        fifo = asyncio.run(run_round(daemon, peer, ledger, rng))
        restart_and_check(daemon, peer, ledger, fifo)
    return ledger


def seed_peer(peer: Daemon, count: int) -> None:
    """Give the peer a backlog, so that the daemon under test is mid-sync when it dies."""
    stub = peer.stub()
    for start in range(0, count, 1000):
        entries = [
            pb.PublishRequest(topic=PEER_TOPIC, payload=f"seed-{i}".encode())
            for i in range(start, min(start + 1000, count))
        ]
        stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)


__all__ = [
    "CrashLedger",
    "crash_rounds",
    "restart_and_check",
    "run_round",
    "seed_peer",
    "wait_for_sync_state",
]
