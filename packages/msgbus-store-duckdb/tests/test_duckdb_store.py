"""DuckDB-specific behaviour: file refusal, durability, query plans, readers, failed commits."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import textwrap
import threading
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import duckdb
import pytest

from msgbus_core import (
    AppendOp,
    DeleteRangeOp,
    InvalidArgumentError,
    Message,
    NodeId,
    SchemaError,
    StorageError,
    StorageFullError,
)
from msgbus_core.limits import MAX_STORED_INT, U64_MAX
from msgbus_core.rows import new_message
from msgbus_store_duckdb import SCHEMA_VERSION, DuckdbStore
from msgbus_store_duckdb.store import CONFIG

LOCAL = NodeId("tenant", "default", "local")


def append(n: int, topic: str = "events") -> AppendOp:
    return AppendOp(topic, LOCAL, b"p%d" % n, {"n": str(n)}, f"id-{n}", 1_000 + n)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "msgbus.duckdb"


@pytest.fixture
def store(path: Path) -> Any:
    store = DuckdbStore.open(str(path))
    yield store
    store.close()


def _raw(path: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(path), config=dict(CONFIG))


def test_random_bytes_are_refused_and_left_untouched(path: Path) -> None:
    garbage = bytes(range(256)) * 64
    path.write_bytes(garbage)
    with pytest.raises(SchemaError, match=str(path)):
        DuckdbStore.open(str(path))
    assert path.read_bytes() == garbage


def test_an_sqlite_file_is_refused_without_loading_extensions(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (a)")
    con.commit()
    con.close()
    with pytest.raises(SchemaError, match="not a msgbus database"):
        DuckdbStore.open(str(path))


def test_another_applications_duckdb_database_is_refused(path: Path) -> None:
    con = _raw(path)
    con.execute("CREATE TABLE invoices (id INTEGER, amount DOUBLE)")
    con.close()
    with pytest.raises(SchemaError, match="invoices"):
        DuckdbStore.open(str(path))


def test_a_file_from_a_newer_schema_is_refused(path: Path) -> None:
    DuckdbStore.open(str(path)).close()
    con = _raw(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [SCHEMA_VERSION + 1])
    con.close()
    with pytest.raises(SchemaError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        DuckdbStore.open(str(path))


def test_another_process_is_refused_with_a_storage_error_not_a_schema_error(
    store: DuckdbStore, path: Path
) -> None:
    store.write([append(1)])
    probe = textwrap.dedent(
        """
        import sys
        from msgbus_core import SchemaError, StorageError
        from msgbus_store_duckdb import DuckdbStore
        try:
            DuckdbStore.open(sys.argv[1])
        except SchemaError:
            print("schema")
        except StorageError:
            print("storage")
        else:
            print("opened")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "storage"


def test_a_commit_survives_a_process_that_dies_without_closing(path: Path) -> None:
    writer = textwrap.dedent(
        """
        import os, sys
        from msgbus_core import AppendOp, DeleteRangeOp, NodeId
        from msgbus_store_duckdb import DuckdbStore
        store = DuckdbStore.open(sys.argv[1])
        origin = NodeId("tenant", "default", "local")
        store.write([AppendOp("events", origin, b"x", {}, f"id{n}", n) for n in range(5)])
        store.write([AppendOp("events", origin, b"y", {}, "id5", 5)])
        store.write([DeleteRangeOp("events", origin, 1, 1, "m", 6)])
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", writer, str(path)], timeout=60, check=True)
    store = DuckdbStore.open(str(path))
    try:
        assert store.get_head("events", LOCAL) == 6
        rows = store.fetch("events", LOCAL, 1, 10)
        assert [m.id for m in rows] == [f"id{n}" for n in range(6)]
        assert [m.deleted for m in rows] == [True] + [False] * 5
        assert len(store.list_tombstones()) == 1
    finally:
        store.close()


def test_a_range_read_is_a_filtered_scan(store: DuckdbStore) -> None:
    store.write([append(n) for n in range(1, 101)])
    con = store._reader()
    plan = "\n".join(
        str(row[1])
        for row in con.execute(
            "EXPLAIN SELECT head_id FROM messages "
            "WHERE log_id = ? AND head_id BETWEEN ? AND ? ORDER BY head_id",
            [1, 10, 20],
        ).fetchall()
    )
    assert "Filters" in plan
    assert "head_id" in plan


class _FailingCommit:
    """Wraps the writer connection and fails its commit the way a full disk does."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def commit(self) -> None:
        raise duckdb.IOException("Could not write file: No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def test_a_failed_commit_applies_nothing_and_leaves_no_stale_head(store: DuckdbStore) -> None:
    store.write([append(1)])
    real = store._writer
    store._writer = _FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(StorageFullError, match="disk is full"):
        store.write([append(2), append(3), DeleteRangeOp("events", LOCAL, 1, 1, "m", 5)])
    store._writer = real
    assert store.get_head("events", LOCAL) == 1
    assert store.list_tombstones() == []
    [message] = store.write([append(2)])
    assert isinstance(message, Message)
    assert message.head_id == 2
    assert not message.deleted
    assert [m.head_id for m in store.fetch("events", LOCAL, 1, 10)] == [1, 2]


def test_out_of_range_values_fail_their_op_only(store: DuckdbStore) -> None:
    too_late = AppendOp("events", LOCAL, b"x", {}, "late", MAX_STORED_INT + 1)
    outcomes = store.write([append(1), too_late, append(2)])
    assert isinstance(outcomes[1], InvalidArgumentError)
    assert "created_at_ms" in str(outcomes[1])
    assert [m.head_id for m in store.fetch("events", LOCAL, 1, U64_MAX)] == [1, 2]
    assert store.fetch("events", LOCAL, U64_MAX, U64_MAX) == []


def test_readers_on_other_threads_see_only_committed_gap_free_pages(store: DuckdbStore) -> None:
    batches, per_batch = 20, 25
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
        store.write([append(b * per_batch + i) for i in range(per_batch)])
    reader.join(timeout=120)
    assert not reader.is_alive()
    assert errors == []
    assert seen[-1] == total


def test_a_closed_store_refuses_every_call(path: Path) -> None:
    store = DuckdbStore.open(str(path))
    store.write([append(1)])
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.write([append(2)])
    with pytest.raises(StorageError):
        store.fetch("events", LOCAL, 1, 10)


def test_the_store_is_registered_as_the_duckdb_entry_point() -> None:
    [entry] = [e for e in entry_points(group="msgbus.stores") if e.name == "duckdb"]
    assert entry.load() is DuckdbStore


def test_rows_build_messages_identical_to_the_constructor() -> None:
    args = ("id", "topic", LOCAL, 7, b"payload", {"k": "v"}, 123, True)
    built = new_message(*args)
    assert built == Message(*args)
    assert repr(built) == repr(Message(*args))
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.head_id = 8  # type: ignore[misc]


def test_a_path_that_cannot_be_opened_is_a_storage_error_not_a_schema_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(StorageError) as raised:
        DuckdbStore.open(str(tmp_path / "missing-directory" / "msgbus.db"))
    assert not isinstance(raised.value, SchemaError)
