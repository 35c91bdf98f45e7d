"""`SqliteStore`: the `MsgbusStore` on one SQLite file (stdlib sqlite3, WAL, synchronous=FULL).

One write connection serves whichever single thread calls `write`; every reading thread gets its
own connection, so in WAL mode reads never wait for the writer and see only committed data.
Other processes may open the file and read it while the daemon writes.

Everything that is not SQLite's own lives in `msgbus_core.sql_store.SqlStore`.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Final

from msgbus_core.errors import StorageError
from msgbus_core.sql_store import SqlDialect, SqlStore
from msgbus_core.store import DiskUsage
from msgbus_store_sqlite import schema
from msgbus_store_sqlite.errors import storage_error

BUSY_TIMEOUT_MS: Final = 10_000
"""How long a connection waits for a lock (another process's checkpoint, say) before failing."""
WAL_SIZE_LIMIT: Final = 4 * 1024 * 1024
"""`journal_size_limit`: after a checkpoint the WAL is truncated to this, so one burst (or a
long reader that held checkpoints back) does not leave a large WAL on a small disk for good."""

CHECKPOINT_WAIT_MS: Final = 50
"""How long a compaction's checkpoint waits for readers to leave the WAL before giving up."""

logger = logging.getLogger("msgbus_store_sqlite")


class SqliteStore(SqlStore[sqlite3.Connection]):
    """A `MsgbusStore` in one SQLite database file."""

    # IMMEDIATE takes the write lock when the transaction opens, so a batch never fails halfway
    # because another connection started writing first.
    dialect = SqlDialect(log_column="log", begin="BEGIN IMMEDIATE")
    driver_error = sqlite3.Error
    wrap_error = storage_error

    @classmethod
    def open(cls, path: str) -> SqliteStore:
        """Open the database at `path`, creating it when the file is missing or empty.

        Raises `SchemaError` (naming the file) when it is not a msgbus database or was written by
        a newer schema, and `StorageError` when it cannot be opened at all.
        """
        try:
            # isolation_level=None: the store sends BEGIN and COMMIT itself.
            writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise storage_error(error, path, "opening the database") from None
        try:
            version = cls._prepare(writer, path)
        except BaseException:
            writer.close()
            raise
        return cls(path, writer, version)

    @staticmethod
    def _prepare(writer: sqlite3.Connection, path: str) -> int:
        try:
            writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Verify before changing anything: a foreign file must come out untouched.
            version = schema.verify(writer, path)
            if version is None:
                # Only a file with no page yet takes it (WAL mode writes the first page), and
                # only then can retention give trimmed space back to the file system.
                writer.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StorageError(f"{path}: SQLite refused WAL mode (journal_mode is {mode})")
            # FULL: every commit is fsynced before `write` returns, so an acknowledged write
            # survives power loss (NORMAL in WAL mode would only protect against crashes).
            writer.execute("PRAGMA synchronous = FULL")
            writer.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            if version is not None and version < schema.SCHEMA_VERSION:
                version = SqliteStore._migrate(writer, path, version)
            if version is None:
                writer.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have created it between our check and our lock.
                    version = schema.verify(writer, path)
                    if version is None:
                        schema.create(writer)
                        version = schema.SCHEMA_VERSION
                    writer.execute("COMMIT")
                except BaseException:
                    writer.execute("ROLLBACK")
                    raise
        except sqlite3.Error as error:
            raise storage_error(error, path, "opening the database") from None
        return version

    @staticmethod
    def _migrate(writer: sqlite3.Connection, path: str, version: int) -> int:
        started = time.monotonic()
        writer.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated it between our check and our lock.
            current = schema.verify(writer, path)
            if current is not None and current < schema.SCHEMA_VERSION:
                schema.migrate(writer, current)
            writer.execute("COMMIT")
        except BaseException:
            writer.execute("ROLLBACK")
            raise
        logger.info(
            "%s: migrated the msgbus schema from version %d to %d in %.0f ms",
            path,
            version,
            schema.SCHEMA_VERSION,
            (time.monotonic() - started) * 1000,
        )
        return schema.SCHEMA_VERSION

    def disk_usage(self) -> DiskUsage:
        """The database file and its WAL, and the free pages SQLite reuses before growing."""
        con = self._reader()
        try:
            page_size = int(con.execute("PRAGMA page_size").fetchone()[0])
            pages = int(con.execute("PRAGMA page_count").fetchone()[0])
            free = int(con.execute("PRAGMA freelist_count").fetchone()[0])
        except sqlite3.Error as error:
            raise self._storage_error(error, "measuring the database") from None
        try:
            wal = os.path.getsize(f"{self._path}-wal")
        except OSError:
            wal = 0
        # A file that gives free pages back on a CompactOp counts them as used until it does;
        # in an older file they stay in it for good, reused by the next writes.
        reusable = 0 if self._gives_space_back else free * page_size
        return DiskUsage(pages * page_size + wal, reusable)

    @functools.cached_property
    def _gives_space_back(self) -> bool:
        """True for a file created with auto_vacuum = INCREMENTAL (every file since schema 2)."""
        return int(self._writer.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2

    def _compact(self) -> None:
        # Give the freed pages back to the file system (an incremental vacuum, which moves
        # pages from the end of the file into the holes), so the file keeps to what the data
        # takes; executescript steps it to its end (one step of `execute` frees a single
        # page). Then fold the WAL into the file and truncate it, waiting for readers at most
        # CHECKPOINT_WAIT_MS (they read for milliseconds; one that reads longer leaves the WAL
        # for the next compaction instead of holding the writer). An older file without
        # auto_vacuum keeps its free pages and reuses them.
        if self._gives_space_back:
            self._writer.executescript("PRAGMA incremental_vacuum;")
        self._writer.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
        try:
            self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            self._writer.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _flush(self) -> None:
        """Insert the buffered message rows (one executemany) before anything reads them."""
        if self._pending:
            self._writer.executemany(self._sql.insert_message, self._pending)
            self._pending.clear()

    def _insert_key_rows(self, rows: Sequence[tuple[object, ...]]) -> None:
        self._writer.executemany(self._key_sql.insert, rows)

    def _open_reader(self) -> sqlite3.Connection:
        # check_same_thread=False only so that `close` can close it from another thread;
        # the connection is used by the thread that opened it.
        con = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        con.execute("PRAGMA query_only = ON")
        return con
