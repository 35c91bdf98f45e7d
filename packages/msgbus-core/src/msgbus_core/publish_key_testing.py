"""The conformance tests of idempotency keys, which `msgbus_core.testing.StoreConformance` runs.

A mixin of its own so the exactly-once rules read in one place; it uses the suite's `store` and
`db_file` fixtures and its `factory`, `execute_raw` and `downgrade_to_v2`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from msgbus_core.model import Message, NodeId
from msgbus_core.ops import AppendOp, DeleteRangeOp, TrimOp
from msgbus_core.publish_keys import DuplicatePublish, PrunedKeys, PruneKeysOp
from msgbus_core.store import MsgbusStore

_LOCAL = NodeId("tenant", "default", "local")


def _keyed(topic: str, key: str, n: int, *, at: int | None = None) -> AppendOp:
    """An append with idempotency key `key`; id, payload and time derived from `n`."""
    created = 1_000 + n if at is None else at
    return AppendOp(topic, _LOCAL, f"p{n}".encode(), {"n": str(n)}, f"{topic}-{n}", created, key)


def _one(store: MsgbusStore, op: Any) -> Any:
    [outcome] = store.write([op])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class PublishKeyConformance:
    """Every store answers a repeated key with the first message, and forgets keys the same way."""

    factory: ClassVar[Any]
    downgrade_to_v2: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def execute_raw(cls, location: str, *statements: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def test_a_repeated_key_answers_the_first_message_and_stores_nothing(
        self, store: MsgbusStore
    ) -> None:
        first = _one(store, _keyed("events", "k1", 1))
        assert isinstance(first, Message)
        repeat = _one(store, _keyed("events", "k1", 2))
        assert repeat == DuplicatePublish(first)
        assert store.get_head("events", _LOCAL) == 1
        assert store.fetch("events", _LOCAL, 1, 10) == [first]

    def test_keys_are_per_topic_and_unkeyed_appends_are_never_duplicates(
        self, store: MsgbusStore
    ) -> None:
        a = _one(store, _keyed("a", "same", 1))
        b = _one(store, _keyed("b", "same", 2))
        assert isinstance(a, Message)
        assert isinstance(b, Message)
        unkeyed = [_one(store, _keyed("a", "", n)) for n in (3, 4)]
        assert [m.head_id for m in unkeyed] == [2, 3]
        assert store.get_head("b", _LOCAL) == 1

    def test_a_key_repeated_within_one_batch_is_a_duplicate_of_the_first_entry(
        self, store: MsgbusStore
    ) -> None:
        outcomes = store.write(
            [_keyed("events", "k", 1), _keyed("events", "other", 2), _keyed("events", "k", 3)]
        )
        first, other, repeat = outcomes
        assert isinstance(first, Message)
        assert isinstance(other, Message)
        assert repeat == DuplicatePublish(first)
        assert store.get_head("events", _LOCAL) == 2

    def test_a_batch_of_many_keys_answers_each_repeat_with_its_first_message(
        self, store: MsgbusStore
    ) -> None:
        # More keys than one lookup query asks for (MAX_KEYS_PER_FIND), in two logs that share
        # every key: each log's keys are its own, within a batch and across batches.
        count = 1_200
        first = store.write([_keyed(t, f"k{n}", n) for n in range(count) for t in ("a", "b")])
        in_a = [m for m in first[::2] if isinstance(m, Message)]  # a's first publish of k<n>
        assert len(in_a) == count
        assert all(isinstance(outcome, Message) for outcome in first)
        batch = [
            *(_keyed("a", f"k{n}", count + n) for n in range(count)),
            *(_keyed("a", f"new{n}", 2 * count + n) for n in range(300)),
            *(_keyed("a", f"new{n}", 3 * count + n) for n in range(300)),
            _keyed("c", "k0", 4 * count),
        ]
        outcomes = store.write(batch)
        assert outcomes[:count] == [DuplicatePublish(message) for message in in_a]
        new = [m for m in outcomes[count : count + 300] if isinstance(m, Message)]
        assert [m.head_id for m in new] == [count + 1 + n for n in range(300)]
        assert outcomes[count + 300 : count + 600] == [DuplicatePublish(m) for m in new]
        assert isinstance(outcomes[-1], Message)
        assert store.get_head("a", _LOCAL) == count + 300
        assert store.get_head("b", _LOCAL) == count
        assert store.get_head("c", _LOCAL) == 1

    def test_a_key_pruned_within_a_batch_publishes_again_later_in_it(
        self, store: MsgbusStore
    ) -> None:
        old = _one(store, _keyed("events", "old", 1, at=100))
        outcomes = store.write(
            [
                _keyed("events", "old", 2, at=300),  # still remembered: a duplicate
                _keyed("events", "k", 3, at=150),  # stored by this batch, then pruned in it
                PruneKeysOp(200, 1_000),
                _keyed("events", "old", 4, at=300),
                _keyed("events", "k", 5, at=300),
                _keyed("events", "k", 6, at=300),
            ]
        )
        repeat, k, pruned, old_again, k_again, k_repeat = outcomes
        assert repeat == DuplicatePublish(old)
        assert isinstance(k, Message)
        assert pruned == PrunedKeys(2, 2)
        assert isinstance(old_again, Message)
        assert isinstance(k_again, Message)
        assert (old_again.head_id, k_again.head_id) == (3, 4)
        assert k_repeat == DuplicatePublish(k_again)
        assert store.get_head("events", _LOCAL) == 4
        assert _one(store, PruneKeysOp(0, 1_000)) == PrunedKeys(0, 2)

    def test_a_repeat_of_a_deleted_message_answers_it_deleted(self, store: MsgbusStore) -> None:
        first = _one(store, _keyed("events", "k", 1))
        _one(store, DeleteRangeOp("events", _LOCAL, 1, 1, "marker-1", 2_000))
        repeat = _one(store, _keyed("events", "k", 2))
        assert isinstance(repeat, DuplicatePublish)
        assert repeat.message == first.erased()
        assert store.get_head("events", _LOCAL) == 1

    def test_a_repeat_of_a_trimmed_message_answers_its_envelope_without_payload(
        self, store: MsgbusStore
    ) -> None:
        first = _one(store, _keyed("events", "k", 1))
        _one(store, _keyed("events", "later", 2))
        _one(store, TrimOp("events", _LOCAL, 2))
        repeat = _one(store, _keyed("events", "k", 3))
        assert isinstance(repeat, DuplicatePublish)
        assert repeat.message == Message(
            first.id, "events", _LOCAL, 1, b"", {}, first.created_at_ms, deleted=True
        )
        assert store.get_head("events", _LOCAL) == 2

    def test_keys_survive_reopen(self, db_file: str) -> None:
        store = self.factory.open(db_file)
        first = _one(store, _keyed("events", "k", 1))
        store.close()
        reopened = self.factory.open(db_file)
        try:
            assert _one(reopened, _keyed("events", "k", 2)) == DuplicatePublish(first)
            assert reopened.get_head("events", _LOCAL) == 1
        finally:
            reopened.close()

    def test_prune_forgets_expired_keys_oldest_first_within_its_limit(
        self, store: MsgbusStore
    ) -> None:
        store.write([_keyed("events", f"k{n:02}", n, at=100 + n) for n in range(10)])
        # Keys created at 100..104 are expired; the limit lets only three go per op.
        assert _one(store, PruneKeysOp(105, 1_000, limit=3)) == PrunedKeys(3, 10)
        assert _one(store, PruneKeysOp(105, 1_000, limit=3)) == PrunedKeys(2, 7)
        assert _one(store, PruneKeysOp(105, 1_000, limit=3)) == PrunedKeys(0, 5)
        # A forgotten key publishes again; a kept one is still a duplicate.
        assert isinstance(_one(store, _keyed("events", "k00", 20, at=200)), Message)
        assert isinstance(_one(store, _keyed("events", "k05", 21, at=200)), DuplicatePublish)
        assert store.get_head("events", _LOCAL) == 11

    def test_prune_keeps_at_most_max_keys_dropping_the_oldest(self, store: MsgbusStore) -> None:
        # Many keys in one transaction (one created_at_ms): the key decides the order then.
        count = 3_000
        store.write([_keyed("events", f"k{n:05}", n, at=500) for n in range(count)])
        store.write([_keyed("events", "newest", count, at=600)])
        removed = 0
        while True:
            pruned = _one(store, PruneKeysOp(0, 1_000, limit=512))
            assert pruned.removed <= 512
            removed += pruned.removed
            if not pruned.removed:
                break
        assert removed == count + 1 - 1_000
        assert pruned.held == 1_000
        assert isinstance(_one(store, _keyed("events", "k00000", 1, at=700)), Message)
        kept = _one(store, _keyed("events", f"k{count - 1:05}", 2, at=700))
        assert isinstance(kept, DuplicatePublish)
        assert isinstance(_one(store, _keyed("events", "newest", 3, at=700)), DuplicatePublish)

    def test_a_schema_2_file_gains_the_publish_keys_table_at_open(self, db_file: str) -> None:
        if not self.downgrade_to_v2:
            pytest.skip("this store has no schema 2 to migrate from")
        store = self.factory.open(db_file)
        store.write([_keyed("events", "", 1)])
        store.close()
        self.execute_raw(db_file, *self.downgrade_to_v2)
        reopened = self.factory.open(db_file)
        try:
            first = _one(reopened, _keyed("events", "k", 2))
            assert isinstance(first, Message)
            assert first.head_id == 2
            assert _one(reopened, _keyed("events", "k", 3)) == DuplicatePublish(first)
        finally:
            reopened.close()
