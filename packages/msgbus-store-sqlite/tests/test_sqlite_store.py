"""SQLite-specific behaviour: a refused file is left untouched, durability settings, other readers.

Everything every store must do is in the conformance suite (`test_sqlite_conformance.py`).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from msgbus_core import CompactOp, NodeId, SchemaError, TrimOp
from msgbus_core.testing import StoreFixtures, append_op
from msgbus_store_sqlite import SCHEMA_VERSION, SqliteStore


class TestSqliteFile(StoreFixtures):
    factory = SqliteStore

    def test_another_applications_database_is_left_out_of_wal_mode(self, path: Path) -> None:
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        con.commit()
        con.close()
        with pytest.raises(SchemaError, match="not a msgbus database"):
            SqliteStore.open(str(path))
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] != "wal"
        con.close()

    def test_the_file_is_in_wal_mode_and_marked_as_msgbus(
        self, store: SqliteStore, path: Path
    ) -> None:
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert con.execute("PRAGMA application_id").fetchone()[0] == 0x6D736762
        finally:
            con.close()
        assert store.schema_version == SCHEMA_VERSION

    def test_another_process_reads_the_file_while_the_store_holds_it(
        self, store: SqliteStore, path: Path
    ) -> None:
        store.write([append_op("events", b"p%d" % n, n) for n in range(1, 4)])
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
        assert store.write([append_op("events", b"p4", 4)])[0].head_id == 4  # type: ignore[union-attr]


class TestSqliteSpace(StoreFixtures):
    factory = SqliteStore

    def test_a_new_file_gives_trimmed_space_back_on_compact(
        self, store: SqliteStore, path: Path
    ) -> None:
        con = sqlite3.connect(path)
        try:
            assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        finally:
            con.close()
        store.write([append_op("events", os.urandom(4000), n) for n in range(1, 2001)])
        store.write([TrimOp("events", NodeId("tenant", "default", "local"), 1901)])
        grown = store.disk_usage()
        # The trimmed pages are still in the file, and count until they are given back.
        assert grown.reusable_bytes == 0
        assert path.stat().st_size > 1900 * 4000
        store.write([CompactOp()])
        compacted = store.disk_usage()
        # The file keeps about the 100 messages left: the freed pages went back to the disk.
        assert compacted.reusable_bytes == 0
        assert path.stat().st_size < 100 * 4000 * 2
        assert (
            next(
                m.head_id
                for m in store.fetch("events", NodeId("tenant", "default", "local"), 1, 10)
            )
            == 1901
        )
