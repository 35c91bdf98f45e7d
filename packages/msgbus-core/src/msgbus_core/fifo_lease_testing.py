"""The conformance tests of FIFO leases, which `msgbus_core.testing.StoreConformance` runs.

A mixin of its own so the lease rules read in one place; it uses the suite's `store` and
`db_file` fixtures and its `factory`, `execute_raw` and `downgrade_to_v2`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from msgbus_core.fifo_leases import (
    DEAD_BY_EXPIRY,
    DEAD_BY_REJECT,
    RELEASE_PAGE,
    AckLeaseOp,
    ExtendLeaseOp,
    FifoLease,
    LeaseOp,
    RedriveOp,
    RejectLeaseOp,
    RejectLeaseResult,
)
from msgbus_core.model import FifoMessage, NodeId
from msgbus_core.ops import AckOp, EnqueueOp, RejectOp, WriteOp
from msgbus_core.store import MsgbusStore

_LOCAL = NodeId("tenant", "default", "local")
_TARGET = NodeId("tenant", "default", "worker")


def _one(store: MsgbusStore, op: WriteOp) -> Any:
    [outcome] = store.write([op])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _enqueue(store: MsgbusStore, queue: str, *ids: str) -> list[FifoMessage]:
    ops = [EnqueueOp(queue, "jobs", _LOCAL, _TARGET, i.encode(), {}, i, 1) for i in ids]
    return [outcome for outcome in store.write(ops) if isinstance(outcome, FifoMessage)]


def _lease(
    store: MsgbusStore, queue: str, count: int, *, at: int, hold: int = 100, token: str = "t",
    max_attempts: int = 0,
) -> list[FifoLease]:  # fmt: skip
    leases = _one(store, LeaseOp(queue, count, hold, at, token, max_attempts))
    assert isinstance(leases, list)
    return leases


def _ids(messages: list[FifoMessage]) -> list[str]:
    return [message.id for message in messages]


def _leased_ids(leases: list[FifoLease]) -> list[str]:
    return [lease.message.id for lease in leases]


class FifoLeaseConformance:
    """Every store leases the same way: FIFO among the unleased, attempts, dead letters."""

    factory: ClassVar[Any]
    downgrade_to_v2: ClassVar[tuple[str, ...]] = ()
    persistent: ClassVar[bool] = True

    @classmethod
    def execute_raw(cls, location: str, *statements: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def test_lease_hands_out_the_lowest_unleased_messages_once(self, store: MsgbusStore) -> None:
        _enqueue(store, "jobs", "a", "b", "c", "d", "e")
        first = _lease(store, "jobs", 2, at=1_000, token="w1")
        assert _leased_ids(first) == ["a", "b"]
        assert [lease.expires_at_ms for lease in first] == [1_100, 1_100]
        assert first[0].message.leased_until_ms == 1_100
        assert first[0].lease_id != first[1].lease_id
        second = _lease(store, "jobs", 10, at=1_001, token="w2")
        assert _leased_ids(second) == ["c", "d", "e"]
        assert _lease(store, "jobs", 10, at=1_002) == []
        assert _lease(store, "nothing-here", 10, at=1_002) == []

    def test_the_original_front_is_the_lowest_message_no_live_lease_holds(
        self, store: MsgbusStore
    ) -> None:
        _enqueue(store, "jobs", "a", "b", "c")
        _lease(store, "jobs", 1, at=1_000)
        front = store.peek_fifo("jobs", 1_050)
        assert front is not None
        assert (front.id, front.leased_until_ms) == ("b", 0)
        assert _one(store, AckOp("jobs", "a", 1_050)) is False  # leased: not the front
        assert _one(store, AckOp("jobs", "b", 1_050)) is True
        assert _one(store, RejectOp("jobs", "c", 1_050)) is True
        # Once the lease has run out, its message is the front again.
        expired = store.peek_fifo("jobs", 1_100)
        assert expired is not None
        assert (expired.id, expired.leased_until_ms) == ("a", 0)
        assert _one(store, AckOp("jobs", "a", 1_100)) is True
        assert _ids(store.list_fifo("jobs", 0, 10)) == ["c"]

    def test_ack_by_lease_removes_only_a_held_message(self, store: MsgbusStore) -> None:
        _enqueue(store, "jobs", "a", "b")
        a, b = _lease(store, "jobs", 2, at=1_000)
        assert _one(store, AckLeaseOp("jobs", "not-a-lease", 1_001)) is False
        assert _one(store, AckLeaseOp("jobs", "1.other-token", 1_001)) is False
        assert _one(store, AckLeaseOp("other", a.lease_id, 1_001)) is False
        assert _one(store, AckLeaseOp("jobs", a.lease_id, 1_001)) is True
        assert _one(store, AckLeaseOp("jobs", a.lease_id, 1_001)) is False  # once
        assert _one(store, AckLeaseOp("jobs", b.lease_id, 1_100)) is False  # expired
        assert _ids(store.list_fifo("jobs", 0, 10)) == ["b"]

    def test_an_expired_lease_is_redelivered_with_one_more_attempt(
        self, store: MsgbusStore
    ) -> None:
        _enqueue(store, "jobs", "a", "b")
        [old] = _lease(store, "jobs", 1, at=1_000, token="w1")
        [again] = _lease(store, "jobs", 1, at=1_100, token="w2")
        assert (again.message.id, again.message.attempts) == ("a", 1)
        assert again.lease_id != old.lease_id
        assert _one(store, AckLeaseOp("jobs", old.lease_id, 1_101)) is False
        assert _one(store, ExtendLeaseOp("jobs", old.lease_id, 1_101, 50)) == 0
        assert _one(store, AckLeaseOp("jobs", again.lease_id, 1_101)) is True

    def test_a_rejected_message_keeps_its_place_among_the_unleased(
        self, store: MsgbusStore
    ) -> None:
        _enqueue(store, "jobs", "a", "b", "c")
        a, _b = _lease(store, "jobs", 2, at=1_000)
        result = _one(store, RejectLeaseOp("jobs", a.lease_id, 1_001))
        assert result == RejectLeaseResult(True, False)
        assert _one(store, RejectLeaseOp("jobs", a.lease_id, 1_001)) == RejectLeaseResult(False)
        redelivered = _lease(store, "jobs", 5, at=1_002)
        assert _leased_ids(redelivered) == ["a", "c"]
        assert [lease.message.attempts for lease in redelivered] == [1, 0]

    def test_extend_keeps_a_lease_past_its_first_expiry(self, store: MsgbusStore) -> None:
        _enqueue(store, "jobs", "a")
        [lease] = _lease(store, "jobs", 1, at=1_000)
        assert _one(store, ExtendLeaseOp("jobs", lease.lease_id, 1_090, 500)) == 1_590
        assert _lease(store, "jobs", 1, at=1_200) == []
        [listed] = store.list_fifo("jobs", 0, 10, now_ms=1_200)
        assert (listed.leased_until_ms, listed.attempts) == (1_590, 0)
        assert _one(store, AckLeaseOp("jobs", lease.lease_id, 1_500)) is True

    def test_max_attempts_moves_a_message_to_the_dead_letter_queue(
        self, store: MsgbusStore
    ) -> None:
        _enqueue(store, "jobs", "a", "b")
        for attempt in range(2):
            [lease] = _lease(store, "jobs", 1, at=1_000 + attempt, max_attempts=3)
            assert lease.message.attempts == attempt
            assert _one(store, RejectLeaseOp("jobs", lease.lease_id, 1_000, 3)).accepted
        [lease] = _lease(store, "jobs", 1, at=1_010, max_attempts=3)
        assert _one(store, RejectLeaseOp("jobs", lease.lease_id, 1_010, 3)) == RejectLeaseResult(
            True, True
        )
        [dead] = store.list_fifo("jobs.dead", 0, 10)
        assert (dead.id, dead.attempts, dead.dead_reason) == ("a", 3, DEAD_BY_REJECT)
        assert (dead.payload, dead.sequence, dead.leased_until_ms) == (b"a", 1, 0)
        assert _ids(store.list_fifo("jobs", 0, 10)) == ["b"]
        # The last attempt by expiry: released by the next lease, dead at once.
        [lease] = _lease(store, "jobs", 1, at=2_000, max_attempts=1)
        assert _lease(store, "jobs", 1, at=2_100, max_attempts=1) == []
        assert [(m.id, m.attempts, m.dead_reason) for m in store.list_fifo("jobs.dead", 0, 10)] == [
            ("a", 3, DEAD_BY_REJECT),
            ("b", 1, DEAD_BY_EXPIRY),
        ]
        assert store.peek_fifo("jobs", 2_100) is None

    def test_an_original_reject_counts_toward_max_attempts(self, store: MsgbusStore) -> None:
        _enqueue(store, "jobs", "a", "b")
        assert _one(store, RejectOp("jobs", "a", 1_000, max_attempts=2)) is True
        assert _one(store, RejectOp("jobs", "a", 1_000, max_attempts=2)) is True
        front = store.peek_fifo("jobs", 1_000)
        assert front is not None
        assert front.id == "b"
        [dead] = store.list_fifo("jobs.dead", 0, 10)
        assert (dead.id, dead.attempts, dead.dead_reason) == ("a", 2, DEAD_BY_REJECT)

    def test_dead_letters_are_never_dead_lettered_again(self, store: MsgbusStore) -> None:
        _enqueue(store, "jobs.dead", "a")
        [lease] = _lease(store, "jobs.dead", 1, at=1_000, max_attempts=1)
        assert _one(store, RejectLeaseOp("jobs.dead", lease.lease_id, 1_000, 1)) == (
            RejectLeaseResult(True, False)
        )
        assert store.list_fifo("jobs.dead.dead", 0, 10) == []

    def test_redrive_moves_dead_letters_back_to_the_back(self, store: MsgbusStore) -> None:
        _enqueue(store, "jobs", "a", "b", "c")
        for _ in range(2):
            [lease] = _lease(store, "jobs", 1, at=1_000, max_attempts=1)
            _one(store, RejectLeaseOp("jobs", lease.lease_id, 1_000, 1))
        assert _ids(store.list_fifo("jobs.dead", 0, 10)) == ["a", "b"]
        assert _one(store, RedriveOp("jobs", 1, 1_001)) == 1
        assert _one(store, RedriveOp("jobs", 10, 1_001)) == 1
        assert _one(store, RedriveOp("jobs", 10, 1_001)) == 0
        back = store.list_fifo("jobs", 0, 10)
        assert [(m.id, m.sequence, m.attempts, m.dead_reason) for m in back] == [
            ("c", 3, 0, ""),
            ("a", 4, 0, ""),
            ("b", 5, 0, ""),
        ]

    def test_list_fifo_pages_in_sequence_order(self, store: MsgbusStore) -> None:
        _enqueue(store, "jobs", *(f"m{n}" for n in range(7)))
        _lease(store, "jobs", 2, at=1_000)
        page = store.list_fifo("jobs", 0, 3, now_ms=1_000)
        assert _ids(page) == ["m0", "m1", "m2"]
        assert [m.leased_until_ms for m in page] == [1_100, 1_100, 0]
        assert _ids(store.list_fifo("jobs", page[-1].sequence, 10)) == ["m3", "m4", "m5", "m6"]
        assert store.list_fifo("jobs", 7, 10) == []
        [summary] = store.list_fifo_queues()
        assert (summary.depth, summary.leased) == (7, 2)

    def test_one_lease_releases_every_expired_lease_first(self, store: MsgbusStore) -> None:
        count = RELEASE_PAGE + 500
        _enqueue(store, "jobs", *(f"m{n:05}" for n in range(count + 1)))
        assert len(_lease(store, "jobs", count, at=1_000)) == count
        # Every expired lease goes back before the lease picks: FIFO order among the unleased.
        leases = _lease(store, "jobs", 3, at=2_000)
        assert _leased_ids(leases) == ["m00000", "m00001", "m00002"]
        assert all(lease.message.attempts == 1 for lease in leases)
        listed = store.list_fifo("jobs", 0, count + 1, now_ms=2_000)
        assert [m.attempts for m in listed[3:]] == [1] * (count - 3) + [0]

    def test_leases_survive_a_reopen(self, db_file: str) -> None:
        if not self.persistent:
            pytest.skip("this store keeps nothing across close")
        store = self.factory.open(db_file)
        try:
            _enqueue(store, "jobs", "a", "b")
            [lease] = _lease(store, "jobs", 1, at=1_000)
        finally:
            store.close()
        reopened = self.factory.open(db_file)
        try:
            assert _lease(store=reopened, queue="jobs", count=5, at=1_010)[0].message.id == "b"
            assert _one(reopened, AckLeaseOp("jobs", lease.lease_id, 1_020)) is True
        finally:
            reopened.close()

    def test_a_schema_2_file_gains_the_lease_columns_at_open(self, db_file: str) -> None:
        if not self.downgrade_to_v2:
            pytest.skip("this store has no schema 2 to migrate from")
        store = self.factory.open(db_file)
        _enqueue(store, "jobs", "a", "b")
        store.close()
        self.execute_raw(db_file, *self.downgrade_to_v2)
        reopened = self.factory.open(db_file)
        try:
            assert _ids(reopened.list_fifo("jobs", 0, 10)) == ["a", "b"]
            [lease] = _lease(reopened, "jobs", 1, at=1_000)
            assert lease.message.id == "a"
            front = reopened.peek_fifo("jobs", 1_000)
            assert front is not None
            assert front.id == "b"
        finally:
            reopened.close()
