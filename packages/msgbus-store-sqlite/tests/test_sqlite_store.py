"""SQLite-specific behaviour: file refusal, durability settings, other readers, failed commits."""

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
from msgbus_store_sqlite import SCHEMA_VERSION, SqliteStore

LOCAL = NodeId("tenant", "default", "local")


def append(n: int, topic: str = "events") -> AppendOp:
    return AppendOp(topic, LOCAL, b"p%d" % n, {"n": str(n)}, f"id-{n}", 1_000 + n)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "msgbus.sqlite"


@pytest.fixture
def store(path: Path) -> Any:
    store = SqliteStore.open(str(path))
    yield store
    store.close()


def test_random_bytes_are_refused_and_left_untouched(path: Path) -> None:
    garbage = bytes(range(256)) * 64
    path.write_bytes(garbage)
    with pytest.raises(SchemaError, match=str(path)):
        SqliteStore.open(str(path))
    assert path.read_bytes() == garbage


def test_another_applications_sqlite_database_is_refused(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    con.commit()
    con.close()
    with pytest.raises(SchemaError, match="not a msgbus database"):
        SqliteStore.open(str(path))
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] != "wal"
    con.close()


def test_a_meta_table_of_another_application_is_refused(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('application', 'someone-else')")
    con.commit()
    con.close()
    with pytest.raises(SchemaError, match="someone-else"):
        SqliteStore.open(str(path))


def test_a_file_from_a_newer_schema_is_refused(path: Path) -> None:
    SqliteStore.open(str(path)).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    with pytest.raises(SchemaError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        SqliteStore.open(str(path))


def test_the_file_is_in_wal_mode_and_marked_as_msgbus(store: SqliteStore, path: Path) -> None:
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA application_id").fetchone()[0] == 0x6D736762
    finally:
        con.close()
    assert store.schema_version == SCHEMA_VERSION


def test_another_process_reads_the_file_while_the_store_holds_it(
    store: SqliteStore, path: Path
) -> None:
    store.write([append(n) for n in range(1, 4)])
    reader = textwrap.dedent(
        """
        import sqlite3, sys
        con = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
        head = con.execute("SELECT head FROM logs WHERE topic = 'events'").fetchone()[0]
        count = con.execute("SELECT count(*) FROM messages").fetchone()[0]
        print(head, count)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", reader, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["3", "3"]
    assert store.write([append(4)])[0].head_id == 4  # type: ignore[union-attr]


def test_a_commit_survives_a_process_that_dies_without_closing(path: Path) -> None:
    writer = textwrap.dedent(
        """
        import os, sys
        from msgbus_core import AppendOp, NodeId
        from msgbus_store_sqlite import SqliteStore
        store = SqliteStore.open(sys.argv[1])
        origin = NodeId("tenant", "default", "local")
        store.write([AppendOp("events", origin, b"x", {}, f"id{n}", n) for n in range(5)])
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", writer, str(path)], timeout=60, check=True)
    store = SqliteStore.open(str(path))
    try:
        assert store.get_head("events", LOCAL) == 5
        assert [m.id for m in store.fetch("events", LOCAL, 1, 10)] == [f"id{n}" for n in range(5)]
    finally:
        store.close()


class _FailingCommit:
    """Wraps the writer connection and fails its COMMIT the way a full disk does."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def test_a_failed_commit_applies_nothing_and_leaves_no_stale_head(store: SqliteStore) -> None:
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


def test_out_of_range_values_fail_their_op_only(store: SqliteStore) -> None:
    too_late = AppendOp("events", LOCAL, b"x", {}, "late", MAX_STORED_INT + 1)
    outcomes = store.write([append(1), too_late, append(2)])
    assert isinstance(outcomes[1], InvalidArgumentError)
    assert "created_at_ms" in str(outcomes[1])
    assert [m.head_id for m in store.fetch("events", LOCAL, 1, U64_MAX)] == [1, 2]
    assert store.fetch("events", LOCAL, U64_MAX, U64_MAX) == []


def test_readers_on_other_threads_see_only_committed_gap_free_pages(store: SqliteStore) -> None:
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
        store.write([append(b * per_batch + i) for i in range(per_batch)])
    reader.join(timeout=120)
    assert not reader.is_alive()
    assert errors == []
    assert seen[-1] == total


def test_a_closed_store_refuses_every_call(path: Path) -> None:
    store = SqliteStore.open(str(path))
    store.write([append(1)])
    store.close()
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.write([append(2)])
    with pytest.raises(StorageError):
        store.fetch("events", LOCAL, 1, 10)


def test_the_store_is_registered_as_the_sqlite_entry_point() -> None:
    [entry] = [e for e in entry_points(group="msgbus.stores") if e.name == "sqlite"]
    assert entry.load() is SqliteStore


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
        SqliteStore.open(str(tmp_path / "missing-directory" / "msgbus.db"))
    assert not isinstance(raised.value, SchemaError)
