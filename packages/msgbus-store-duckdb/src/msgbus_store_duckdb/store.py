"""`DuckdbStore`: the `MsgbusStore` on one DuckDB file.

DuckDB spends about a millisecond of CPU per statement, so the write path is set-based: a batch
of appends costs one appender flush however many messages it holds, and the writer keeps each
log's id, head and merged tombstone ranges in memory (one process owns a DuckDB file, so nobody
else can change them). Reads run on a cursor per thread and see committed data only; heads come
from a view of the last commit that the writer publishes, never from a query.

Everything that is not DuckDB's own lives in `msgbus_core.sql_store.SqlStore`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final, NamedTuple

import duckdb

from msgbus_core.errors import SchemaError
from msgbus_core.intervals import TombstoneSet
from msgbus_core.limits import MAX_STORED_INT
from msgbus_core.model import Message, NodeId, TopicHead, first_held
from msgbus_core.publish_keys import RememberedPublish
from msgbus_core.sql_store import LogKey, LogState, SqlDialect, SqlStore, log_key
from msgbus_core.store import DiskUsage, MessageSummary
from msgbus_core.validation import clamp_stored
from msgbus_store_duckdb import schema
from msgbus_store_duckdb.errors import storage_error
from msgbus_store_duckdb.key_filter import KeyFilter

CONFIG: Final = {
    # Never reach for the network or load code because of what a file looks like: DuckDB would
    # otherwise try to download its sqlite extension when handed an SQLite file.
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    # Every query runs on the thread that asks it, with no worker threads. The store's
    # statements are small (one commit's rows, one log's closed range of heads: a scan that a
    # worker could not split anyway), and with workers each statement wakes them through a
    # futex and hands its tasks across: a third of a keyed single-message commit's CPU
    # (bench/README.md "DuckDB's single-message commit"). Readers on other threads still run
    # in parallel, each on its own thread.
    "threads": 1,
}
"""DuckDB settings every connection of this store uses."""

_DIALECT: Final = SqlDialect(log_column="log_id", blob_length="octet_length", keys_by_log=False)

_READ_SIZES: Final = (
    f"SELECT head_id, {_DIALECT.read_size()} FROM messages "
    "WHERE log_id = ? AND head_id BETWEEN ? AND ? ORDER BY head_id"
)
"""Each message's `read_size` (payload bytes and header JSON characters), in head order."""
_KEY_PAGE: Final = 10_000
"""Key rows read at a time while the key filter is filled at open."""
_SUMMARIES: Final = (
    f"SELECT head_id, {_DIALECT.read_size()}, created_at_ms FROM messages "
    "WHERE log_id = ? AND head_id BETWEEN ? AND ? ORDER BY head_id"
)


class _Closing(Exception):
    """The store closes while its keys are being counted."""


class _Committed(NamedTuple):
    """What readers see of one log: as of the last commit."""

    id: int
    head: int
    first: int
    bytes: int


def _connect(path: str) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(path, config=dict(CONFIG))
    except duckdb.Error as error:
        text = str(error)
        foreign = (
            "lock" not in text.lower()
            and "permission" not in text.lower()
            and os.path.isfile(path)
            and os.path.getsize(path) > 0
            and isinstance(
                error,
                duckdb.IOException | duckdb.SerializationException | duckdb.InvalidInputException,
            )
        )
        if foreign:
            raise SchemaError(f"{path} is not a msgbus database: {text}") from None
        raise storage_error(error, path, "opening the database") from None


class DuckdbStore(SqlStore[duckdb.DuckDBPyConnection]):
    """A `MsgbusStore` in one DuckDB database file."""

    dialect = _DIALECT
    driver_error = duckdb.Error
    wrap_error = storage_error

    def __init__(self, path: str, writer: duckdb.DuckDBPyConnection, version: int) -> None:
        """Use `DuckdbStore.open`; this takes over an already verified connection."""
        self._next_log_id = 1
        self._appender: Any = None
        self._key_appender: Any = None
        self._in_transaction = False
        # What readers may see of every log, as of the last commit.
        self._committed: dict[LogKey, _Committed] = {}
        self._committed_lock = threading.Lock()
        # Cursors are made from a connection nobody queries, under a lock, never from the
        # writer while it works.
        self._root = writer.cursor()
        # Every stored key is counted, so a new key's lookup is skipped (`key_filter`).
        self._key_filter = KeyFilter()
        # Keys the open transaction deleted: uncounted only once it has committed.
        self._deleted_keys: list[tuple[int, str]] = []
        super().__init__(path, writer, version)
        self._load()
        # The keys already stored are counted beside the writer, so opening a file with many
        # keys does not wait for them; until then every key is looked up.
        self._stop_counting = threading.Event()
        self._key_counter = threading.Thread(
            target=self._count_stored_keys,
            args=(self._root.cursor(), self._key_filter),
            name="msgbus-duckdb-key-filter",
            daemon=True,
        )
        self._key_counter.start()

    @classmethod
    def open(cls, path: str) -> DuckdbStore:
        """Open the database at `path`, creating it when it does not exist.

        Raises `SchemaError` (naming the file) when it is not a msgbus database or was written by
        a newer schema, and `StorageError` when it cannot be opened, for instance because
        another process holds it.
        """
        writer = _connect(path)
        try:
            try:
                version = schema.verify(writer, path)
                if version is not None and version < schema.SCHEMA_VERSION:
                    writer.begin()
                    schema.migrate(writer, version)
                    writer.commit()
                    version = schema.SCHEMA_VERSION
                if version is None:
                    writer.begin()
                    schema.create(writer)
                    writer.commit()
                    version = schema.SCHEMA_VERSION
                # Opening replayed whatever WAL a crash left behind; folding it into the file now
                # keeps a daemon that crashes repeatedly from replaying an ever longer WAL.
                writer.execute("CHECKPOINT")
            except duckdb.Error as error:
                raise storage_error(error, path, "opening the database") from None
            return cls(path, writer, version)
        except BaseException:
            writer.close()
            raise

    def _load(self) -> None:
        """(Re)build the writer's view of every log from committed data."""
        con = self._writer
        stats = {
            log_id: (int(head), int(size))
            for log_id, head, size in con.execute(
                f"SELECT log_id, max(head_id), sum({self.dialect.read_size()}) FROM messages "
                "GROUP BY log_id"
            ).fetchall()
        }
        logs: dict[LogKey, LogState] = {}
        by_id: dict[int, LogState] = {}
        rows = con.execute(
            "SELECT id, topic, tenant_id, bl_name, device_id, first_head FROM logs"
        ).fetchall()
        for log_id, topic, tenant, bl, device, first in rows:
            key = (topic, NodeId(tenant, bl, device))
            top, size = stats.get(log_id, (0, 0))
            # A log trimmed empty has no row left to tell its head: its start does.
            head = max(top, first - 1)
            logs[key] = by_id[log_id] = LogState(key, log_id, head, first, size)
        ranges: dict[int, list[tuple[int, int]]] = {}
        for log_id, first, last in con.execute(
            "SELECT log_id, from_head_id, to_head_id FROM tombstones"
        ).fetchall():
            ranges.setdefault(log_id, []).append((first, last))
        for log_id, spans in ranges.items():
            by_id[log_id].tombstones = TombstoneSet(spans)
        self._logs = logs
        self._next_log_id = max(by_id, default=0) + 1
        self._pending.clear()
        self._dirty.clear()
        self._appender = self._key_appender = None
        with self._committed_lock:
            self._committed = {key: _view(log) for key, log in logs.items()}

    def _count_stored_keys(self, con: duckdb.DuckDBPyConnection, keys: KeyFilter) -> None:
        """Count every committed key row in `keys`, a page at a time, on a cursor of its own.

        One query for all pages: DuckDB answers it from the snapshot taken when it started, so
        every row stored then is counted exactly once, even one the writer deletes (and
        uncounts) while the pages are read. That is what keeps `KeyFilter`'s rule.
        """

        def pages() -> Iterator[list[Any]]:
            cursor = con.execute("SELECT log_id, idempotency_key FROM publish_keys")
            while rows := cursor.fetchmany(_KEY_PAGE):
                if self._stop_counting.is_set():
                    raise _Closing
                yield rows

        try:
            with con:
                keys.fill(pages())
        except (duckdb.Error, _Closing):
            # The filter stays incomplete: every key is looked up, as without it. A fault of
            # the file reaches the writer's next statement too, which reports it.
            return

    # -- the write transaction: opened only when a statement needs one --------------------------

    def _begin(self) -> None:
        self._in_transaction = False

    def _execute(self, sql: str, parameters: Any = ()) -> Any:
        self._hold_transaction()
        return self._writer.execute(sql, parameters)

    def _commit(self) -> None:
        # With only buffered rows, one appender flush is a transaction of its own: that saves
        # the BEGIN and COMMIT statements on the hot path.
        self._flush_rows()
        if self._in_transaction:
            self._writer.commit()
        for log_id, key in self._deleted_keys:
            self._key_filter.remove(log_id, key)
        self._deleted_keys.clear()
        with self._committed_lock:
            for log in self._dirty.values():
                self._committed[log.key] = _view(log)

    def _abort(self) -> None:
        self._deleted_keys.clear()  # rolled back: the rows are still there, and still counted
        if self._in_transaction:
            with contextlib.suppress(duckdb.Error):
                self._writer.rollback()
            self._in_transaction = False
        # The in-memory view may hold heads and tombstones of the failed transaction.
        try:
            self._load()
        except duckdb.Error:
            # Leave the store unusable rather than wrong: every later call fails loudly.
            self._logs.clear()
            self._closed = True

    def _flush(self) -> None:
        """Write the buffered rows inside the transaction, before a statement that reads them."""
        if self._pending:
            self._hold_transaction()
        self._flush_rows()

    def _hold_transaction(self) -> None:
        """Open the write transaction unless it is open."""
        if not self._in_transaction:
            self._writer.begin()
            self._in_transaction = True

    def _insert_key_rows(self, rows: Sequence[tuple[object, ...]]) -> None:
        # One appender flush for the batch's keys, in the transaction of their messages.
        self._hold_transaction()
        if self._key_appender is None:
            self._key_appender = self._writer.appender("publish_keys")
        self._key_appender.append_rows(rows)
        self._key_appender.flush()

    def _find_keys(
        self, topic: str, origin: NodeId, keys: Sequence[str]
    ) -> dict[str, RememberedPublish]:
        # Only the keys the filter may hold are asked of the table: a publish whose key is new
        # (nearly every one: the SDK draws a random key) commits without the lookup statement.
        log = self._logs.get((topic, origin))
        if log is None:
            return {}
        maybe = [key for key in keys if self._key_filter.may_hold(log.id, key)]
        return super()._find_keys(topic, origin, maybe) if maybe else {}

    def _store_key(
        self, topic: str, origin: NodeId, key: str, remembered: RememberedPublish
    ) -> None:
        super()._store_key(topic, origin, key, remembered)
        # Counted before the row reaches the table; a rollback leaves it counted, which only
        # costs a lookup.
        self._key_filter.add(self._logs[(topic, origin)].id, key)

    def _delete_keys(self, sql: str, parameters: Sequence[object]) -> int:
        # Which rows went, to uncount them once the transaction commits. At most one prune
        # batch of keys (`PruneKeysOp.limit`) per statement.
        rows = self._execute(f"{sql} RETURNING log_id, idempotency_key", parameters).fetchall()
        self._deleted_keys.extend(rows)
        return len(rows)

    def _flush_rows(self) -> None:
        """Write the buffered message rows with one appender flush (one statement)."""
        if not self._pending:
            return
        if self._appender is None:
            self._appender = self._writer.appender("messages")
        self._appender.append_rows(self._pending)
        self._pending.clear()
        self._appender.flush()

    def _find_log(self, topic: str, origin: NodeId) -> LogState | None:
        # Every log was loaded at open and the single writer creates the rest.
        return self._logs.get((topic, origin))

    def _create_log(self, topic: str, origin: NodeId) -> int:
        log_id = self._next_log_id
        self._execute(
            "INSERT INTO logs VALUES (?, ?, ?, ?, ?, 1)", (log_id, *log_key(topic, origin))
        )
        self._next_log_id += 1
        return log_id

    def _compact(self) -> None:
        # A block freed by a trim becomes free (reusable, and counted by disk_usage) only at a
        # checkpoint; it also folds the WAL into the file.
        self._writer.execute("CHECKPOINT")

    def _trimmed(self, log: LogState) -> None:
        # Heads and bytes are rebuilt at open; only the start must be written down.
        self._execute("UPDATE logs SET first_head = ? WHERE id = ?", (log.first, log.id))

    # -- reads: heads from the committed view ---------------------------------------------------

    def _open_reader(self) -> duckdb.DuckDBPyConnection:
        return self._root.cursor()

    def fetch(
        self,
        topic: str,
        origin: NodeId,
        from_head_id: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> list[Message]:
        """`MsgbusStore.fetch` on the committed view, as one closed range of heads."""
        self._ensure_open()
        found = self._committed.get((topic, origin))
        if found is None or limit <= 0:
            return []
        log_id, head, start = found.id, found.head, found.first
        # Rows below the start are trimmed: the page begins at the first head held.
        first = max(clamp_stored(max(from_head_id, 1)), start)
        # Logs are gap-free, so the page is exactly heads first..first+limit-1: a closed range
        # lets DuckDB skip row groups by their zone maps instead of sorting a top-N.
        last = min(head, first + min(limit, MAX_STORED_INT) - 1)
        if first > last:
            return []
        if max_bytes is not None:
            last = self._last_within(log_id, first, last, max_bytes)
        rows = self._query(self._sql.message_range, (log_id, first, last))
        return self._messages(topic, origin, rows)

    def _last_within(self, log_id: int, first: int, last: int, max_bytes: int) -> int:
        """The last head of first..last that keeps the page within `max_bytes` (at least first).

        DuckDB materializes a whole result on execute, so the sizes are asked first (a cheap
        column scan) and only the heads that fit are read.
        """
        sizes = self._query(_READ_SIZES, (log_id, first, last))
        total = 0
        for head_id, size in sizes:
            total += size
            if total > max_bytes and head_id > first:
                return int(head_id) - 1
        return last

    def summaries(
        self, topic: str, origin: NodeId, from_head_id: int, limit: int
    ) -> list[MessageSummary]:
        """`MsgbusStore.summaries` on the committed view, as one closed range of heads."""
        self._ensure_open()
        found = self._committed.get((topic, origin))
        if found is None or limit <= 0:
            return []
        first = max(clamp_stored(max(from_head_id, 1)), found.first)
        last = min(found.head, first + min(limit, MAX_STORED_INT) - 1)
        if first > last:
            return []
        rows = self._query(_SUMMARIES, (found.id, first, last))
        return [MessageSummary(int(h), int(size), int(t)) for h, size, t in rows]

    def get_head(self, topic: str, origin: NodeId) -> int:
        """The highest head of a log, or 0 when it never had a message."""
        self._ensure_open()
        found = self._committed.get((topic, origin))
        return 0 if found is None else found.head

    def log_head(self, topic: str, origin: NodeId) -> TopicHead:
        """One log's head, first head held and bytes, from the committed view."""
        self._ensure_open()
        found = self._committed.get((topic, origin))
        return TopicHead(topic, origin, 0) if found is None else _head(topic, origin, found)

    def list_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[TopicHead]:
        """Every log that ever had a message, by topic and then origin key (code points).

        `after` and `limit` make it a keyset page, from the committed view.
        """
        self._ensure_open()
        with self._committed_lock:
            entries = list(self._committed.items())
        heads = [
            _head(topic, origin, seen)
            for (topic, origin), seen in entries
            if seen.head and (after is None or (topic, origin.key) > after)
        ]
        return self._sorted_heads(heads, limit=limit)

    def disk_usage(self) -> DiskUsage:
        """The database file and its WAL, and the free blocks DuckDB reuses before growing."""
        self._ensure_open()
        try:
            row = (
                self._reader()
                .execute("SELECT block_size, free_blocks FROM pragma_database_size()")
                .fetchone()
            )
        except duckdb.Error as error:
            raise self._storage_error(error, "measuring the database") from None
        size = 0
        for name in (self._path, f"{self._path}.wal"):
            with contextlib.suppress(OSError):
                size += os.path.getsize(name)
        block_size, free_blocks = (int(row[0]), int(row[1])) if row else (0, 0)
        return DiskUsage(size, block_size * free_blocks)

    # -- lifecycle ------------------------------------------------------------------------------

    def _release(self) -> None:
        self._stop_counting.set()
        self._key_counter.join()
        # DuckDB checkpoints the WAL into the file when the last connection closes.
        self._appender = self._key_appender = None
        self._root.close()
        self._writer.close()


def _view(log: LogState) -> _Committed:
    return _Committed(log.id, log.head, log.first, log.bytes)


def _head(topic: str, origin: NodeId, seen: _Committed) -> TopicHead:
    return TopicHead(topic, origin, seen.head, first_held(seen.first, seen.head), seen.bytes)
