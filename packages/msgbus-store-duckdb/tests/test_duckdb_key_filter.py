"""The key filter: a new key's publish skips its lookup, and no stored key is ever missed.

The exactly-once rules every store keeps are in the conformance suite; these tests pin what
the filter adds on DuckDB: which statements a keyed commit runs, and that a rolled-back prune,
a reopen and colliding counters still answer every repeat as a duplicate.
"""

from __future__ import annotations

import time
from typing import Any

import duckdb
import pytest

from msgbus_core.errors import StorageError
from msgbus_core.model import Message
from msgbus_core.ops import AppendOp
from msgbus_core.publish_keys import DuplicatePublish, PrunedKeys, PruneKeysOp
from msgbus_core.testing import LOCAL, StoreFixtures
from msgbus_store_duckdb import DuckdbStore
from msgbus_store_duckdb.key_filter import KeyFilter


def keyed(key: str, n: int, at: int = 1_000) -> AppendOp:
    return AppendOp("events", LOCAL, f"p{n}".encode(), {}, f"id-{n}", at + n, key)


def one(store: DuckdbStore, op: Any) -> Any:
    [outcome] = store.write([op])
    assert not isinstance(outcome, Exception)
    return outcome


class _Watched:
    """The writer connection, recording every statement it executes; its commit may fail."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.statements: list[str] = []
        self.fail_commit = False

    def execute(self, sql: str, parameters: Any = ()) -> Any:
        self.statements.append(sql)
        return self.con.execute(sql, parameters)

    def commit(self) -> None:
        if self.fail_commit:
            raise duckdb.IOException("Could not write file: No space left on device")
        self.con.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def watch(store: DuckdbStore) -> _Watched:
    watched = _Watched(store._writer)
    store._writer = watched  # type: ignore[assignment]
    return watched


def counted(store: DuckdbStore) -> DuckdbStore:
    """`store` once its key filter has counted the keys stored before it opened."""
    deadline = time.monotonic() + 30
    while not store._key_filter.complete:
        assert time.monotonic() < deadline, "the stored keys were never counted"
        time.sleep(0.01)
    return store


def lookups(watched: _Watched) -> list[str]:
    return [sql for sql in watched.statements if sql.startswith("SELECT") and "publish_keys" in sql]


class TestKeyFilter:
    def test_every_key_may_be_held_until_the_stored_keys_are_counted(self) -> None:
        keys = KeyFilter()
        assert keys.may_hold(1, "k")
        keys.fill([[(1, "stored")], [(2, "stored")]])
        assert keys.complete
        assert not keys.may_hold(1, "k")
        assert keys.may_hold(1, "stored")
        assert keys.may_hold(2, "stored")

    def test_a_key_is_held_from_its_add_until_its_remove(self) -> None:
        keys = KeyFilter()
        keys.fill([])
        assert not keys.may_hold(1, "k")
        keys.add(1, "k")
        assert keys.may_hold(1, "k")
        assert not keys.may_hold(2, "k")  # keys are per log
        keys.remove(1, "k")
        assert not keys.may_hold(1, "k")

    def test_a_saturated_counter_is_never_decremented(self) -> None:
        keys = KeyFilter(counters=1, hashes=1)  # every key shares the one counter
        keys.fill([[(1, f"k{n}") for n in range(300)]])
        for n in range(299):
            keys.remove(1, f"k{n}")
        # It counted 255 at most: decrementing it would have lost k299.
        assert keys.may_hold(1, "k299")

    def test_counters_must_be_a_power_of_two(self) -> None:
        with pytest.raises(ValueError, match="power of two"):
            KeyFilter(counters=3)


class TestKeyedCommits(StoreFixtures):
    factory = DuckdbStore

    def test_a_new_key_commits_without_a_lookup_and_a_repeat_looks_it_up(
        self, store: DuckdbStore
    ) -> None:
        watched = watch(counted(store))
        first = one(store, keyed("k1", 1))
        assert isinstance(first, Message)
        assert lookups(watched) == []
        assert one(store, keyed("k1", 2)) == DuplicatePublish(first)
        assert len(lookups(watched)) == 1

    def test_keys_stored_before_a_reopen_are_counted_at_open(self, store: DuckdbStore) -> None:
        first = one(store, keyed("k1", 1))
        path = store.path
        store.close()
        reopened = DuckdbStore.open(path)
        try:
            # Whether or not the stored keys are counted yet, the repeat is a duplicate.
            assert one(reopened, keyed("k1", 2)) == DuplicatePublish(first)
            watched = watch(counted(reopened))
            assert one(reopened, keyed("k1", 3)) == DuplicatePublish(first)
            assert isinstance(one(reopened, keyed("k2", 4)), Message)
            assert len(lookups(watched)) == 1  # k1's; the new k2 was not looked up
        finally:
            reopened.close()

    def test_a_store_closed_while_counting_its_keys_closes(self, store: DuckdbStore) -> None:
        store.write([keyed(f"k{n}", n) for n in range(1, 2_001)])
        path = store.path
        store.close()
        reopened = DuckdbStore.open(path)
        reopened.close()
        assert not reopened._key_counter.is_alive()

    def test_a_pruned_key_is_uncounted_once_the_prune_commits(self, store: DuckdbStore) -> None:
        one(counted(store), keyed("k1", 1, at=100))
        assert one(store, PruneKeysOp(10_000, 1_000)) == PrunedKeys(1, 1)
        watched = watch(store)
        again = one(store, keyed("k1", 2))
        assert isinstance(again, Message)
        assert again.head_id == 2
        assert lookups(watched) == []

    def test_a_prune_that_fails_to_commit_keeps_its_keys_answering(
        self, store: DuckdbStore
    ) -> None:
        first = one(store, keyed("k1", 1, at=100))
        watched = watch(store)
        watched.fail_commit = True
        with pytest.raises(StorageError):
            store.write([PruneKeysOp(10_000, 1_000)])
        watched.fail_commit = False
        assert one(store, keyed("k1", 2)) == DuplicatePublish(first)

    def test_colliding_counters_still_answer_new_keys_and_repeats(self, store: DuckdbStore) -> None:
        first = one(store, keyed("k1", 1))
        keys = KeyFilter(counters=1, hashes=1)  # every key "may" be held
        keys.fill(
            [store._writer.execute("SELECT log_id, idempotency_key FROM publish_keys").fetchall()]
        )
        store._key_filter = keys
        watched = watch(store)
        second = one(store, keyed("k2", 2))
        assert isinstance(second, Message)
        assert second.head_id == 2
        assert len(lookups(watched)) == 1  # the false positive took the lookup
        assert one(store, keyed("k1", 3)) == DuplicatePublish(first)
        assert one(store, keyed("k2", 4)) == DuplicatePublish(second)
