"""DuckDB-specific behaviour: no extension loading, one process per file, query plans.

Everything every store must do is in the conformance suite (`test_duckdb_conformance.py`).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from msgbus_core import SchemaError
from msgbus_core.testing import LOCAL, StoreFixtures, append_op
from msgbus_store_duckdb import DuckdbStore


class TestDuckdbFile(StoreFixtures):
    factory = DuckdbStore

    def test_an_sqlite_file_is_refused_without_loading_extensions(self, path: Path) -> None:
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE t (a)")
        con.commit()
        con.close()
        with pytest.raises(SchemaError, match="not a msgbus database"):
            DuckdbStore.open(str(path))

    def test_another_process_is_refused_with_a_storage_error_not_a_schema_error(
        self, store: DuckdbStore, path: Path
    ) -> None:
        store.write([append_op("events", b"p1", 1)])
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

    def test_a_range_read_is_a_filtered_scan(self, store: DuckdbStore) -> None:
        store.write([append_op("events", b"p%d" % n, n) for n in range(1, 101)])
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

    def test_queries_run_without_worker_threads(self, store: DuckdbStore) -> None:
        # The store's statements are small; worker threads only cost each one a hand-off.
        setting = store._reader().execute("SELECT current_setting('threads')").fetchone()
        assert setting == (1,)

    def test_a_reader_is_answered_while_the_writer_holds_a_transaction(
        self, store: DuckdbStore
    ) -> None:
        # Without worker threads every query runs on its caller's thread: a reader must still
        # run beside a writer that is in the middle of a transaction, and see committed data.
        store.write([append_op("events", b"p1", 1)])
        writer = store._writer
        writer.begin()
        writer.execute("INSERT INTO messages VALUES (1, 2, 'm2', 'p2'::BLOB, NULL, 2, false)")
        seen: list[object] = []

        def read() -> None:
            seen.append([m.payload for m in store.fetch("events", LOCAL, 1, 10)])
            seen.append(store._query("SELECT count(*) FROM messages"))

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=30)
        writer.rollback()
        assert not reader.is_alive()
        assert seen == [[b"p1"], [(1,)]]
