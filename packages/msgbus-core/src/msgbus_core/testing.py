"""The store conformance suite: every `MsgbusStore` backend runs it with a few lines of pytest.

    from msgbus_core.testing import StoreConformance
    from my_store import MyStore

    class TestMyStore(StoreConformance):
        factory = MyStore
        entry_point = "mine"

        @classmethod
        def execute_raw(cls, path, *statements):
            ...  # run `statements` on the file with the backend's own driver

        def fail_commits(self, store):
            ...  # a context manager under which the store's commits fail like a full disk

It holds example tests for every rule of the storage contract, a Hypothesis stateful test that
runs random operation sequences against the backend and `MemoryStore` side by side and compares
every observable result, reopen and crash tests, and the refusal of foreign files. Install
`msgbus-core[testing]` for pytest and Hypothesis.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from msgbus_core.cursor_testing import CursorConformance
from msgbus_core.errors import (
    ConflictError,
    GapError,
    InvalidArgumentError,
    PermissionDeniedError,
    SchemaError,
    StorageError,
    StorageFullError,
)
from msgbus_core.fifo_lease_testing import FifoLeaseConformance
from msgbus_core.limits import DELETE_TOPIC, MAX_STORED_INT, U64_MAX
from msgbus_core.memory import MemoryStore
from msgbus_core.model import (
    FifoQueueSummary,
    Message,
    NodeId,
    PeerSyncState,
    TombstoneRange,
    TopicHead,
)
from msgbus_core.ops import (
    AckOp,
    AppendOp,
    CompactOp,
    DeleteRangeOp,
    DeleteResult,
    EnqueueOp,
    Outcome,
    ProbeOp,
    PruneResult,
    PruneSyncStatesOp,
    RecordSyncStateOp,
    RejectOp,
    ReplicateOp,
    ReplicateResult,
    TrimOp,
    TrimResult,
    WriteOp,
)
from msgbus_core.publish_key_testing import PublishKeyConformance
from msgbus_core.store import MessageSummary, MsgbusStore, StoreFactory, read_size

LOCAL = NodeId("tenant", "default", "local")
REMOTE = NodeId("tenant", "default", "remote")
TARGET = NodeId("tenant", "default", "worker")


def append_op(topic: str, payload: bytes, n: int, origin: NodeId = LOCAL) -> AppendOp:
    """An AppendOp with a deterministic id and timestamp derived from `n`."""
    return AppendOp(topic, origin, payload, {"n": str(n)}, f"id-{topic}-{n}", 1_000 + n)


def remote_message(head_id: int, payload: bytes = b"r", *, topic: str = "events") -> Message:
    """A message as a peer would send it for the REMOTE origin."""
    return Message(
        id=f"remote-{topic}-{head_id}",
        topic=topic,
        origin=REMOTE,
        head_id=head_id,
        payload=payload,
        headers={"h": "v"},
        created_at_ms=5_000 + head_id,
    )


def marker(head_id: int, tombstone: TombstoneRange, origin: NodeId = REMOTE) -> Message:
    """A delete marker message carrying `tombstone`."""
    return Message(
        id=f"marker-{origin.device_id}-{head_id}",
        topic=DELETE_TOPIC,
        origin=origin,
        head_id=head_id,
        payload=tombstone.to_marker_payload(),
        headers={},
        created_at_ms=9_000 + head_id,
    )


def write_one(store: MsgbusStore, op: WriteOp) -> Any:
    """Apply one op; return its result or raise its error."""
    [outcome] = store.write([op])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class FailingCommit:
    """A SQL store's writer connection whose COMMIT statement raises `error()` instead.

    For `StoreConformance.fail_commits` of a backend that sends COMMIT as a statement: the
    transaction's other statements run, and the commit fails as the backend's full disk does.
    """

    def __init__(self, con: Any, error: Callable[[], Exception]) -> None:
        self.con = con
        self._error = error

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise self._error()
        return self.con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


@contextlib.contextmanager
def failing_commits(store: Any, error: Callable[[], Exception]) -> Iterator[None]:
    """Make every COMMIT of `store` (a `SqlStore`) raise `error()` while the context lasts."""
    real = store._writer
    store._writer = FailingCommit(real, error)
    try:
        yield
    finally:
        store._writer = real


def snapshot(store: MsgbusStore, queues: Sequence[str] = ("jobs",)) -> dict[str, Any]:
    """Everything a client can observe of a store."""
    heads = store.list_heads()
    return {
        "heads": heads,
        "logs": {(h.topic, h.origin): store.fetch(h.topic, h.origin, 1, 100_000) for h in heads},
        "tombstones": store.list_tombstones(),
        "fronts": {queue: store.peek_fifo(queue) for queue in queues},
        "sync": store.list_sync_states(),
    }


def comparable(outcome: Outcome) -> object:
    """An outcome in a form two stores can be compared by: errors by class and message."""
    if isinstance(outcome, Exception):
        return (type(outcome).__name__, str(outcome))
    if isinstance(outcome, ReplicateResult):
        return (
            "replicate",
            outcome.changed,
            outcome.unchanged,
            comparable(outcome.error),
            outcome.rebased_at,
        )
    return outcome


class StoreFixtures:
    """The `path` and `store` fixtures, for a test class that sets `factory`.

    A backend's own tests use it as well as `StoreConformance`, which builds on it.
    """

    factory: ClassVar[StoreFactory]

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        """Where the database file goes."""
        return tmp_path / "msgbus.db"

    @pytest.fixture
    def location(self, path: Path) -> str:
        """What `factory.open` is given: the file's path, or a server store's database."""
        return str(path)

    @pytest.fixture
    def store(self, location: str) -> Iterator[MsgbusStore]:
        """A fresh, empty store."""
        store = self.factory.open(location)
        yield store
        store.close()


class StoreConformance(
    CursorConformance, PublishKeyConformance, FifoLeaseConformance, StoreFixtures
):
    """Subclass in a test module and set `factory` to the backend's StoreFactory.

    The durable cursor tests are `CursorConformance`'s (`msgbus_core.cursor_testing`), the
    idempotency key tests `PublishKeyConformance`'s (`msgbus_core.publish_key_testing`), the
    FIFO lease tests `FifoLeaseConformance`'s (`msgbus_core.fifo_lease_testing`).
    """

    persistent: ClassVar[bool] = True
    """False for stores that keep nothing across close and have no file (skips those tests)."""
    hypothesis_examples: ClassVar[int] = 40
    """How many random operation sequences the stateful test runs."""
    entry_point: ClassVar[str | None] = None
    """The store's name in the `msgbus.stores` entry point group, checked when set."""
    limits_stored_integers: ClassVar[bool] = True
    """False for stores that keep integers of any size (the memory store)."""
    downgrade_to_v1: ClassVar[tuple[str, ...]] = ()
    """Statements that turn a file of the current schema into one of schema version 1 (with
    its data), so the migration at open is tested; empty for a store without versions."""

    file_based: ClassVar[bool] = True
    """False for a store in a database server: the tests of a file's bytes do not apply."""

    @classmethod
    def execute_raw(cls, location: str, *statements: str) -> None:
        """Run `statements` on the database at `location` with the backend's own driver."""
        raise NotImplementedError(f"{cls.__name__} must implement execute_raw")

    @classmethod
    def stored_bytes(cls, location: str) -> int:
        """What the database at `location` takes, measured without the store: the file."""
        return Path(location).stat().st_size

    @classmethod
    def unreachable_location(cls, location: str) -> str:
        """A location next to `location` that cannot be opened at all."""
        return str(Path(location).parent / "missing-directory" / "msgbus.db")

    def new_location(self) -> tuple[str, Callable[[], None]]:
        """A location for one more fresh store, and what removes it afterwards."""
        directory = Path(tempfile.mkdtemp(prefix="msgbus-conformance-"))
        return str(directory / "msgbus.db"), lambda: shutil.rmtree(directory, ignore_errors=True)

    def fail_commits(self, store: MsgbusStore) -> contextlib.AbstractContextManager[None]:
        """A context in which every commit of `store` fails the way a full disk makes it fail."""
        raise NotImplementedError(f"{type(self).__name__} must implement fail_commits")

    @pytest.fixture
    def db_file(self, location: str) -> str:
        """`location`, for the tests of a store's file: skipped for a store that keeps none."""
        if not self.persistent:
            pytest.skip("this store keeps nothing across close and has no file")
        return location

    # -- appends and reads ------------------------------------------------------------------------

    def test_append_assigns_gap_free_heads_from_one_per_log(self, store: MsgbusStore) -> None:
        outcomes = store.write(
            [
                append_op("events", b"a", 1),
                append_op("events", b"b", 2),
                append_op("other", b"c", 3),
                append_op("events", b"d", 4, origin=REMOTE),
            ]
        )
        heads = [o.head_id for o in outcomes if isinstance(o, Message)]
        assert heads == [1, 2, 1, 1]
        assert store.get_head("events", LOCAL) == 2
        assert store.get_head("missing", LOCAL) == 0

    def test_append_returns_the_stored_message(self, store: MsgbusStore) -> None:
        message = write_one(store, append_op("events", b"hello", 7))
        assert message == Message("id-events-7", "events", LOCAL, 1, b"hello", {"n": "7"}, 1007)
        assert store.fetch("events", LOCAL, 1, 10) == [message]

    def test_fetch_pages_in_head_order_from_a_head(self, store: MsgbusStore) -> None:
        store.write([append_op("events", bytes([n]), n) for n in range(1, 11)])
        page = store.fetch("events", LOCAL, 4, 3)
        assert [m.head_id for m in page] == [4, 5, 6]
        assert [m.payload for m in page] == [bytes([4]), bytes([5]), bytes([6])]
        assert store.fetch("events", LOCAL, 0, 2)[0].head_id == 1
        assert store.fetch("events", LOCAL, 11, 10) == []
        assert store.fetch("events", LOCAL, U64_MAX, 10) == []
        assert store.fetch("events", REMOTE, 1, 10) == []

    def test_fetch_within_max_bytes_ends_before_the_message_that_would_not_fit(
        self, store: MsgbusStore
    ) -> None:
        store.write([AppendOp("big", LOCAL, bytes(100), {}, f"b{n}", n) for n in range(10)])

        def heads(page: list[Message]) -> list[int]:
            return [m.head_id for m in page]

        assert heads(store.fetch("big", LOCAL, 1, 10, max_bytes=300)) == [1, 2, 3]
        assert heads(store.fetch("big", LOCAL, 1, 10, max_bytes=299)) == [1, 2]
        assert heads(store.fetch("big", LOCAL, 4, 10, max_bytes=250)) == [4, 5]
        assert heads(store.fetch("big", LOCAL, 9, 10, max_bytes=10_000)) == [9, 10]
        # The count still bounds the page, and no bound at all is the whole page.
        assert heads(store.fetch("big", LOCAL, 1, 2, max_bytes=10_000)) == [1, 2]
        assert heads(store.fetch("big", LOCAL, 1, 10, max_bytes=None)) == list(range(1, 11))
        assert store.fetch("big", LOCAL, 11, 10, max_bytes=1) == []

    def test_fetch_within_max_bytes_returns_a_larger_message_alone(
        self, store: MsgbusStore
    ) -> None:
        store.write([AppendOp("big", LOCAL, bytes(5_000), {}, f"b{n}", n) for n in range(3)])
        for max_bytes in (0, 1, 4_999, 9_999):
            page = store.fetch("big", LOCAL, 2, 10, max_bytes=max_bytes)
            assert [m.head_id for m in page] == [2]
            assert page[0].payload == bytes(5_000)

    def test_fetch_within_max_bytes_counts_headers_and_not_erased_payloads(
        self, store: MsgbusStore
    ) -> None:
        # {"k":"v"} is 9 characters of stored JSON: each message counts 10 + 9 = 19.
        store.write([AppendOp("h", LOCAL, bytes(10), {"k": "v"}, f"h{n}", n) for n in range(4)])
        page = store.fetch("h", LOCAL, 1, 10, max_bytes=38)
        assert [m.head_id for m in page] == [1, 2]
        assert sum(read_size(m) for m in page) == 38
        assert len(store.fetch("h", LOCAL, 1, 10, max_bytes=37)) == 1
        # A deleted row holds no payload and no headers, so it counts nothing.
        store.write([DeleteRangeOp("h", LOCAL, 1, 3, "del", 9)])
        page = store.fetch("h", LOCAL, 1, 10, max_bytes=19)
        assert [(m.head_id, m.deleted) for m in page] == [
            (1, True),
            (2, True),
            (3, True),
            (4, False),
        ]

    def test_empty_payload_and_headers_round_trip(self, store: MsgbusStore) -> None:
        stored = write_one(store, AppendOp("e", LOCAL, b"", {}, "x", 0))
        assert store.fetch("e", LOCAL, 1, 1) == [stored]
        assert stored.payload == b""
        assert dict(stored.headers) == {}

    def test_unicode_names_and_binary_payloads_round_trip(self, store: MsgbusStore) -> None:
        origin = NodeId("tënant", "bl ü", "dévice ✓")
        headers = {"ключ": "значение", "k": "✓"}
        op = AppendOp("tópico/ñ ✓", origin, bytes(range(256)), headers, "i", 1)
        stored = write_one(store, op)
        assert store.fetch(op.topic, origin, 1, 1) == [stored]
        assert store.list_heads()[0].origin == origin

    def test_list_heads_orders_by_topic_then_origin_key(self, store: MsgbusStore) -> None:
        a, b = NodeId("a", "a", "a"), NodeId("b", "a", "a")
        store.write(
            [
                append_op("zeta", b"", 1, origin=b),
                append_op("alpha", b"", 2, origin=b),
                append_op("alpha", b"", 3, origin=a),
                append_op("Beta", b"", 4, origin=a),
                append_op("alpha", b"", 5, origin=a),
            ]
        )
        heads = [(h.topic, h.origin.key, h.head_id) for h in store.list_heads()]
        assert heads == [
            ("Beta", "a/a/a", 1),
            ("alpha", "a/a/a", 2),
            ("alpha", "b/a/a", 1),
            ("zeta", "b/a/a", 1),
        ]

    def test_list_heads_pages_by_key_in_code_point_order(self, store: MsgbusStore) -> None:
        # Origins whose columns sort one way and whose keys the other ("a" < "a-b" but
        # "a/..." > "a-b/..."), and topics beyond ASCII.
        origins = [NodeId("a", "x", "y"), NodeId("a-b", "x", "y"), NodeId("a", "x-", "y")]
        topics = ["t", "t-", "é", "\U0001f600", "T"]
        store.write(
            [
                append_op(topic, b"", n, origin=origin)
                for n, (topic, origin) in enumerate(
                    (topic, origin) for topic in topics for origin in origins
                )
            ]
        )
        everything = store.list_heads()
        assert [(h.topic, h.origin.key) for h in everything] == sorted(
            (h.topic, h.origin.key) for h in everything
        )
        for size in (1, 2, 7):
            pages: list[TopicHead] = []
            after: tuple[str, str] | None = None
            while page := store.list_heads(after=after, limit=size):
                assert len(page) <= size
                pages += page
                after = (page[-1].topic, page[-1].origin.key)
            assert pages == everything
        # A key that no log has starts right after where it would be.
        [next_log] = store.list_heads(after=("t", "a/x-/y~"), limit=1)
        assert (next_log.topic, next_log.origin.key) == ("t", "a/x/y")
        assert store.list_heads(after=("\U0010ffff", ""), limit=5) == []
        assert store.list_heads(limit=0) == []

    def test_origins_that_share_a_joined_string_stay_apart(self, store: MsgbusStore) -> None:
        # Parts cannot contain "/", but a backend that joins parts naively could still collide
        # on other separators; distinct NodeIds must always be distinct logs.
        one, two = NodeId("a b", "c", "d"), NodeId("a", "b c", "d")
        store.write([append_op("t", b"1", 1, origin=one), append_op("t", b"2", 2, origin=two)])
        assert store.get_head("t", one) == 1
        assert store.get_head("t", two) == 1

    # -- deletes ----------------------------------------------------------------------------------

    def test_delete_range_erases_rows_and_appends_a_marker(self, store: MsgbusStore) -> None:
        store.write([append_op("events", b"p%d" % n, n) for n in range(1, 4)])
        result = write_one(store, DeleteRangeOp("events", LOCAL, 2, 3, "m1", 50))
        assert isinstance(result, DeleteResult)
        assert result.deleted_count == 2
        tombstone = TombstoneRange("events", LOCAL, 2, 3, 50)
        assert result.tombstone == tombstone
        assert result.marker == Message(
            "m1", DELETE_TOPIC, LOCAL, 1, tombstone.to_marker_payload(), {}, 50
        )
        rows = store.fetch("events", LOCAL, 1, 10)
        assert [(m.deleted, m.payload, dict(m.headers)) for m in rows] == [
            (False, b"p1", {"n": "1"}),
            (True, b"", {}),
            (True, b"", {}),
        ]
        assert store.get_head("events", LOCAL) == 3
        assert store.fetch(DELETE_TOPIC, LOCAL, 1, 10) == [result.marker]
        assert store.list_tombstones() == [tombstone]

    def test_delete_range_is_clamped_to_the_current_head(self, store: MsgbusStore) -> None:
        store.write([append_op("events", b"x", n) for n in range(1, 3)])
        result = write_one(store, DeleteRangeOp("events", LOCAL, 0, U64_MAX, "m", 1))
        assert result.deleted_count == 2
        assert result.tombstone == TombstoneRange("events", LOCAL, 1, 2, 1)
        later = write_one(store, append_op("events", b"new", 3))
        assert later.head_id == 3
        assert not later.deleted
        assert later.payload == b"new"

    def test_delete_range_past_the_head_records_nothing(self, store: MsgbusStore) -> None:
        write_one(store, append_op("events", b"x", 1))
        result = write_one(store, DeleteRangeOp("events", LOCAL, 5, 9, "m", 1))
        assert result == DeleteResult(0)
        empty = write_one(store, DeleteRangeOp("nothing", LOCAL, 1, 9, "m2", 1))
        assert empty == DeleteResult(0)
        assert store.list_tombstones() == []
        assert store.get_head(DELETE_TOPIC, LOCAL) == 0

    def test_delete_range_counts_only_newly_deleted_rows(self, store: MsgbusStore) -> None:
        store.write([append_op("events", b"x", n) for n in range(1, 5)])
        assert write_one(store, DeleteRangeOp("events", LOCAL, 1, 2, "m1", 1)).deleted_count == 2
        again = write_one(store, DeleteRangeOp("events", LOCAL, 1, 3, "m2", 2))
        assert again.deleted_count == 1
        assert again.marker.head_id == 2

    def test_delete_range_rejects_reversed_bounds(self, store: MsgbusStore) -> None:
        write_one(store, append_op("events", b"x", 1))
        with pytest.raises(InvalidArgumentError, match="from_head_id"):
            write_one(store, DeleteRangeOp("events", LOCAL, 3, 2, "m", 1))
        assert store.get_head(DELETE_TOPIC, LOCAL) == 0

    def test_duplicate_tombstone_keeps_the_first(self, store: MsgbusStore) -> None:
        store.write([append_op("events", b"x", n) for n in range(1, 3)])
        write_one(store, DeleteRangeOp("events", LOCAL, 1, 2, "m1", 10))
        write_one(store, DeleteRangeOp("events", LOCAL, 1, 2, "m2", 20))
        assert store.list_tombstones() == [TombstoneRange("events", LOCAL, 1, 2, 10)]
        assert store.get_head(DELETE_TOPIC, LOCAL) == 2

    @pytest.mark.parametrize(
        ("spans", "deleted"),
        [
            ([(1, 2), (3, 4)], [1, 2, 3, 4]),  # adjacent: one range
            ([(1, 2), (4, 5)], [1, 2, 4, 5]),  # one head apart: head 3 stays
            ([(1, 3), (2, 5)], [1, 2, 3, 4, 5]),  # overlapping
            ([(1, 6), (2, 3)], [1, 2, 3, 4, 5, 6]),  # one inside another
            ([(2, 3), (1, 6)], [1, 2, 3, 4, 5, 6]),  # one swallowing another
            ([(6, 6), (1, 1), (4, 4), (3, 3), (2, 2)], [1, 2, 3, 4, 6]),  # bridging two
        ],
    )
    @pytest.mark.parametrize("stored", [0, 4])
    def test_markers_erase_exactly_the_union_of_their_ranges(
        self, store: MsgbusStore, spans: list[tuple[int, int]], deleted: list[int], stored: int
    ) -> None:
        # Heads 1..stored are stored before the markers and the rest arrive after them, so both
        # the erasing of stored rows and the covering of later arrivals are checked.
        before = [remote_message(h) for h in range(1, stored + 1)]
        assert write_one(store, ReplicateOp(before)).error is None
        tombstones = [TombstoneRange("events", REMOTE, a, b, n) for n, (a, b) in enumerate(spans)]
        markers = [marker(n, t) for n, t in enumerate(tombstones, 1)]
        assert write_one(store, ReplicateOp(markers)).error is None
        after = [remote_message(h) for h in range(stored + 1, 9)]
        assert write_one(store, ReplicateOp(after)).error is None
        rows = store.fetch("events", REMOTE, 1, 10)
        assert [m.head_id for m in rows if m.deleted] == deleted
        assert all(m.payload == b"" and not m.headers for m in rows if m.deleted)
        # Every tombstone is listed as it was made, merged or not.
        assert store.list_tombstones() == sorted(
            tombstones, key=lambda t: (t.from_head_id, t.to_head_id)
        )

    def test_single_head_deletes_cover_what_they_should_across_a_reopen(self, db_file: str) -> None:
        store = self.factory.open(str(db_file))
        try:
            store.write([append_op("events", b"x", n) for n in range(1, 8)])
            store.write([DeleteRangeOp("events", LOCAL, h, h, f"m{h}", h) for h in (1, 3, 5)])
            write_one(store, ReplicateOp([remote_message(1)]))
            spans = [(1, 1), (4, 5), (3, 3), (8, 8)]  # merged: 1..1, 3..5, 8..8
            remote = [TombstoneRange("events", REMOTE, a, b, 1) for a, b in spans]
            write_one(store, ReplicateOp([marker(n, t) for n, t in enumerate(remote, 1)]))
        finally:
            store.close()
        reopened = self.factory.open(str(db_file))
        try:
            write_one(reopened, DeleteRangeOp("events", LOCAL, 2, 2, "m2", 2))
            again = write_one(reopened, DeleteRangeOp("events", LOCAL, 3, 3, "m3-again", 30))
            assert again.deleted_count == 0
            later = write_one(reopened, append_op("events", b"later", 8))
            assert (later.head_id, later.deleted) == (8, False)
            local = reopened.fetch("events", LOCAL, 1, 10)
            assert [m.head_id for m in local if m.deleted] == [1, 2, 3, 5]
            result = write_one(reopened, ReplicateOp([remote_message(h) for h in range(1, 10)]))
            assert result.error is None
            rows = reopened.fetch("events", REMOTE, 1, 10)
            assert [m.head_id for m in rows if m.deleted] == [1, 3, 4, 5, 8]
            local_tombstones = [t for t in reopened.list_tombstones() if t.origin == LOCAL]
            # The duplicate of 3..3 kept the first delete's time.
            assert [(t.from_head_id, t.created_at_ms) for t in local_tombstones] == [
                (1, 1),
                (2, 2),
                (3, 3),
                (5, 5),
            ]
        finally:
            reopened.close()

    # -- replication ------------------------------------------------------------------------------

    def test_replicated_messages_keep_their_heads_ids_and_times(self, store: MsgbusStore) -> None:
        messages = [remote_message(1), remote_message(2)]
        result = write_one(store, ReplicateOp(messages))
        assert result == ReplicateResult(messages, 0)
        assert store.fetch("events", REMOTE, 1, 10) == messages
        assert store.get_head("events", REMOTE) == 2

    def test_identical_replicated_message_is_a_no_op(self, store: MsgbusStore) -> None:
        write_one(store, ReplicateOp([remote_message(1)]))
        result = write_one(store, ReplicateOp([remote_message(1)]))
        assert result == ReplicateResult([], 1)

    def test_replicated_gap_is_rejected_and_earlier_messages_kept(self, store: MsgbusStore) -> None:
        result = write_one(store, ReplicateOp([remote_message(1), remote_message(3)]))
        assert result.changed == [remote_message(1)]
        assert isinstance(result.error, GapError)
        assert "local_head=1" in str(result.error)
        assert store.get_head("events", REMOTE) == 1

    def test_replicated_conflict_is_reported(self, store: MsgbusStore) -> None:
        write_one(store, ReplicateOp([remote_message(1, b"one")]))
        result = write_one(store, ReplicateOp([remote_message(1, b"two")]))
        assert isinstance(result.error, ConflictError)
        assert store.fetch("events", REMOTE, 1, 1)[0].payload == b"one"

    def test_replicated_deleted_copy_with_its_marker_wins_and_is_erased(
        self, store: MsgbusStore
    ) -> None:
        deleted = _deleted(remote_message(1, b"secret"))
        tombstone = TombstoneRange("events", REMOTE, 1, 1, 1)
        # The marker arrives first, here in the same transaction.
        outcomes = store.write([ReplicateOp([marker(1, tombstone)]), ReplicateOp([deleted])])
        assert outcomes[1] == ReplicateResult([deleted.erased()], 0)
        stored = store.fetch("events", REMOTE, 1, 1)[0]
        assert stored.deleted
        assert stored.payload == b""
        # The live copy arriving again after the delete changes nothing: deleted wins.
        assert write_one(store, ReplicateOp([remote_message(1, b"secret")])).unchanged == 1
        # Nor does the deleted copy again: its marker still covers it.
        assert write_one(store, ReplicateOp([deleted])) == ReplicateResult([], 1)

    def test_a_deleted_copy_of_a_delete_marker_is_refused(self, store: MsgbusStore) -> None:
        # A relay that sent the marker deleted would have the delete never applied here.
        write_one(store, ReplicateOp([remote_message(1, b"secret")]))
        real = marker(1, TombstoneRange("events", REMOTE, 1, 1, 1))
        result = write_one(store, ReplicateOp([_deleted(real)]))
        assert isinstance(result.error, PermissionDeniedError)
        assert (result.changed, result.unchanged) == ([], 0)
        assert (
            f"deleted copy of a delete marker refused at topic={DELETE_TOPIC} "
            f"origin={REMOTE.key} head_id=1: a delete marker is never deleted"
        ) in str(result.error)
        assert store.get_head(DELETE_TOPIC, REMOTE) == 0
        # The genuine marker is still taken, and its delete applies.
        assert write_one(store, ReplicateOp([real])).error is None
        assert store.fetch("events", REMOTE, 1, 1)[0].deleted

    def test_a_deleted_copy_without_a_covering_marker_is_refused_after_the_good_ones(
        self, store: MsgbusStore
    ) -> None:
        # A marker of heads 1..2 is held; head 3 is sent deleted without one.
        write_one(store, ReplicateOp([marker(1, TombstoneRange("events", REMOTE, 1, 2, 1))]))
        batch = [
            _deleted(remote_message(1)),
            remote_message(2),
            _deleted(remote_message(3)),
            remote_message(4),
        ]
        result = write_one(store, ReplicateOp(batch))
        assert [(m.head_id, m.deleted) for m in result.changed] == [(1, True), (2, True)]
        assert isinstance(result.error, PermissionDeniedError)
        assert (
            f"deleted copy without a covering delete marker from origin {REMOTE.key} "
            f"refused at topic=events origin={REMOTE.key} head_id=3"
        ) in str(result.error)
        assert store.get_head("events", REMOTE) == 2
        # A copy of a head stored live is not deleted by a peer's say-so either.
        write_one(store, ReplicateOp([remote_message(3, b"live")]))
        refused = write_one(store, ReplicateOp([_deleted(remote_message(3, b"live"))]))
        assert isinstance(refused.error, PermissionDeniedError)
        assert not store.fetch("events", REMOTE, 3, 1)[0].deleted
        # Nor a message of a log not held yet.
        fresh = write_one(store, ReplicateOp([_deleted(remote_message(1, topic="other"))]))
        assert isinstance(fresh.error, PermissionDeniedError)
        assert store.get_head("other", REMOTE) == 0

    def test_a_refused_deleted_copy_is_taken_once_its_marker_is_held(
        self, store: MsgbusStore
    ) -> None:
        batch = [remote_message(1), _deleted(remote_message(2)), remote_message(3)]
        refused = write_one(store, ReplicateOp(batch))
        assert isinstance(refused.error, PermissionDeniedError)
        assert store.get_head("events", REMOTE) == 1
        write_one(store, ReplicateOp([marker(1, TombstoneRange("events", REMOTE, 2, 2, 1))]))
        result = write_one(store, ReplicateOp(batch))
        assert (result.error, result.unchanged) == (None, 1)
        rows = store.fetch("events", REMOTE, 1, 10)
        assert [(m.head_id, m.deleted) for m in rows] == [(1, False), (2, True), (3, False)]

    def test_a_deleted_copy_of_a_trimmed_head_is_unchanged_without_its_marker(
        self, store: MsgbusStore
    ) -> None:
        write_one(store, ReplicateOp([marker(1, TombstoneRange("events", REMOTE, 1, 2, 1))]))
        write_one(store, ReplicateOp([remote_message(h) for h in range(1, 5)]))
        # The trim drops the tombstone (wholly below the first head) with the rows.
        write_one(store, TrimOp("events", REMOTE, 3))
        assert store.list_tombstones() == []
        result = write_one(store, ReplicateOp([_deleted(remote_message(h)) for h in (1, 2)]))
        assert result == ReplicateResult([], 2)
        assert [m.head_id for m in store.fetch("events", REMOTE, 1, 10)] == [3, 4]

    def test_a_probe_commits_and_changes_nothing(self, store: MsgbusStore) -> None:
        write_one(store, append_op("events", b"1", 1))
        before = snapshot(store)
        assert store.write([ProbeOp()]) == [None]
        assert snapshot(store) == before
        # Among other ops it is just as inert.
        outcomes = store.write([ProbeOp(), append_op("events", b"2", 2), ProbeOp()])
        assert (outcomes[0], outcomes[2]) == (None, None)
        assert [m.head_id for m in store.fetch("events", LOCAL, 1, 10)] == [1, 2]

    def test_replicated_message_over_the_header_limits_is_refused(self, store: MsgbusStore) -> None:
        crowded = Message(
            **{**_fields(remote_message(1)), "headers": {f"k{i}": "v" for i in range(65)}}
        )
        result = write_one(store, ReplicateOp([crowded]))
        assert isinstance(result.error, InvalidArgumentError)
        assert "message.headers has 65 entries; the limit is 64" in str(result.error)
        assert store.list_heads() == []

    def test_replicated_head_zero_and_out_of_range_values_are_refused(
        self, store: MsgbusStore
    ) -> None:
        bad_head = write_one(store, ReplicateOp([remote_message(0)]))
        assert isinstance(bad_head.error, InvalidArgumentError)
        huge_time = Message(**{**_fields(remote_message(1)), "created_at_ms": MAX_STORED_INT + 1})
        result = write_one(store, ReplicateOp([huge_time]))
        assert isinstance(result.error, InvalidArgumentError)
        assert "created_at_ms" in str(result.error)
        assert store.list_heads() == []

    def test_marker_before_data_tombstones_data_that_arrives_later(
        self, store: MsgbusStore
    ) -> None:
        tombstone = TombstoneRange("events", REMOTE, 1, 1, 1)
        assert write_one(store, ReplicateOp([marker(1, tombstone)])).error is None
        result = write_one(store, ReplicateOp([remote_message(1, b"x"), remote_message(2)]))
        assert result.error is None
        rows = store.fetch("events", REMOTE, 1, 10)
        assert [(m.deleted, m.payload) for m in rows] == [(True, b""), (False, b"r")]

    def test_marker_after_data_tombstones_stored_rows(self, store: MsgbusStore) -> None:
        write_one(store, ReplicateOp([remote_message(1), remote_message(2)]))
        tombstone = TombstoneRange("events", REMOTE, 2, 2, 1)
        write_one(store, ReplicateOp([marker(1, tombstone)]))
        rows = store.fetch("events", REMOTE, 1, 10)
        assert [m.deleted for m in rows] == [False, True]
        assert store.list_tombstones() == [tombstone]

    def test_malformed_marker_is_refused_before_anything_is_stored(
        self, store: MsgbusStore
    ) -> None:
        bad = Message("m", DELETE_TOPIC, REMOTE, 1, b"{not json", {}, 1)
        result = write_one(store, ReplicateOp([bad]))
        assert isinstance(result.error, InvalidArgumentError)
        assert store.get_head(DELETE_TOPIC, REMOTE) == 0

    def test_forged_marker_for_another_origin_is_refused(self, store: MsgbusStore) -> None:
        write_one(store, append_op("events", b"mine", 1))
        forged = marker(1, TombstoneRange("events", LOCAL, 1, 1, 1), origin=REMOTE)
        result = write_one(store, ReplicateOp([forged]))
        assert isinstance(result.error, PermissionDeniedError)
        assert store.fetch("events", LOCAL, 1, 1)[0].payload == b"mine"
        assert store.list_tombstones() == []

    # -- FIFO -------------------------------------------------------------------------------------

    def _enqueue(self, store: MsgbusStore, name: str, queue: str = "jobs") -> Any:
        return write_one(
            store, EnqueueOp(queue, "work", LOCAL, TARGET, name.encode(), {"k": name}, name, 7)
        )

    def test_fifo_enqueue_and_peek_return_the_front(self, store: MsgbusStore) -> None:
        assert store.peek_fifo("jobs") is None
        first = self._enqueue(store, "a")
        self._enqueue(store, "b")
        assert (first.sequence, first.attempts, first.target) == (1, 0, TARGET)
        assert store.peek_fifo("jobs") == first

    def test_fifo_ack_only_accepts_the_front(self, store: MsgbusStore) -> None:
        self._enqueue(store, "a")
        self._enqueue(store, "b")
        assert write_one(store, AckOp("jobs", "b")) is False
        assert write_one(store, AckOp("jobs", "unknown")) is False
        assert write_one(store, AckOp("jobs", "a")) is True
        front = store.peek_fifo("jobs")
        assert front is not None
        assert front.id == "b"
        assert write_one(store, AckOp("empty", "a")) is False

    def test_fifo_reject_bumps_attempts_and_keeps_the_front(self, store: MsgbusStore) -> None:
        self._enqueue(store, "a")
        self._enqueue(store, "b")
        assert write_one(store, RejectOp("jobs", "b")) is False
        assert write_one(store, RejectOp("jobs", "a")) is True
        assert write_one(store, RejectOp("jobs", "a")) is True
        front = store.peek_fifo("jobs")
        assert front is not None
        assert (front.id, front.attempts, front.sequence) == ("a", 2, 1)

    def test_fifo_queues_list_depth_and_attempts_by_name_in_pages(self, store: MsgbusStore) -> None:
        assert store.list_fifo_queues() == []
        for queue, name in [("jobs", "a"), ("jobs", "b"), ("émoji", "c"), ("Z", "d"), ("q", "e")]:
            self._enqueue(store, name, queue=queue)
        write_one(store, RejectOp("jobs", "a"))
        write_one(store, RejectOp("jobs", "a"))
        write_one(store, AckOp("q", "e"))  # an emptied queue is not listed
        everything = [
            FifoQueueSummary("Z", 1, 0),
            FifoQueueSummary("jobs", 2, 2),
            FifoQueueSummary("émoji", 1, 0),
        ]
        assert store.list_fifo_queues() == everything
        assert store.list_fifo_queues(limit=2) == everything[:2]
        assert store.list_fifo_queues(after="Z", limit=1) == everything[1:2]
        assert store.list_fifo_queues(after="k") == everything[2:]
        assert store.list_fifo_queues(after="émoji") == []
        assert store.list_fifo_queues(limit=0) == []

    def test_fifo_sequences_are_never_reused(self, store: MsgbusStore) -> None:
        self._enqueue(store, "a")
        write_one(store, AckOp("jobs", "a"))
        assert self._enqueue(store, "b").sequence == 2
        assert self._enqueue(store, "c", queue="other").sequence == 1

    # -- sync state and batches -------------------------------------------------------------------

    def test_sync_states_upsert_and_list_in_order(self, store: MsgbusStore) -> None:
        peer_level = PeerSyncState("http://b", last_attempt_at_ms=1, consecutive_failures=2)
        log_level = PeerSyncState("http://b", "events", REMOTE, 3, 4, 3, 5, 5, 0, "")
        other = PeerSyncState("http://a", last_error="boom")
        store.write([RecordSyncStateOp(s) for s in (log_level, peer_level, other)])
        assert store.list_sync_states() == [other, peer_level, log_level]
        updated = PeerSyncState("http://b", last_attempt_at_ms=9)
        write_one(store, RecordSyncStateOp(updated))
        assert store.list_sync_states() == [other, updated, log_level]

    def test_sync_states_page_by_key_in_code_point_order(self, store: MsgbusStore) -> None:
        # Prefixes, accents and a character beyond the BMP: code-point order, as Python sorts.
        peers = ["b", "a", "ab", "a\u00e9", "\u00e9", "\U0001f600", "A"]
        states = [PeerSyncState(peer) for peer in peers]
        states += [PeerSyncState("a", topic, REMOTE) for topic in ("z", "t\u00e9", "t")]
        states.append(PeerSyncState("a", "t", LOCAL))
        store.write([RecordSyncStateOp(s) for s in states])
        ordered = sorted(states, key=lambda s: s.sort_key)
        assert store.list_sync_states() == ordered
        for size in (1, 3, 100):
            pages: list[PeerSyncState] = []
            after: tuple[str, str, str] | None = None
            while page := store.list_sync_states(after=after, limit=size):
                assert len(page) <= size
                pages += page
                after = page[-1].sort_key
            assert pages == ordered
        # `after` need not be a stored key; a zero limit is an empty page.
        for after in (("a", "t", "~"), ("a\u00e8", "", ""), ("a", "", "")):
            expected = [s for s in ordered if s.sort_key > after]
            assert store.list_sync_states(after=after) == expected
            assert store.list_sync_states(after=after, limit=2) == expected[:2]
        assert store.list_sync_states(limit=0) == []
        assert store.list_sync_states(after=("\U0010ffff", "", "")) == []

    def test_pruning_deletes_every_row_of_unlisted_peers(self, store: MsgbusStore) -> None:
        kept = [PeerSyncState("http://a"), PeerSyncState("http://a", "events", REMOTE)]
        gone = [PeerSyncState("http://b"), PeerSyncState("http://b", "events", REMOTE)]
        gone += [PeerSyncState("http://b", "other", REMOTE), PeerSyncState("http://c")]
        store.write([RecordSyncStateOp(s) for s in kept + gone])
        result = write_one(store, PruneSyncStatesOp(frozenset({"http://a", "http://unseen"})))
        assert result == PruneResult({"http://b": 3, "http://c": 1})
        assert store.list_sync_states() == kept
        assert write_one(store, PruneSyncStatesOp(frozenset({"http://a"}))) == PruneResult({})
        assert write_one(store, PruneSyncStatesOp(frozenset())) == PruneResult({"http://a": 2})
        assert store.list_sync_states() == []

    def test_a_failing_op_does_not_affect_the_rest_of_its_batch(self, store: MsgbusStore) -> None:
        outcomes = store.write(
            [
                append_op("events", b"1", 1),
                DeleteRangeOp("events", LOCAL, 5, 1, "m", 1),
                append_op("events", b"2", 2),
            ]
        )
        assert isinstance(outcomes[1], InvalidArgumentError)
        assert [m.payload for m in store.fetch("events", LOCAL, 1, 10)] == [b"1", b"2"]

    def test_check_and_schema_version(self, store: MsgbusStore) -> None:
        store.check()
        assert store.schema_version >= 1

    # -- retention: trimming a log's prefix ----------------------------------------------------

    def _log(self, store: MsgbusStore, n: int, topic: str = "events") -> list[Message]:
        return [write_one(store, append_op(topic, b"payload-%d" % i, i)) for i in range(1, n + 1)]

    def test_trim_removes_a_prefix_and_the_log_starts_at_its_new_first_head(
        self, store: MsgbusStore
    ) -> None:
        messages = self._log(store, 10)
        result = write_one(store, TrimOp("events", LOCAL, 4))
        assert result == TrimResult(3, sum(read_size(m) for m in messages[:3]), 4)
        assert [m.head_id for m in store.fetch("events", LOCAL, 1, 100)] == list(range(4, 11))
        head = store.log_head("events", LOCAL)
        assert (head.head_id, head.first_head_id, head.count) == (10, 4, 7)
        assert head.bytes == sum(read_size(m) for m in messages[3:])
        assert store.list_heads() == [head]
        assert write_one(store, append_op("events", b"next", 11)).head_id == 11
        # Trimming below the first head again removes nothing.
        assert write_one(store, TrimOp("events", LOCAL, 2)) == TrimResult(0, 0, 4)

    def test_a_log_trimmed_empty_keeps_its_head_and_never_reuses_one(
        self, store: MsgbusStore
    ) -> None:
        self._log(store, 5)
        result = write_one(store, TrimOp("events", LOCAL, 1_000))
        assert (result.removed, result.first_head_id) == (5, 0)
        head = store.log_head("events", LOCAL)
        assert (head.head_id, head.first_head_id, head.bytes, head.count) == (5, 0, 0, 0)
        assert store.get_head("events", LOCAL) == 5
        assert store.list_heads() == [head]
        assert store.fetch("events", LOCAL, 1, 100) == []
        assert write_one(store, append_op("events", b"again", 6)).head_id == 6
        assert store.log_head("events", LOCAL).first_head_id == 6

    def test_an_unknown_log_has_no_extent(self, store: MsgbusStore) -> None:
        assert store.log_head("missing", LOCAL) == TopicHead("missing", LOCAL, 0, 0, 0)
        assert write_one(store, TrimOp("missing", LOCAL, 10)) == TrimResult(0, 0, 0)
        assert store.list_heads() == []

    def test_bytes_follow_appends_deletes_replicates_and_trims(self, store: MsgbusStore) -> None:
        self._log(store, 6)
        store.write([DeleteRangeOp("events", LOCAL, 2, 3, "m", 1)])
        write_one(store, TrimOp("events", LOCAL, 2))
        store.write([ReplicateOp([remote_message(1, b"abc"), remote_message(2, b"")])])
        for head in store.list_heads():
            held = store.fetch(head.topic, head.origin, 1, 100)
            assert head.bytes == sum(read_size(m) for m in held), head
            assert head.count == len(held)

    def test_trim_drops_erased_rows_and_tombstones_below_the_first_head(
        self, store: MsgbusStore
    ) -> None:
        self._log(store, 10)
        for n, (first, last) in enumerate([(2, 3), (4, 6), (8, 8)]):
            store.write([DeleteRangeOp("events", LOCAL, first, last, f"m{n}", n)])
        write_one(store, TrimOp("events", LOCAL, 5))
        spans = [
            (t.from_head_id, t.to_head_id) for t in store.list_tombstones() if t.topic == "events"
        ]
        # (2, 3) lay wholly below the first head; (4, 6) still covers held heads 5 and 6.
        assert spans == [(4, 6), (8, 8)]
        held = store.fetch("events", LOCAL, 1, 100)
        assert [(m.head_id, m.deleted) for m in held][:2] == [(5, True), (6, True)]

    def test_a_delete_marker_is_kept_while_a_message_it_covers_is_held(
        self, store: MsgbusStore
    ) -> None:
        self._log(store, 10)
        store.write([DeleteRangeOp("events", LOCAL, 1, 2, "m1", 1)])
        store.write([DeleteRangeOp("events", LOCAL, 6, 7, "m2", 2)])
        # Marker 1 covers heads 1..2 and marker 2 heads 6..7, all still held: nothing goes.
        assert write_one(store, TrimOp(DELETE_TOPIC, LOCAL, 100)).removed == 0
        write_one(store, TrimOp("events", LOCAL, 3))
        result = write_one(store, TrimOp(DELETE_TOPIC, LOCAL, 100))
        assert (result.removed, result.first_head_id) == (1, 2)
        write_one(store, TrimOp("events", LOCAL, 100))
        assert write_one(store, TrimOp(DELETE_TOPIC, LOCAL, 100)).removed == 1
        assert store.log_head(DELETE_TOPIC, LOCAL).first_head_id == 0

    def test_a_replicated_copy_of_a_trimmed_message_is_not_brought_back(
        self, store: MsgbusStore
    ) -> None:
        store.write([ReplicateOp([remote_message(h) for h in range(1, 6)])])
        write_one(store, TrimOp("events", REMOTE, 4))
        result = write_one(store, ReplicateOp([remote_message(h) for h in range(1, 7)]))
        assert (result.unchanged, [m.head_id for m in result.changed]) == (5, [6])
        assert [m.head_id for m in store.fetch("events", REMOTE, 1, 100)] == [4, 5, 6]

    def test_a_peers_trimmed_copy_starts_a_fresh_log_at_its_first_head(
        self, store: MsgbusStore
    ) -> None:
        batch = [remote_message(h) for h in range(1001, 1004)]
        refused = write_one(store, ReplicateOp(batch))
        assert isinstance(refused.error, GapError)
        assert not refused.changed
        result = write_one(store, ReplicateOp(batch, first_head_id=1001))
        assert (result.error, result.rebased_at, len(result.changed)) == (None, 1001, 3)
        head = store.log_head("events", REMOTE)
        assert (head.first_head_id, head.head_id) == (1001, 1003)
        assert store.fetch("events", REMOTE, 1, 10) == batch

    def test_a_peers_trimmed_copy_past_the_local_head_restarts_the_log_there(
        self, store: MsgbusStore
    ) -> None:
        store.write([ReplicateOp([remote_message(h) for h in range(1, 4)])])
        # A first head that does not start the batch, or that the local log reaches, changes
        # nothing: those are ordinary batches.
        assert write_one(store, ReplicateOp([remote_message(11)], first_head_id=10)).error
        same = write_one(store, ReplicateOp([remote_message(4)], first_head_id=4))
        assert (same.rebased_at, len(same.changed)) == (0, 1)
        result = write_one(store, ReplicateOp([remote_message(10)], first_head_id=10))
        assert (result.rebased_at, [m.head_id for m in result.changed]) == (10, [10])
        assert [m.head_id for m in store.fetch("events", REMOTE, 1, 100)] == [10]

    def test_a_peers_trimmed_copy_with_an_invalid_first_message_changes_nothing(
        self, store: MsgbusStore
    ) -> None:
        store.write([ReplicateOp([remote_message(h) for h in range(1, 4)])])
        bad = Message("", "events", REMOTE, 10, b"x", {}, 1)
        result = write_one(store, ReplicateOp([bad], first_head_id=10))
        assert isinstance(result.error, InvalidArgumentError)
        assert result.rebased_at == 0
        assert [m.head_id for m in store.fetch("events", REMOTE, 1, 100)] == [1, 2, 3]

    def test_summaries_give_heads_sizes_and_times_in_order(self, store: MsgbusStore) -> None:
        messages = self._log(store, 5)
        write_one(store, TrimOp("events", LOCAL, 2))
        assert store.summaries("events", LOCAL, 1, 3) == [
            MessageSummary(m.head_id, read_size(m), m.created_at_ms) for m in messages[1:4]
        ]
        assert store.summaries("events", LOCAL, 9, 3) == []
        assert store.summaries("missing", LOCAL, 1, 3) == []

    def test_disk_usage_reports_the_files(self, db_file: str) -> None:
        store = self.factory.open(str(db_file))
        try:
            store.write([append_op("events", bytes(4096), n) for n in range(1, 200)])
            usage = store.disk_usage()
            assert usage.file_bytes >= self.stored_bytes(db_file) > 0
            assert 0 <= usage.reusable_bytes <= usage.file_bytes
            assert usage.used_bytes >= 199 * 4096 // 2  # compression aside, the data is there
        finally:
            store.close()

    def test_a_compact_after_a_trim_frees_space_and_changes_no_data(self, db_file: str) -> None:
        store = self.factory.open(str(db_file))
        try:
            # Distinct random payloads: a store may compress repeated bytes away.
            for start in range(0, 600, 100):
                store.write(
                    [append_op("events", os.urandom(4096), n) for n in range(start, start + 100)]
                )
            before = store.disk_usage().used_bytes
            # Everything goes: a store may free space only in whole units (DuckDB's row groups).
            store.write([TrimOp("events", LOCAL, 601)])
            kept = snapshot(store)
            assert write_one(store, CompactOp()) is None
            assert snapshot(store) == kept
            assert store.disk_usage().used_bytes < before
        finally:
            store.close()

    def test_trimmed_starts_and_bytes_survive_a_reopen(self, db_file: str) -> None:
        store = self.factory.open(str(db_file))
        self._log(store, 6)
        self._log(store, 3, topic="emptied")
        store.write([TrimOp("events", LOCAL, 3), TrimOp("emptied", LOCAL, 100)])
        store.write([DeleteRangeOp("events", LOCAL, 5, 5, "m", 1)])
        before = snapshot(store)
        store.close()
        reopened = self.factory.open(str(db_file))
        try:
            assert snapshot(reopened) == before
            assert write_one(reopened, append_op("emptied", b"x", 9)).head_id == 4
        finally:
            reopened.close()

    def test_a_schema_1_file_is_migrated_at_open(self, db_file: str) -> None:
        if not self.downgrade_to_v1:
            pytest.skip("this store has no older schema")
        store = self.factory.open(str(db_file))
        self._log(store, 4)
        store.write([DeleteRangeOp("events", LOCAL, 2, 2, "m", 1)])
        version, before = store.schema_version, snapshot(store)
        store.close()
        self.execute_raw(db_file, *self.downgrade_to_v1)
        reopened = self.factory.open(str(db_file))
        try:
            assert reopened.schema_version == version
            assert snapshot(reopened) == before
        finally:
            reopened.close()
        again = self.factory.open(str(db_file))  # migrated once: opens as the current schema
        again.close()

    # -- persistence ------------------------------------------------------------------------------

    def test_reopen_keeps_everything(self, db_file: str) -> None:
        store = self.factory.open(str(db_file))
        store.write([append_op("events", b"x%d" % n, n) for n in range(1, 6)])
        store.write([DeleteRangeOp("events", LOCAL, 2, 3, "m", 1)])
        store.write([ReplicateOp([remote_message(1), remote_message(2)])])
        self._enqueue(store, "a")
        self._enqueue(store, "b")
        store.write([RejectOp("jobs", "a"), RecordSyncStateOp(PeerSyncState("p", "events"))])
        before = snapshot(store)
        store.close()
        reopened = self.factory.open(str(db_file))
        try:
            assert snapshot(reopened) == before
            assert write_one(reopened, append_op("events", b"next", 9)).head_id == 6
            assert self._enqueue(reopened, "c").sequence == 3
        finally:
            reopened.close()

    @pytest.mark.parametrize(
        "content", [b"this is not a database, it is a text file\n" * 200, bytes(range(256)) * 64]
    )
    def test_a_file_that_is_not_a_msgbus_database_is_refused_and_left_untouched(
        self, db_file: str, content: bytes
    ) -> None:
        if not self.file_based:
            pytest.skip("the store's database is not a file (its foreign tables are tested)")
        file = Path(db_file)
        file.write_bytes(content)
        with pytest.raises(SchemaError, match=str(file)):
            self.factory.open(db_file)
        assert file.read_bytes() == content

    def test_another_applications_database_is_refused(self, db_file: str) -> None:
        self.execute_raw(db_file, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        with pytest.raises(SchemaError, match="not a msgbus database") as raised:
            self.factory.open(str(db_file))
        assert "invoices" in str(raised.value)

    def test_a_meta_table_of_another_application_is_refused(self, db_file: str) -> None:
        self.execute_raw(
            db_file,
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "INSERT INTO meta VALUES ('application', 'someone-else')",
        )
        with pytest.raises(SchemaError, match="someone-else"):
            self.factory.open(str(db_file))

    def test_a_file_from_a_newer_schema_is_refused(self, db_file: str) -> None:
        store = self.factory.open(str(db_file))
        newer = store.schema_version + 1
        store.close()
        self.execute_raw(db_file, f"UPDATE meta SET value = '{newer}' WHERE key = 'schema_version'")
        with pytest.raises(SchemaError, match=rf"schema version {newer}.*upgrade"):
            self.factory.open(str(db_file))

    def test_a_path_that_cannot_be_opened_is_a_storage_error_not_a_schema_error(
        self, db_file: str
    ) -> None:
        with pytest.raises(StorageError) as raised:
            self.factory.open(self.unreachable_location(db_file))
        assert not isinstance(raised.value, SchemaError)

    def test_a_commit_survives_a_process_that_dies_without_closing(self, db_file: str) -> None:
        writer = textwrap.dedent(
            """
            import importlib, os, sys
            from msgbus_core import AppendOp, DeleteRangeOp, NodeId
            module, name = sys.argv[2].split(":")
            store = getattr(importlib.import_module(module), name).open(sys.argv[1])
            origin = NodeId("tenant", "default", "local")
            store.write([AppendOp("events", origin, b"x", {}, f"id{n}", n) for n in range(5)])
            store.write([AppendOp("events", origin, b"y", {}, "id5", 5)])
            store.write([DeleteRangeOp("events", origin, 1, 1, "m", 6)])
            os._exit(0)
            """
        )
        factory = f"{self.factory.__module__}:{getattr(self.factory, '__qualname__', '')}"
        subprocess.run(
            [sys.executable, "-c", writer, str(db_file), factory], timeout=60, check=True
        )
        store = self.factory.open(str(db_file))
        try:
            assert store.get_head("events", LOCAL) == 6
            rows = store.fetch("events", LOCAL, 1, 10)
            assert [m.id for m in rows] == [f"id{n}" for n in range(6)]
            assert [m.deleted for m in rows] == [True] + [False] * 5
            assert len(store.list_tombstones()) == 1
        finally:
            store.close()

    def test_a_failed_commit_applies_nothing_and_leaves_no_stale_head(
        self, db_file: str, store: MsgbusStore
    ) -> None:
        write_one(store, append_op("events", b"1", 1))
        doomed = [append_op("events", b"2", 2), append_op("events", b"3", 3)]
        with self.fail_commits(store), pytest.raises(StorageFullError, match="disk is full"):
            store.write([*doomed, DeleteRangeOp("events", LOCAL, 1, 1, "m", 5)])
        assert store.get_head("events", LOCAL) == 1
        assert store.list_tombstones() == []
        [message] = store.write([append_op("events", b"2", 2)])
        assert isinstance(message, Message)
        assert message.head_id == 2
        assert not message.deleted
        assert [m.head_id for m in store.fetch("events", LOCAL, 1, 10)] == [1, 2]

    def test_a_closed_store_refuses_every_call(self, db_file: str) -> None:
        store = self.factory.open(str(db_file))
        write_one(store, append_op("events", b"1", 1))
        store.close()
        store.close()
        with pytest.raises(StorageError, match="closed"):
            store.write([append_op("events", b"2", 2)])
        with pytest.raises(StorageError):
            store.fetch("events", LOCAL, 1, 10)

    # -- limits, concurrency and registration -----------------------------------------------------

    def test_out_of_range_values_fail_their_op_only(self, store: MsgbusStore) -> None:
        if not self.limits_stored_integers:
            pytest.skip("this store keeps integers of any size")
        too_late = AppendOp("events", LOCAL, b"x", {}, "late", MAX_STORED_INT + 1)
        outcomes = store.write(
            [append_op("events", b"1", 1), too_late, append_op("events", b"2", 2)]
        )
        assert isinstance(outcomes[1], InvalidArgumentError)
        assert "created_at_ms" in str(outcomes[1])
        assert [m.head_id for m in store.fetch("events", LOCAL, 1, U64_MAX)] == [1, 2]
        assert store.fetch("events", LOCAL, U64_MAX, U64_MAX) == []

    def test_readers_on_other_threads_see_only_committed_gap_free_pages(
        self, store: MsgbusStore
    ) -> None:
        batches, per_batch = 40, 25
        total = batches * per_batch
        errors: list[BaseException] = []
        seen: list[int] = []

        def read() -> None:
            try:
                head = 0
                while head < total:
                    new_head = store.get_head("events", LOCAL)
                    assert new_head >= head
                    page = store.fetch("events", LOCAL, 1, total)
                    assert [m.head_id for m in page] == list(range(1, len(page) + 1))
                    assert len(page) >= new_head
                    head = new_head
                    seen.append(head)
            except BaseException as error:
                errors.append(error)

        reader = threading.Thread(target=read)
        reader.start()
        for b in range(batches):
            store.write([append_op("events", b"p", b * per_batch + i) for i in range(per_batch)])
        reader.join(timeout=120)
        assert not reader.is_alive()
        assert errors == []
        assert seen[-1] == total

    def test_the_store_is_registered_as_its_entry_point(self) -> None:
        if self.entry_point is None:
            pytest.skip("no entry point name given")
        [entry] = [e for e in entry_points(group="msgbus.stores") if e.name == self.entry_point]
        assert entry.load() is self.factory

    # -- the model --------------------------------------------------------------------------------

    def test_behaves_like_the_reference_store(self) -> None:
        factory, new_location = self.factory, self.new_location

        class Machine(_ReferenceComparison):
            reopens = self.persistent

            def new_backend(self) -> tuple[str, Callable[[], None]]:
                return new_location()

            def open_backend(self, location: str) -> MsgbusStore:
                return factory.open(location)

        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=self.hypothesis_examples,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


def _fields(message: Message) -> dict[str, Any]:
    return {name: getattr(message, name) for name in Message.__slots__}


def _deleted(message: Message) -> Message:
    """`message` as a peer sends it deleted (the store erases the payload)."""
    return Message(**{**_fields(message), "deleted": True})


_TOPICS = st.sampled_from(["a", "b"])
_ORIGINS = st.sampled_from([LOCAL, REMOTE])
_PAYLOADS = st.sampled_from([b"", b"x", b"y"])
_QUEUES = st.sampled_from(["q1", "q2"])


class _ReferenceComparison(RuleBasedStateMachine):
    """Applies the same random operations to a backend and to MemoryStore and compares."""

    reopens: ClassVar[bool] = False
    """True when the backend keeps its file, so a step may close and reopen it."""

    def __init__(self) -> None:
        super().__init__()
        self.location, self.remove_location = self.new_backend()
        self.model = MemoryStore()
        self.backend = self.open_backend(self.location)
        self.counter = 0
        self.reopened = False

    def new_backend(self) -> tuple[str, Callable[[], None]]:
        raise NotImplementedError

    def open_backend(self, location: str) -> MsgbusStore:
        raise NotImplementedError

    def teardown(self) -> None:
        self.backend.close()
        self.remove_location()

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _both(self, ops: list[WriteOp]) -> None:
        expected = [comparable(o) for o in self.model.write(ops)]
        actual = [comparable(o) for o in self.backend.write(ops)]
        assert actual == expected

    def _append(self, topic: str, origin: NodeId, payload: bytes) -> AppendOp:
        n = self._next()
        return AppendOp(topic, origin, payload, {"n": str(n % 3)}, f"id{n}", n)

    @rule(topic=_TOPICS, origin=_ORIGINS, payload=_PAYLOADS, count=st.integers(1, 4))
    def append(self, topic: str, origin: NodeId, payload: bytes, count: int) -> None:
        self._both([self._append(topic, origin, payload) for _ in range(count)])

    @rule(
        topic=_TOPICS,
        start=st.integers(0, 6),
        length=st.integers(-1, 6),
        huge=st.booleans(),
    )
    def delete_range(self, topic: str, start: int, length: int, huge: bool) -> None:
        n = self._next()
        end = U64_MAX if huge else start + length
        self._both([DeleteRangeOp(topic, LOCAL, start, end, f"m{n}", n)])

    @rule(
        topic=_TOPICS,
        heads=st.lists(st.integers(1, 7), min_size=1, max_size=4),
        variant=st.sampled_from(["same", "other-payload", "deleted", "marked-deleted", "other-id"]),
    )
    def replicate(self, topic: str, heads: list[int], variant: str) -> None:
        ops: list[WriteOp] = []
        if variant == "marked-deleted":
            # The origin's marker first, as sync pulls it: then the deleted copies are taken
            # (a plain "deleted" batch is refused unless an earlier marker covers it).
            head = self.model.get_head(DELETE_TOPIC, REMOTE) + 1
            covered = TombstoneRange(topic, REMOTE, min(heads), max(heads), 1)
            payload = covered.to_marker_payload()
            ops.append(
                ReplicateOp([Message(f"mk{head}", DELETE_TOPIC, REMOTE, head, payload, {}, head)])
            )
        messages = []
        for head in heads:
            payload = b"other" if variant == "other-payload" else b"p%d" % head
            message_id = f"x{head}" if variant == "other-id" else f"r{topic}{head}"
            deleted = variant.endswith("deleted")
            messages.append(
                Message(message_id, topic, REMOTE, head, payload, {}, 100 + head, deleted)
            )
        self._both([*ops, ReplicateOp(messages)])

    @rule(
        head=st.integers(1, 3),
        topic=_TOPICS,
        start=st.integers(1, 5),
        length=st.integers(0, 3),
        kind=st.sampled_from(["valid", "forged", "malformed"]),
    )
    def replicate_marker(self, head: int, topic: str, start: int, length: int, kind: str) -> None:
        owner = LOCAL if kind == "forged" else REMOTE
        payload = TombstoneRange(topic, owner, start, start + length, 1).to_marker_payload()
        if kind == "malformed":
            payload = payload[:-3]
        message = Message(f"mk{head}", DELETE_TOPIC, REMOTE, head, payload, {}, head)
        self._both([ReplicateOp([message])])

    @rule(
        topic=st.sampled_from(["a", "b", DELETE_TOPIC]),
        origin=_ORIGINS,
        before=st.integers(0, 9),
    )
    def trim(self, topic: str, origin: NodeId, before: int) -> None:
        self._both([TrimOp(topic, origin, before)])

    @rule(topic=_TOPICS, first=st.integers(1, 12), count=st.integers(1, 3))
    def replicate_trimmed(self, topic: str, first: int, count: int) -> None:
        messages = [
            Message(f"t{topic}{h}", topic, REMOTE, h, b"t%d" % h, {}, 200 + h)
            for h in range(first, first + count)
        ]
        self._both([ReplicateOp(messages, first_head_id=first)])

    @rule(
        after=st.none() | st.tuples(st.sampled_from(["", "a", "b"]), st.sampled_from(["", "t"])),
        limit=st.none() | st.integers(0, 3),
    )
    def list_heads_page(self, after: tuple[str, str] | None, limit: int | None) -> None:
        page = self.backend.list_heads(after=after, limit=limit)
        assert page == self.model.list_heads(after=after, limit=limit)

    @rule(topic=_TOPICS, origin=_ORIGINS, start=st.integers(0, 10), limit=st.integers(1, 4))
    def summaries(self, topic: str, origin: NodeId, start: int, limit: int) -> None:
        expected = self.model.summaries(topic, origin, start, limit)
        assert self.backend.summaries(topic, origin, start, limit) == expected
        assert self.backend.log_head(topic, origin) == self.model.log_head(topic, origin)

    # Once per sequence at most: a DuckDB open costs tens of milliseconds.
    @precondition(lambda self: self.reopens and not self.reopened)
    @rule()
    def reopen(self) -> None:
        # What the writer keeps in memory (heads, merged tombstones) must be rebuilt from the
        # file exactly as it was before.
        self.reopened = True
        self.backend.close()
        self.backend = self.open_backend(self.location)

    @rule(queue=_QUEUES, payload=_PAYLOADS)
    def enqueue(self, queue: str, payload: bytes) -> None:
        n = self._next()
        self._both([EnqueueOp(queue, "t", LOCAL, TARGET, payload, {}, f"f{n}", n)])

    @rule(queue=_QUEUES, front=st.booleans(), reject=st.booleans())
    def ack_or_reject(self, queue: str, front: bool, reject: bool) -> None:
        head = self.model.peek_fifo(queue)
        message_id = head.id if (front and head is not None) else "nope"
        op: WriteOp = RejectOp(queue, message_id) if reject else AckOp(queue, message_id)
        self._both([op])

    @rule(after=st.none() | _QUEUES, limit=st.none() | st.integers(0, 3))
    def list_fifo_queues_page(self, after: str | None, limit: int | None) -> None:
        page = self.backend.list_fifo_queues(after=after, limit=limit)
        assert page == self.model.list_fifo_queues(after=after, limit=limit)

    @rule(peer=st.sampled_from(["p1", "p2"]), topic=st.sampled_from(["", "a"]), n=st.integers(0, 3))
    def record_sync_state(self, peer: str, topic: str, n: int) -> None:
        origin = REMOTE if topic else None
        state = PeerSyncState(peer, topic, origin, n, n + 1, n, n, n, n, "e" * n)
        self._both([RecordSyncStateOp(state)])

    @rule(keep=st.sets(st.sampled_from(["p1", "p2"])))
    def prune_sync_states(self, keep: set[str]) -> None:
        self._both([PruneSyncStatesOp(frozenset(keep))])

    @rule(
        after=st.none() | st.tuples(st.sampled_from(["", "p1", "p2"]), st.just(""), st.just("")),
        limit=st.none() | st.integers(0, 3),
    )
    def list_sync_states_page(self, after: tuple[str, str, str] | None, limit: int | None) -> None:
        page = self.backend.list_sync_states(after=after, limit=limit)
        assert page == self.model.list_sync_states(after=after, limit=limit)

    @rule(
        topic=_TOPICS,
        origin=_ORIGINS,
        start=st.integers(0, 8),
        limit=st.integers(1, 5),
        max_bytes=st.none() | st.integers(0, 40),
    )
    def fetch(
        self, topic: str, origin: NodeId, start: int, limit: int, max_bytes: int | None
    ) -> None:
        assert self.backend.fetch(topic, origin, start, limit, max_bytes) == self.model.fetch(
            topic, origin, start, limit, max_bytes
        )

    @invariant()
    def observable_state_matches(self) -> None:
        assert snapshot(self.backend, ("q1", "q2")) == snapshot(self.model, ("q1", "q2"))


__all__ = [
    "FailingCommit",
    "StoreConformance",
    "StoreFixtures",
    "comparable",
    "failing_commits",
    "snapshot",
]
