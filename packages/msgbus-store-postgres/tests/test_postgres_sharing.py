"""Several PostgresStore instances on one database: what lets msgbusd processes share it.

Each store here stands for one msgbusd process (its own writer, readers, listener and claims
connections), on a real PostgreSQL server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from msgbus_core.errors import StorageError
from msgbus_core.fifo_leases import AckLeaseOp, LeaseOp, RejectLeaseOp, RejectLeaseResult
from msgbus_core.model import Message, NodeId, TopicHead
from msgbus_core.ops import AckOp, AppendOp, EnqueueOp, ReplicateOp, ReplicateResult
from msgbus_core.testing import LOCAL, REMOTE, TARGET, remote_message, snapshot
from msgbus_server.testing import wait_until
from msgbus_store_postgres import PostgresStore, display_dsn
from msgbus_testkit.postgres import PostgresServerFactory


@pytest.fixture
def open_store(postgres_dsn: str) -> Iterator[Callable[[], PostgresStore]]:
    """Opens stores on one database, as separate processes would, closed after the test."""
    stores: list[PostgresStore] = []

    def open_one() -> PostgresStore:
        store = PostgresStore.open(postgres_dsn)
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        store.close()


def _append(topic: str, n: int, origin: NodeId = LOCAL) -> AppendOp:
    return AppendOp(topic, origin, b"p%d" % n, {}, f"{topic}-{n}", n)


def _all_changes(
    store: PostgresStore, cursor: object, limit: int = 1_000
) -> tuple[set[tuple[str, NodeId, int]], object]:
    seen: set[tuple[str, NodeId, int]] = set()
    while True:
        heads, cursor = store.changed_logs(cursor, limit)
        seen.update((h.topic, h.origin, h.head_id) for h in heads)
        if len(heads) < limit:
            return seen, cursor


def test_concurrent_writers_get_unique_gap_free_heads(
    open_store: Callable[[], PostgresStore],
) -> None:
    stores = [open_store(), open_store()]
    topics = ["a", "b", "c", "d"]
    rounds, per_batch = 60, 5
    acknowledged: dict[str, list[int]] = {topic: [] for topic in topics}
    lock = threading.Lock()

    def writer(index: int) -> None:
        store = stores[index % 2]
        for r in range(rounds):
            # Each writer touches the logs in its own order, so that lock order matters.
            order = topics[index % 4 :] + topics[: index % 4]
            if r % 2:
                order.reverse()
            ops = [
                _append(t, index * 10_000 + r * 100 + i) for t in order for i in range(per_batch)
            ]
            outcomes = store.write(ops)
            with lock:
                for outcome in outcomes:
                    assert isinstance(outcome, Message), outcome
                    acknowledged[outcome.topic].append(outcome.head_id)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(writer, i) for i in range(8)]:
            future.result()

    expected = 8 * rounds * per_batch
    for topic in topics:
        assert sorted(acknowledged[topic]) == list(range(1, expected + 1))
        page = stores[1].fetch(topic, LOCAL, 1, expected + 10)
        assert [m.head_id for m in page] == list(range(1, expected + 1))
        assert stores[0].get_head(topic, LOCAL) == expected


def test_two_processes_creating_the_same_new_logs_at_once_both_succeed(
    open_store: Callable[[], PostgresStore],
) -> None:
    # Two writers create the same 20 new logs in opposite orders, again and again: a deadlock
    # PostgreSQL breaks is retried, never reported.
    stores = [open_store(), open_store()]
    for attempt in range(10):
        topics = [f"new-{attempt}-{n}" for n in range(20)]
        barrier = threading.Barrier(2)

        def create(
            index: int, topics: list[str] = topics, barrier: threading.Barrier = barrier
        ) -> None:
            ordered = topics if index == 0 else topics[::-1]
            barrier.wait()
            for outcome in stores[index].write([_append(t, index) for t in ordered]):
                assert isinstance(outcome, Message), outcome

        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(create, i) for i in range(2)]:
                future.result()
        assert {(h.topic, h.head_id) for h in stores[0].list_heads() if h.topic in topics} == {
            (t, 2) for t in topics
        }


def test_the_same_replicated_log_ingested_by_two_processes_at_once_is_stored_once(
    open_store: Callable[[], PostgresStore],
) -> None:
    first, second = open_store(), open_store()
    messages = [remote_message(h, b"r%d" % h) for h in range(1, 301)]
    batches = [messages[i : i + 30] for i in range(0, 300, 30)]
    results: list[list[ReplicateResult]] = [[], []]

    def ingest(index: int) -> None:
        store = (first, second)[index]
        for batch in batches:
            for outcome in store.write([ReplicateOp(batch)]):
                assert isinstance(outcome, ReplicateResult), outcome
                results[index].append(outcome)

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(ingest, i) for i in range(2)]:
            future.result()

    changed = [m for result in results for r in result for m in r.changed]
    errors = [r.error for result in results for r in result if r.error is not None]
    assert errors == []
    # Each message was stored by exactly one of the two; the other found it unchanged.
    assert sorted(m.head_id for m in changed) == list(range(1, 301))
    assert first.fetch("events", REMOTE, 1, 1_000) == messages
    assert second.get_head("events", REMOTE) == 300


def test_front_only_acks_hold_across_processes(open_store: Callable[[], PostgresStore]) -> None:
    first, second = open_store(), open_store()
    first.write(
        [EnqueueOp("jobs", "t", LOCAL, TARGET, b"j%d" % n, {}, f"job-{n}", n) for n in range(40)]
    )
    for n in range(40):
        barrier = threading.Barrier(2)

        def ack(store: PostgresStore, barrier: threading.Barrier = barrier, n: int = n) -> object:
            barrier.wait()
            return store.write([AckOp("jobs", f"job-{n}")])[0]

        with ThreadPoolExecutor(2) as pool:
            outcomes = [f.result() for f in [pool.submit(ack, s) for s in (first, second)]]
        # Exactly one of two simultaneous acks of the front succeeds, wherever it lands.
        assert sorted(outcomes, key=str) == [False, True], outcomes
        # A message behind the front can never be acked, from either process.
        if n + 2 < 40:
            assert second.write([AckOp("jobs", f"job-{n + 2}")]) == [False]
    assert first.peek_fifo("jobs") is None


def test_changed_logs_lists_every_process_commits_and_pages(
    open_store: Callable[[], PostgresStore],
) -> None:
    writer, follower = open_store(), open_store()
    _, cursor = follower.changed_logs(None, 10)
    writer.write([_append(f"t{n}", n) for n in range(25)])
    seen, cursor = _all_changes(follower, cursor, limit=7)
    assert {(topic, head) for topic, _, head in seen} == {(f"t{n}", 1) for n in range(25)}
    # Nothing new: a later call may list recent logs again, but no head it has not seen.
    again, cursor = _all_changes(follower, cursor, limit=7)
    assert again <= seen
    follower.write([_append("t3", 99)])
    later, _ = _all_changes(follower, cursor, limit=7)
    assert ("t3", LOCAL, 2) in later


def test_a_change_committed_late_by_an_old_transaction_is_not_missed(
    open_store: Callable[[], PostgresStore], postgres_dsn: str
) -> None:
    # Transaction ids are handed out at the start, not at commit: a transaction that began
    # before a pass and commits after it has an id below what the pass read up to.
    store = open_store()
    store.write([_append("slow", 1), _append("fast", 1)])
    _, cursor = store.changed_logs(None, 100)
    with psycopg.connect(postgres_dsn, autocommit=True) as old:
        old.execute("BEGIN")
        old.execute(
            "UPDATE logs SET head = head + 1, change_xid = pg_current_xact_id()::text::bigint "
            "WHERE topic = 'slow'"
        )
        store.write([_append("fast", 2)])  # a newer transaction commits first
        seen, cursor = _all_changes(store, cursor)
        assert ("fast", LOCAL, 2) in seen
        assert ("slow", LOCAL, 2) not in seen
        old.execute("COMMIT")
    seen, _ = _all_changes(store, cursor)
    assert ("slow", LOCAL, 2) in seen


def test_commits_of_another_process_wake_a_waiting_listener(
    open_store: Callable[[], PostgresStore],
) -> None:
    writer, listener = open_store(), open_store()
    listener.wait_for_commits(0.01)  # connects and listens ("maybe" the first time)
    # Its own commits do not wake it.
    listener.write([_append("own", 1)])
    assert listener.wait_for_commits(0.3) is False
    woke: list[bool] = []
    waiting = threading.Thread(target=lambda: woke.append(listener.wait_for_commits(30)))
    waiting.start()
    wait_until(lambda: True, message="the listener waits", timeout=1)
    writer.write([_append("other", 1)])
    waiting.join(30)
    assert woke == [True]


def test_a_claim_is_held_by_one_process_and_taken_over_when_it_ends(
    open_store: Callable[[], PostgresStore], postgres_dsn: str
) -> None:
    first, second = open_store(), open_store()
    assert first.try_claim("sync with peer x")
    assert first.try_claim("sync with peer x")  # still held
    assert not second.try_claim("sync with peer x")
    assert second.try_claim("retention")  # another name is another claim
    first.close()  # the holder "dies": its session ends
    # The server releases the lock when the ended session's backend exits, a moment later.
    wait_until(
        lambda: second.try_claim("sync with peer x"), message="the claim taken over", timeout=10
    )
    # A claim lost with its connection (the database ended the session) is not reported
    # held; the next call takes it again when nobody else did.
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        claims = (
            "FROM pg_stat_activity "
            "WHERE application_name = 'msgbusd-claims' AND datname = current_database()"
        )
        admin.execute(f"SELECT pg_terminate_backend(pid) {claims}")
        # pg_terminate_backend only signals: wait until the session has really ended.
        wait_until(
            lambda: admin.execute(f"SELECT count(*) {claims}").fetchone() == (0,),
            message="the claims session ended",
            timeout=10,
        )
    with pytest.raises(StorageError):
        second.try_claim("sync with peer x")
    third = open_store()
    assert third.try_claim("sync with peer x")
    assert not second.try_claim("sync with peer x")
    third.release_claim("sync with peer x")
    assert second.try_claim("sync with peer x")


def test_processes_opening_an_empty_database_at_once_create_it_once(postgres_dsn: str) -> None:
    barrier = threading.Barrier(4)

    def open_one() -> PostgresStore:
        barrier.wait()
        return PostgresStore.open(postgres_dsn)

    with ThreadPoolExecutor(4) as pool:
        stores = [f.result() for f in [pool.submit(open_one) for _ in range(4)]]
    try:
        assert sorted(s.created for s in stores) == [False, False, False, True]
        stores[0].write([_append("x", 1)])
        assert stores[3].get_head("x", LOCAL) == 1
    finally:
        for store in stores:
            store.close()


def test_the_store_serves_again_after_postgresql_restarts(
    postgres_server_factory: PostgresServerFactory,
) -> None:
    server = postgres_server_factory()
    dsn = server.create_database("restarted")
    store = PostgresStore.open(dsn)
    try:
        store.write([_append("events", n) for n in range(10)])
        before = snapshot(store)
        server.stop()
        started = time.monotonic()
        with pytest.raises(StorageError):
            store.check()
        assert time.monotonic() - started < 10  # the health check does not hang
        with pytest.raises(StorageError):
            store.write([_append("events", 99)])
        server.start()
        # The first write after the restart reconnects by itself, and so do reads.
        [message] = store.write([_append("events", 10)])
        assert isinstance(message, Message)
        assert message.head_id == 11
        store.check()
        after = snapshot(store)
        assert after["logs"][("events", LOCAL)][:10] == before["logs"][("events", LOCAL)]
        # After a crash (no shutdown at all) and recovery, too.
        server.kill()
        server.start()
        wait_until(lambda: _answers(store), message="reads work again", timeout=30)
        assert store.get_head("events", LOCAL) == 11
    finally:
        store.close()


def _answers(store: PostgresStore) -> bool:
    try:
        store.check()
    except StorageError:
        return False
    return True


def test_errors_never_show_the_password() -> None:
    shown = display_dsn("postgresql://bob:hunter2@db.example:5433/hub?sslmode=require")
    assert shown == "postgresql://bob@db.example:5433/hub"
    assert "hunter2" not in display_dsn("host=db user=bob password=hunter2 dbname=hub")
    with pytest.raises(StorageError) as raised:
        PostgresStore.open("postgresql://bob:hunter2@127.0.0.1:1/hub?connect_timeout=2")
    assert "hunter2" not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)


def test_list_heads_orders_text_by_code_point_whatever_the_database_collation(
    open_store: Callable[[], PostgresStore],
) -> None:
    store = open_store()
    topics = ["b", "B", "a-b", "a/b", "é", "z", "\U0001f600"]
    store.write([_append(t, n) for n, t in enumerate(topics)])
    heads: list[TopicHead] = store.list_heads()
    assert [h.topic for h in heads] == sorted(topics)
    # Past ("a/b", ""): "a/b" itself (any origin key sorts after "") and the next one.
    assert [h.topic for h in store.list_heads(after=("a/b", ""), limit=2)] == sorted(topics)[2:4]


def test_leases_hold_across_processes(open_store: Callable[[], PostgresStore]) -> None:
    stores = [open_store() for _ in range(3)]
    stores[0].write(
        [EnqueueOp("jobs", "t", LOCAL, TARGET, b"j%d" % n, {}, f"job-{n}", n) for n in range(300)]
    )
    leased: list[str] = []
    acked: list[str] = []
    lock = threading.Lock()

    def work(store: PostgresStore, worker: int) -> None:
        for round_ in range(1_000):
            [leases] = store.write([LeaseOp("jobs", 4, 600_000, 1_000, f"w{worker}-{round_}", 3)])
            assert isinstance(leases, list)
            if not leases:
                return
            with lock:
                leased.extend(lease.message.id for lease in leases)
            for lease in leases:
                if lease.message.sequence % 7 == 0 and lease.message.attempts == 0:
                    # A failed attempt: back in the queue, for any process to lease again.
                    [result] = store.write([RejectLeaseOp("jobs", lease.lease_id, 1_000, 3)])
                    assert isinstance(result, RejectLeaseResult)
                    assert result.accepted
                    continue
                [accepted] = store.write([AckLeaseOp("jobs", lease.lease_id, 1_000)])
                assert accepted is True
                with lock:
                    acked.append(lease.message.id)

    with ThreadPoolExecutor(3) as pool:
        for future in [pool.submit(work, store, n) for n, store in enumerate(stores)]:
            future.result()
    # The row locks serialize the processes: no message was leased twice at once (only the
    # rejected ones came back, once each), and every message was acked exactly once.
    rejected = [n for n in range(300) if (n + 1) % 7 == 0]
    assert len(leased) == 300 + len(rejected)
    assert sorted(acked) == sorted(f"job-{n}" for n in range(300))
    assert stores[1].list_fifo("jobs", 0, 10) == []
