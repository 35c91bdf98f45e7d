"""The conformance tests of durable cursors, which `msgbus_core.testing.StoreConformance` runs.

A mixin of its own so the cursor rules read in one place; it uses the suite's `store` and
`db_file` fixtures and its `factory`, `execute_raw` and `downgrade_to_v2`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from msgbus_core.cursors import CommitCursorOp, Cursor, DeleteCursorOp
from msgbus_core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from msgbus_core.limits import MAX_STORED_INT
from msgbus_core.model import NodeId
from msgbus_core.ops import AppendOp
from msgbus_core.store import MsgbusStore, StoreFactory

_LOCAL = NodeId("tenant", "default", "local")
_REMOTE = NodeId("tenant", "default", "remote")


def _publish(store: MsgbusStore, topic: str, count: int, origin: NodeId = _LOCAL) -> None:
    store.write([AppendOp(topic, origin, b"m", {}, f"{topic}-{n}", n) for n in range(count)])


def _commit(
    store: MsgbusStore,
    name: str,
    topic: str,
    head_id: int,
    origin: NodeId = _LOCAL,
    *,
    at: int = 1_000,
    cap: int = 100_000,
) -> Any:
    [outcome] = store.write([CommitCursorOp(Cursor(name, topic, origin, head_id, at), cap)])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class CursorConformance:
    """Every store keeps cursors the same way: commit, get, list in pages, delete, reopen."""

    factory: ClassVar[StoreFactory]
    downgrade_to_v2: ClassVar[tuple[str, ...]] = ()
    """Statements that turn a file of the current schema into one of schema version 2 (the
    tables schema 3 added dropped), so the 2 -> 3 migration is tested; empty: skipped."""

    @classmethod
    def execute_raw(cls, location: str, *statements: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def test_cursor_commit_get_and_replace(self, store: MsgbusStore) -> None:
        _publish(store, "events", 5)
        assert store.get_cursor("billing", "events", _LOCAL) is None
        stored = _commit(store, "billing", "events", 3, at=10)
        assert stored == Cursor("billing", "events", _LOCAL, 3, 10)
        assert store.get_cursor("billing", "events", _LOCAL) == stored
        # A commit replaces the head, up or down (the SDK keeps its commits monotonic).
        _commit(store, "billing", "events", 5, at=11)
        _commit(store, "billing", "events", 0, at=12)
        assert store.get_cursor("billing", "events", _LOCAL) == Cursor(
            "billing", "events", _LOCAL, 0, 12
        )
        assert store.get_cursor("billing", "events", _REMOTE) is None
        assert store.get_cursor("other", "events", _LOCAL) is None

    def test_cursor_commit_above_the_head_is_refused_and_stores_nothing(
        self, store: MsgbusStore
    ) -> None:
        _publish(store, "events", 2)
        with pytest.raises(FailedPreconditionError, match="head_id 3 is above the head 2"):
            _commit(store, "billing", "events", 3)
        with pytest.raises(FailedPreconditionError, match="above the head 0"):
            _commit(store, "billing", "never-published", 1)
        with pytest.raises(InvalidArgumentError, match="head_id"):
            _commit(store, "billing", "events", MAX_STORED_INT + 1)
        assert store.list_cursors() == []
        # A cursor of another origin's log follows that log's head.
        _publish(store, "events", 3, _REMOTE)
        assert _commit(store, "billing", "events", 3, _REMOTE).head_id == 3

    def test_cursor_commit_in_a_batch_sees_the_appends_before_it(self, store: MsgbusStore) -> None:
        cursor = Cursor("billing", "events", _LOCAL, 2, 5)
        outcomes = store.write(
            [
                AppendOp("events", _LOCAL, b"a", {}, "a", 1),
                AppendOp("events", _LOCAL, b"b", {}, "b", 2),
                CommitCursorOp(cursor),
            ]
        )
        assert outcomes[2] == cursor
        assert store.get_cursor("billing", "events", _LOCAL) == cursor

    def test_cursor_cap_refuses_a_new_cursor_but_not_a_commit_of_a_kept_one(
        self, store: MsgbusStore
    ) -> None:
        _publish(store, "events", 3)
        for n in range(3):
            _commit(store, f"c{n}", "events", 1, cap=3)
        with pytest.raises(ResourceExhaustedError, match="at most 3 cursors") as refused:
            _commit(store, "c3", "events", 1, cap=3)
        assert refused.value.field == "name"
        assert _commit(store, "c1", "events", 3, cap=3).head_id == 3
        assert [c.name for c in store.list_cursors()] == ["c0", "c1", "c2"]
        assert write_deleted(store, DeleteCursorOp("c0", "events", _LOCAL)) == 1
        assert _commit(store, "c3", "events", 2, cap=3).head_id == 2

    def test_cursor_list_pages_in_key_order(self, store: MsgbusStore) -> None:
        _publish(store, "a", 1)
        _publish(store, "b", 1)
        _publish(store, "a", 1, _REMOTE)
        names = ["z", "billing", "ä", "b"]
        for name in names:
            for topic, origin in (("b", _LOCAL), ("a", _REMOTE), ("a", _LOCAL)):
                _commit(store, name, topic, 1, origin)
        everything = store.list_cursors(limit=100)
        keys = [c.key for c in everything]
        assert keys == sorted(keys)
        assert len(keys) == 12
        assert keys[0] == ("b", "a", _LOCAL.key)
        assert keys[-1][0] == "ä"
        pages: list[Cursor] = []
        after = None
        while True:
            page = store.list_cursors(after=after, limit=5)
            pages.extend(page)
            if len(page) < 5:
                break
            after = page[-1].key
        assert pages == everything
        billing = store.list_cursors("billing", limit=100)
        assert [c.key for c in billing] == [k for k in keys if k[0] == "billing"]
        assert store.list_cursors("billing", after=billing[0].key, limit=1) == [billing[1]]
        assert store.list_cursors("billing", after=("a", "", ""), limit=10) == billing
        assert store.list_cursors("billing", after=("c", "", ""), limit=10) == []
        assert store.list_cursors("nobody") == []
        assert store.list_cursors(limit=0) == []

    def test_cursor_delete_one_or_every_cursor_of_a_name(self, store: MsgbusStore) -> None:
        _publish(store, "a", 1)
        _publish(store, "b", 1)
        for name in ("billing", "audit"):
            _commit(store, name, "a", 1)
            _commit(store, name, "b", 1)
        assert write_deleted(store, DeleteCursorOp("billing", "a", _LOCAL)) == 1
        assert write_deleted(store, DeleteCursorOp("billing", "a", _LOCAL)) == 0
        assert write_deleted(store, DeleteCursorOp("billing", "b", _REMOTE)) == 0
        assert write_deleted(store, DeleteCursorOp("audit", None, _LOCAL)) == 2
        assert [c.key for c in store.list_cursors()] == [("billing", "b", _LOCAL.key)]

    def test_cursors_survive_reopen(self, db_file: str) -> None:
        store = self.factory.open(db_file)
        _publish(store, "events", 4)
        _commit(store, "billing", "events", 4, at=77)
        _commit(store, "audit", "events", 2, at=78)
        before = store.list_cursors()
        store.close()
        reopened = self.factory.open(db_file)
        try:
            assert reopened.list_cursors() == before
            assert reopened.get_cursor("billing", "events", _LOCAL) == Cursor(
                "billing", "events", _LOCAL, 4, 77
            )
        finally:
            reopened.close()

    def test_a_schema_2_file_gains_the_cursors_table_at_open(self, db_file: str) -> None:
        if not self.downgrade_to_v2:
            pytest.skip("this store has no schema 2 to migrate from")
        store = self.factory.open(db_file)
        version = store.schema_version
        _publish(store, "events", 2)
        store.close()
        self.execute_raw(db_file, *self.downgrade_to_v2)
        reopened = self.factory.open(db_file)
        try:
            assert reopened.schema_version == version
            assert reopened.get_head("events", _LOCAL) == 2
            assert reopened.list_cursors() == []
            assert _commit(reopened, "billing", "events", 2).head_id == 2
        finally:
            reopened.close()


def write_deleted(store: MsgbusStore, op: DeleteCursorOp) -> int:
    """Apply one cursor delete; how many cursors it deleted."""
    [outcome] = store.write([op])
    assert isinstance(outcome, int), outcome
    return outcome
