"""`SqlStore`: the storage contract written once for every SQL database.

Write batching (one transaction per `write`, one outcome per op), the accept rules for
replicated messages (`msgbus_core.replication`), tombstones, FIFO queues, sync state and the
reads live here; a backend subclasses `SqlStore` and keeps only what its database does its own
way: connecting, the DDL, the bulk-insert path, reader connections and the SQL dialect.

A base class rather than one engine driving a dialect object, because the backends differ in
behaviour on the hot path, not only in text: SQLite keeps heads in `logs.head` and looks a log
up on first use; DuckDB computes heads at open, numbers logs itself, opens a transaction only
when a statement needs one (a batch of appends is one appender flush) and serves readers a
committed-head view. Each is one overridden method on the writer's own state, which a separate
dialect object would have to be handed back and forth. What is only text is a `SqlDialect`.

What a new backend (the PostgreSQL store) must provide:

- `dialect`: a `SqlDialect` (placeholders `?` or `%s`, the log column's name, the statement
  that opens a write transaction, the row-lock clause ` FOR UPDATE` for a shared database);
- `driver_error` (the driver's base exception) and `wrap_error(error, path, doing)` (it as a
  `StorageError`, `StorageFullError` for a full disk); `single_writer = False` when other
  processes write the database, so that every write re-reads (and locks) the logs it touches;
- `open(path)`: connect, check or create the schema with `msgbus_core.sql_schema`, and call
  `SqlStore.__init__(path, writer, version)` with a DB-API connection in autocommit mode (the
  base sends `BEGIN`, `COMMIT` and `ROLLBACK` itself);
- `_flush()`: insert the buffered `self._pending` rows (log id, then `MESSAGE_COLUMNS`) inside
  the transaction with the driver's bulk path (`executemany`, an appender, `COPY`);
- `_insert_key_rows(rows)` (optional): the same for the buffered `publish_keys` rows (log id,
  then `KEY_COLUMNS`), which go in once per transaction, before it commits;
- `_open_reader()`: a connection for the calling thread that sees committed data only.

The defaults fit a schema with `logs.head` whose database numbers new logs, as SQLite's does and
PostgreSQL's would. The SQL uses only what SQLite 3.35+, DuckDB and PostgreSQL share:
`RETURNING`, and upserts as `INSERT ... ON CONFLICT (key) DO UPDATE`.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

from msgbus_core import sql_cursors, sql_fifo_leases
from msgbus_core.batch import BatchWriter
from msgbus_core.cursors import Cursor, CursorKey, DeleteCursorOp
from msgbus_core.errors import MsgbusError, StorageError
from msgbus_core.fifo_leases import LeasedRow, as_seen
from msgbus_core.intervals import TombstoneSet
from msgbus_core.limits import DELETE_TOPIC, MAX_STORED_INT
from msgbus_core.model import (
    FifoMessage,
    FifoQueueSummary,
    Message,
    NodeId,
    PeerSyncState,
    TombstoneRange,
    TopicHead,
    first_held,
    page_of_heads,
)
from msgbus_core.ops import (
    AppendOp,
    Outcome,
    ReplicateOp,
    ReplicateResult,
    WriteOp,
)
from msgbus_core.publish_keys import RememberedPublish
from msgbus_core.replication import (
    Decision,
    apply_tombstones,
    check_replicated,
    decide,
    marker_tombstone,
    replicated_copy,
)
from msgbus_core.rows import (
    FIFO_COLUMNS,
    SYNC_COLUMNS,
    decode_headers,
    encode_headers,
    fifo_from_row,
    fifo_row,
    new_message,
    sync_state_from_row,
    sync_state_row,
)
from msgbus_core.sql_publish_keys import MAX_KEYS_PER_FIND, remembered_from_row
from msgbus_core.sql_publish_keys import statements_for as publish_key_statements
from msgbus_core.store import DiskUsage, MessageSummary
from msgbus_core.validation import clamp_stored, validate_stored_int

MESSAGE_COLUMNS: Final = ("head_id", "id", "payload", "headers", "created_at_ms", "deleted")
"""The `messages` columns after the log column, in the order of a buffered row."""

LogKey = tuple[str, NodeId]
"""(topic, origin): how the writer keys its logs (a plain tuple: it is hashed per append)."""


class DbConnection(Protocol):
    """The part of a DB-API connection the store uses."""

    # What `execute` returns needs only `fetchone`, `fetchall` and `rowcount`.
    def execute(self, sql: str, parameters: Any = ..., /) -> Any:
        """Run one statement with its parameters."""

    def close(self) -> None:
        """Close the connection."""


ConnectionT = TypeVar("ConnectionT", bound=DbConnection)


@dataclass(frozen=True, slots=True)
class SqlDialect:
    """The SQL text that differs between databases; the statements are built from it once."""

    log_column: str
    """The column of `messages` and `tombstones` that names their log."""
    begin: str = "BEGIN"
    """The statement that opens a write transaction (SQLite: `BEGIN IMMEDIATE`)."""
    placeholder: str = "?"
    """How the driver marks a parameter: `?` (sqlite3, DuckDB) or `%s` (psycopg)."""
    lock_rows: str = ""
    """Ends the writer's reads of a log row and a queue front (` FOR UPDATE` on a shared one)."""
    blob_length: str = "length"
    """The function that gives a BLOB's length in bytes (`octet_length` where `length` of a
    BLOB is not its bytes)."""
    keys_by_log: bool = True
    """Whether a lookup of idempotency keys names the log in its filter. False for DuckDB,
    which scans its index on the key only when the filter names no other column: the rows
    found are then checked against the log by the writer."""

    def read_size(self, table: str = "") -> str:
        """SQL for a message row's `read_size`: payload bytes plus the stored header JSON text.

        `length` of TEXT counts characters, as Python's `len` of the JSON string does.
        """
        prefix = f"{table}." if table else ""
        return f"{self.blob_length}({prefix}payload) + coalesce(length({prefix}headers), 0)"

    def render(self, sql: str) -> str:
        """`sql`, written with `?` placeholders, in this dialect's placeholder style."""
        if self.placeholder == "?":
            return sql
        # A literal `%` must be doubled once `%s` marks parameters.
        return sql.replace("%", "%%").replace("?", self.placeholder)


_KEY: Final = "topic = ? AND tenant_id = ? AND bl_name = ? AND device_id = ?"


def log_key(topic: str, origin: NodeId) -> tuple[str, str, str, str]:
    """The values of a log's key columns (topic, tenant_id, bl_name, device_id)."""
    return (topic, origin.tenant_id, origin.bl_name, origin.device_id)


class SqlStatements:
    """Every statement of `SqlStore`, rendered for one dialect."""

    def __init__(self, dialect: SqlDialect) -> None:
        """Build the statements; `statements_of(dialect)` builds them once per dialect."""
        log, lock, render = dialect.log_column, dialect.lock_rows, dialect.render
        message_columns = ", ".join(MESSAGE_COLUMNS)
        sync_updates = ", ".join(
            f"{name} = excluded.{name}" for name in SYNC_COLUMNS.split(", ")[3:]
        )
        size, m_size = dialect.read_size(), dialect.read_size("m")
        self.find_log: Final = render(
            f"SELECT id, head, first_head, bytes FROM logs WHERE {_KEY}{lock}"
        )
        self.log_tombstones: Final = render(
            f"SELECT from_head_id, to_head_id FROM tombstones WHERE {log} = ?"
        )
        self.create_log: Final = render(
            "INSERT INTO logs (topic, tenant_id, bl_name, device_id) VALUES (?, ?, ?, ?) "
            "RETURNING id"
        )
        self.update_head: Final = render(
            "UPDATE logs SET head = ?, first_head = ?, bytes = ? WHERE id = ?"
        )
        self.live_bytes: Final = render(
            f"SELECT coalesce(sum({size}), 0) FROM messages "
            f"WHERE {log} = ? AND head_id BETWEEN ? AND ? AND deleted = ?"
        )
        self.prefix_stats: Final = render(
            f"SELECT count(*), coalesce(sum({size}), 0) FROM messages "
            f"WHERE {log} = ? AND head_id < ?"
        )
        self.delete_prefix: Final = render(f"DELETE FROM messages WHERE {log} = ? AND head_id < ?")
        self.drop_tombstones: Final = render(
            f"DELETE FROM tombstones WHERE {log} = ? AND to_head_id < ?"
        )
        self.insert_message: Final = render(
            f"INSERT INTO messages ({log}, {message_columns}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        self.message_range: Final = render(
            f"SELECT {message_columns} FROM messages "
            f"WHERE {log} = ? AND head_id BETWEEN ? AND ? ORDER BY head_id"
        )
        self.erase: Final = render(
            "UPDATE messages SET deleted = ?, payload = ?, headers = NULL "
            f"WHERE {log} = ? AND head_id BETWEEN ? AND ? AND deleted = ?"
        )
        # A duplicate range keeps its first row (and its created_at_ms).
        self.insert_tombstone: Final = render(
            f"INSERT INTO tombstones ({log}, from_head_id, to_head_id, created_at_ms) "
            f"VALUES (?, ?, ?, ?) ON CONFLICT ({log}, from_head_id, to_head_id) DO NOTHING"
        )
        self.next_sequence: Final = render(
            "INSERT INTO fifo_queues (queue, last_sequence) VALUES (?, 1) "
            "ON CONFLICT (queue) DO UPDATE SET last_sequence = fifo_queues.last_sequence + 1 "
            "RETURNING last_sequence"
        )
        self.insert_fifo: Final = render(
            f"INSERT INTO fifo_messages ({FIFO_COLUMNS}) "
            f"VALUES ({', '.join('?' * len(FIFO_COLUMNS.split(', ')))})"
        )
        self.record_sync_state: Final = render(
            f"INSERT INTO sync_states ({SYNC_COLUMNS}) VALUES ({', '.join('?' * 13)}) "
            f"ON CONFLICT (peer, topic, origin_key) DO UPDATE SET {sync_updates}"
        )
        self.fetch: Final = render(
            f"SELECT m.{', m.'.join(MESSAGE_COLUMNS)} "
            f"FROM logs AS l JOIN messages AS m ON m.{log} = l.id "
            "WHERE l.topic = ? AND l.tenant_id = ? AND l.bl_name = ? AND l.device_id = ? "
            "AND m.head_id >= ? ORDER BY m.head_id LIMIT ?"
        )
        self.head: Final = render(f"SELECT head FROM logs WHERE {_KEY}")
        self.log_head: Final = render(f"SELECT head, first_head, bytes FROM logs WHERE {_KEY}")
        self.heads: Final = (
            "SELECT topic, tenant_id, bl_name, device_id, head, first_head, bytes FROM logs "
            "WHERE head > 0"
        )
        # Keyset pages in ListHeads order: topic, then the origin KEY (not its columns: "a/b"
        # sorts after "a-b", while the column "a" sorts before "a-b"). Text compares by UTF-8
        # bytes, which is code-point order.
        origin_key = "tenant_id || '/' || bl_name || '/' || device_id"
        self.heads_after: Final = render(
            f"{self.heads} AND (topic > ? OR (topic = ? AND {origin_key} > ?)) "
            f"ORDER BY topic, {origin_key} LIMIT ?"
        )
        self.heads_first: Final = render(f"{self.heads} ORDER BY topic, {origin_key} LIMIT ?")
        self.summaries: Final = render(
            f"SELECT m.head_id, {m_size}, m.created_at_ms "
            f"FROM logs AS l JOIN messages AS m ON m.{log} = l.id "
            "WHERE l.topic = ? AND l.tenant_id = ? AND l.bl_name = ? AND l.device_id = ? "
            "AND m.head_id >= ? ORDER BY m.head_id LIMIT ?"
        )
        self.tombstones: Final = (
            "SELECT l.topic, l.tenant_id, l.bl_name, l.device_id, t.from_head_id, "
            f"t.to_head_id, t.created_at_ms FROM tombstones AS t JOIN logs AS l ON l.id = t.{log}"
        )
        # Grouped on the (queue, sequence) primary key, so each page reads only its queues.
        fifo_queues = (
            "SELECT queue, count(*), coalesce(sum(attempts), 0), "
            "count(CASE WHEN leased_until_ms > 0 THEN 1 END) FROM fifo_messages"
        )
        self.fifo_queues_first: Final = render(
            f"{fifo_queues} GROUP BY queue ORDER BY queue LIMIT ?"
        )
        self.fifo_queues_after: Final = render(
            f"{fifo_queues} WHERE queue > ? GROUP BY queue ORDER BY queue LIMIT ?"
        )
        self.sync_states: Final = f"SELECT {SYNC_COLUMNS} FROM sync_states"
        # Keyset paging in the primary key's order. SQLite (BINARY) and DuckDB compare TEXT by
        # its UTF-8 bytes, which is code-point order: the order of `PeerSyncState.sort_key`.
        self.sync_states_after: Final = render(
            f"SELECT {SYNC_COLUMNS} FROM sync_states WHERE peer > ? OR (peer = ? AND "
            "(topic > ? OR (topic = ? AND origin_key > ?)))"
        )
        self.sync_states_order: Final = " ORDER BY peer, topic, origin_key"
        self.limit: Final = render(" LIMIT ?")
        self.sync_state_peers: Final = "SELECT peer, COUNT(*) FROM sync_states GROUP BY peer"
        self.forget_peer: Final = render("DELETE FROM sync_states WHERE peer = ?")
        self.check: Final = "SELECT value FROM meta WHERE key = 'schema_version'"


statements_of: Final = functools.cache(SqlStatements)
"""The statements of a dialect, built on first use."""


@dataclass(slots=True)
class LogState:
    """The writer's view of one log; dropped or rebuilt when a write transaction fails."""

    key: LogKey
    id: int
    head: int
    first: int = 1
    """The lowest head not trimmed: the log holds first..head (nothing when first > head)."""
    bytes: int = 0
    """The `read_size` total of the rows held."""
    tombstones: TombstoneSet = field(default_factory=TombstoneSet)
    """The heads the log's tombstones cover, merged: every append and replicate asks it."""


class SqlStore(BatchWriter, Generic[ConnectionT]):
    """A `MsgbusStore` on a SQL database; subclass it per database (see the module docstring)."""

    dialect: ClassVar[SqlDialect]
    """The SQL text of this backend."""
    driver_error: ClassVar[type[Exception]]
    """The driver's base exception."""
    wrap_error: ClassVar[Callable[[Any, str, str], StorageError]]
    """`(error, path, doing)`: a driver error met while `doing` something, as a `StorageError`."""
    single_writer: ClassVar[bool] = True
    """True when no other process writes the database, so the log cache outlives a write."""

    def __init__(self, path: str, writer: ConnectionT, version: int) -> None:
        """Take over an opened and verified write connection; backends' `open` calls this."""
        self._path = path
        self._writer = writer
        self._version = version
        self._sql = statements_of(self.dialect)
        self._key_sql = publish_key_statements(
            self.dialect.log_column, self.dialect.placeholder, self.dialect.keys_by_log
        )
        self._cursor_sql = sql_cursors.statements_for(self.dialect.render)
        self._lease_sql = sql_fifo_leases.statements_for(self.dialect.render)
        self._write_lock = threading.Lock()
        self._logs: dict[LogKey, LogState] = {}
        # Logs whose head this transaction moved, by row id.
        self._dirty: dict[int, LogState] = {}
        # Message rows of the current transaction not yet inserted: one bulk insert per batch.
        self._pending: list[tuple[object, ...]] = []
        # Idempotency key rows of the current transaction not yet inserted (log id, then
        # KEY_COLUMNS): one bulk insert before the commit, or before a key query.
        self._pending_keys: list[tuple[object, ...]] = []
        self._local = threading.local()
        self._readers: list[ConnectionT] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._released = False

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        return self._version

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    # -- what each backend provides -------------------------------------------------------------

    def _storage_error(self, error: Exception, doing: str) -> StorageError:
        return type(self).wrap_error(error, self._path, doing)

    @abc.abstractmethod
    def _flush(self) -> None:
        """Insert the buffered message rows inside the transaction, before anything reads them."""

    @abc.abstractmethod
    def _open_reader(self) -> ConnectionT:
        """A new connection for the calling thread that sees only committed data."""

    # -- the write transaction ------------------------------------------------------------------

    def write(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        """Apply `ops` in order in one durable transaction; see `MsgbusStore.write`."""
        with self._write_lock:
            self._ensure_open()
            try:
                self._begin()
                outcomes = self._apply_all(ops)
                self._flush_keys()
                self._commit()
            except BaseException as error:
                self._compact_after_commit = False
                self._pending_keys.clear()
                self._abort()
                if isinstance(error, self.driver_error):
                    raise self._storage_error(error, "writing") from None
                raise
            self._dirty.clear()
            if self._compact_after_commit:
                self._compact_after_commit = False
                try:
                    self._compact()
                except self.driver_error as error:
                    raise self._storage_error(error, "compacting") from None
            return outcomes

    def _compact(self) -> None:
        """Make freed space reusable after a commit (a `CompactOp`); SQLite's already is."""

    def _begin(self) -> None:
        """Open the write transaction."""
        if not self.single_writer:
            self._logs.clear()
        self._writer.execute(self.dialect.begin)

    def _commit(self) -> None:
        """Write what the batch buffered, store the heads it moved and commit."""
        self._flush()
        for log in self._dirty.values():
            self._writer.execute(self._sql.update_head, (log.head, log.first, log.bytes, log.id))
        self._writer.execute("COMMIT")

    def _abort(self) -> None:
        """Roll the failed transaction back and forget what the writer knew of it."""
        # The cache may hold heads and tombstones of the failed transaction: drop it whole.
        self._logs.clear()
        self._dirty.clear()
        self._pending.clear()
        # The database may already have rolled back by itself, as SQLite does after some I/O
        # errors, or never have begun.
        with contextlib.suppress(self.driver_error):
            self._writer.execute("ROLLBACK")

    def _execute(self, sql: str, parameters: Sequence[object] = ()) -> Any:
        """Run one statement of the write transaction."""
        return self._writer.execute(sql, parameters)

    # -- idempotency keys -----------------------------------------------------------------------

    def _find_key(self, topic: str, origin: NodeId, key: str) -> RememberedPublish | None:
        return self._find_keys(topic, origin, (key,)).get(key)

    def _find_keys(
        self, topic: str, origin: NodeId, keys: Sequence[str]
    ) -> dict[str, RememberedPublish]:
        # After the writer holds the log: on a shared database, after its row lock, so the
        # row another process committed for the same key is seen.
        log = self._find_log(topic, origin)
        if log is None or not keys:
            return {}
        self._flush_keys()
        found: dict[str, RememberedPublish] = {}
        for start in range(0, len(keys), MAX_KEYS_PER_FIND):
            chunk = keys[start : start + MAX_KEYS_PER_FIND]
            sql, parameters = self._key_sql.find_many(log.id, chunk)
            # fetchall: DuckDB refuses the next statement while a result is not read to its end.
            for row in self._execute(sql, parameters).fetchall():
                if row[0] == log.id:  # another log's row of the same key, where not filtered
                    found[str(row[1])] = remembered_from_row(row[2:])
        return found

    def _store_key(
        self, topic: str, origin: NodeId, key: str, remembered: RememberedPublish
    ) -> None:
        log = self._log(topic, origin)
        self._pending_keys.append(
            (log.id, key, remembered.head_id, remembered.message_id, remembered.created_at_ms)
        )

    def _flush_keys(self) -> None:
        """Insert the buffered key rows inside the transaction, before anything reads them."""
        if self._pending_keys:
            self._insert_key_rows(self._pending_keys)
            self._pending_keys.clear()

    def _insert_key_rows(self, rows: Sequence[tuple[object, ...]]) -> None:
        """Insert `publish_keys` rows (log id, then `KEY_COLUMNS`); a backend's bulk path."""
        for row in rows:
            self._execute(self._key_sql.insert, row)

    def _count_keys(self) -> int:
        self._flush_keys()
        return int(self._execute(self._key_sql.count).fetchall()[0][0])

    def _drop_oldest_keys(self, count: int, before_ms: int | None) -> int:
        self._flush_keys()
        if before_ms is None:
            return self._delete_keys(self._key_sql.drop_oldest, (clamp_stored(count),))
        parameters = (clamp_stored(before_ms), clamp_stored(count))
        return self._delete_keys(self._key_sql.drop_oldest_before, parameters)

    def _delete_keys(self, sql: str, parameters: Sequence[object]) -> int:
        """Run a statement that deletes `publish_keys` rows; how many it deleted."""
        return int(self._execute(sql, parameters).rowcount)

    def _record_sync_state(self, state: PeerSyncState) -> None:
        self._execute(self._sql.record_sync_state, sync_state_row(state))

    def _prune_sync_states(self, keep_peers: frozenset[str]) -> dict[str, int]:
        counts = self._execute(self._sql.sync_state_peers).fetchall()
        pruned = {str(peer): int(count) for peer, count in counts if peer not in keep_peers}
        for peer in pruned:
            self._execute(self._sql.forget_peer, (peer,))
        return pruned

    # -- cursors --------------------------------------------------------------------------------

    def _cursor_exists(self, key: CursorKey) -> bool:
        return self._execute(self._cursor_sql.exists, key).fetchone() is not None

    def _cursor_count(self) -> int:
        return int(self._execute(self._cursor_sql.count).fetchone()[0])

    def _store_cursor(self, cursor: Cursor) -> None:
        self._execute(self._cursor_sql.upsert, sql_cursors.cursor_row(cursor))

    def _delete_cursors(self, op: DeleteCursorOp) -> int:
        if op.topic is None:
            deleted = self._execute(self._cursor_sql.delete_name, (op.name,))
        else:
            key = (op.name, op.topic, op.origin.key)
            deleted = self._execute(self._cursor_sql.delete_one, key)
        return int(deleted.rowcount)

    # -- logs -----------------------------------------------------------------------------------

    def _find_log(self, topic: str, origin: NodeId) -> LogState | None:
        """The writer's view of an existing log (read from the database on first use)."""
        key = (topic, origin)
        log = self._logs.get(key)
        if log is not None:
            return log
        row = self._execute(self._sql.find_log, log_key(topic, origin)).fetchone()
        if row is None:
            return None
        log = LogState(key, *row)
        log.tombstones = TombstoneSet(self._execute(self._sql.log_tombstones, (log.id,)).fetchall())
        self._logs[key] = log
        return log

    def _create_log(self, topic: str, origin: NodeId) -> int:
        """Insert a new, empty log and return its row id."""
        row = self._execute(self._sql.create_log, log_key(topic, origin)).fetchone()
        return int(row[0])

    def _log(self, topic: str, origin: NodeId) -> LogState:
        """The writer's view of a log, creating the log (head 0) when it is new."""
        log = self._find_log(topic, origin)
        if log is None:
            key = (topic, origin)
            log = self._logs[key] = LogState(key, self._create_log(topic, origin), 0)
        return log

    def _insert(self, log: LogState, message: Message) -> None:
        headers = encode_headers(message.headers)
        self._pending.append(
            (
                log.id,
                message.head_id,
                message.id,
                message.payload,
                headers,
                message.created_at_ms,
                message.deleted,
            )
        )
        log.head = message.head_id
        log.bytes += len(message.payload) + (len(headers) if headers else 0)
        self._dirty[log.id] = log

    def _erase(self, log: LogState, first: int, last: int) -> int:
        """Erase the live rows of heads first..last; return how many there were."""
        self._flush()
        freed = self._execute(self._sql.live_bytes, (log.id, first, last, False)).fetchone()[0]
        cursor = self._execute(self._sql.erase, (True, b"", log.id, first, last, False))
        if freed:
            log.bytes -= int(freed)
            self._dirty[log.id] = log
        return int(cursor.rowcount)

    def _extent(self, topic: str, origin: NodeId) -> tuple[int, int]:
        log = self._find_log(topic, origin)
        return (1, 0) if log is None else (log.first, log.head)

    def _merged_tombstones(self, topic: str, origin: NodeId) -> TombstoneSet | None:
        log = self._find_log(topic, origin)
        return None if log is None else log.tombstones

    def _held(self, topic: str, origin: NodeId, first: int, last: int) -> list[Message]:
        log = self._find_log(topic, origin)
        if log is None:
            return []
        self._flush()
        rows = self._execute(self._sql.message_range, (log.id, first, last)).fetchall()
        return self._messages(topic, origin, rows)

    def _cut(self, topic: str, origin: NodeId, before: int) -> tuple[int, int]:
        log = self._log(topic, origin)
        self._flush()
        count, freed = self._execute(self._sql.prefix_stats, (log.id, before)).fetchone()
        if count:
            self._execute(self._sql.delete_prefix, (log.id, before))
        self._execute(self._sql.drop_tombstones, (log.id, before))
        log.tombstones.drop_below(before)
        log.first = before
        log.head = max(log.head, before - 1)
        log.bytes -= int(freed)
        self._dirty[log.id] = log
        self._trimmed(log)
        return int(count), int(freed)

    def _trimmed(self, log: LogState) -> None:
        """Persist a log's new start now, if the backend does not at commit (default: it does)."""

    # -- write operations -----------------------------------------------------------------------

    def _append(self, op: AppendOp) -> Message:
        if not 0 <= op.created_at_ms <= MAX_STORED_INT:
            validate_stored_int("created_at_ms", op.created_at_ms)
        log = self._logs.get((op.topic, op.origin)) or self._log(op.topic, op.origin)
        message = Message(
            op.id, op.topic, op.origin, log.head + 1, op.payload, dict(op.headers), op.created_at_ms
        )
        if log.tombstones:
            message = apply_tombstones(message, log.tombstones)
        self._insert(log, message)
        return message

    def _replicate(self, op: ReplicateOp) -> ReplicateResult:
        changed: list[Message] = []
        unchanged = 0
        # Stored rows this op has looked at or written, by (log id, head): one range query
        # serves a whole batch of re-sent messages instead of one query per message.
        seen: dict[tuple[int, int], Message] = {}
        # An op is one log (of a sync batch: thousands of messages): it is looked up once, not
        # twice per message, which saves hashing its key. The LogState stays the one in
        # `_logs` for the whole transaction, so holding it is the same as looking it up.
        last: LogState | None = None
        for raw in op.messages:
            try:
                incoming = check_replicated(raw)
                key = (incoming.topic, incoming.origin)
                log = last if last is not None and last.key == key else self._find_log(*key)
                head, start = (0, 1) if log is None else (log.head, log.first)
                tombstones = None if log is None else log.tombstones
                incoming = replicated_copy(incoming, tombstones, start)
                existing = None
                if log is not None and start <= incoming.head_id <= head:
                    existing = self._stored(log, incoming, op, seen)
                decision = decide(existing, incoming, head, start)
            except MsgbusError as error:
                return ReplicateResult(changed, unchanged, error)
            if decision is Decision.UNCHANGED:
                unchanged += 1
                continue
            if log is None:
                log = self._log(*key)
            last = log
            if decision is Decision.INSERT:
                self._insert(log, incoming)
                if incoming.topic == DELETE_TOPIC and not incoming.deleted:
                    self._record_tombstone(marker_tombstone(incoming))
                    seen.clear()  # the tombstone may have erased rows seen before
            else:
                self._erase(log, incoming.head_id, incoming.head_id)
            seen[(log.id, incoming.head_id)] = incoming
            changed.append(incoming)
        return ReplicateResult(changed, unchanged)

    def _stored(
        self, log: LogState, like: Message, op: ReplicateOp, seen: dict[tuple[int, int], Message]
    ) -> Message | None:
        """The stored row at `like`'s head, read with every later head of the op at once."""
        found = seen.get((log.id, like.head_id))
        if found is not None:
            return found
        self._flush()
        last = max(
            (m.head_id for m in op.messages if (m.topic, m.origin) == (like.topic, like.origin)),
            default=like.head_id,
        )
        rows = self._execute(
            self._sql.message_range, (log.id, like.head_id, min(max(last, like.head_id), log.head))
        ).fetchall()
        for message in self._messages(like.topic, like.origin, rows):
            seen[(log.id, message.head_id)] = message
        return seen.get((log.id, like.head_id))

    def _record_tombstone(self, tombstone: TombstoneRange) -> int:
        """Record a tombstone (the first of duplicates is kept) and erase the rows it covers."""
        log = self._log(tombstone.topic, tombstone.origin)
        span = (tombstone.from_head_id, tombstone.to_head_id)
        # The row keeps the delete as it was made (list_tombstones shows it); appends and
        # replicates ask only the merged set, never the tombstones table.
        self._execute(self._sql.insert_tombstone, (log.id, *span, tombstone.created_at_ms))
        log.tombstones.add(*span)
        last = min(tombstone.to_head_id, log.head)
        if tombstone.from_head_id > last:
            return 0
        return self._erase(log, tombstone.from_head_id, last)

    def _check_stored_time(self, created_at_ms: int) -> None:
        validate_stored_int("created_at_ms", created_at_ms)

    def _head(self, topic: str, origin: NodeId) -> int:
        log = self._find_log(topic, origin)
        return 0 if log is None else log.head

    def _store_marker(self, marker: Message) -> None:
        self._insert(self._log(marker.topic, marker.origin), marker)

    def _next_sequence(self, queue: str) -> int:
        return int(self._execute(self._sql.next_sequence, (queue,)).fetchone()[0])

    def _store_fifo(self, message: FifoMessage) -> None:
        self._execute(self._sql.insert_fifo, fifo_row(message))

    def _fifo_row(self, queue: str, sequence: int) -> LeasedRow | None:
        row = self._execute(self._lease_sql.row, (queue, clamp_stored(sequence))).fetchone()
        return None if row is None else LeasedRow(fifo_from_row(row), str(row[-1]))

    def _fifo_expired(self, queue: str, now_ms: int, limit: int) -> list[LeasedRow]:
        rows = self._execute(self._lease_sql.expired, (queue, now_ms, limit)).fetchall()
        return [LeasedRow(fifo_from_row(row), str(row[-1])) for row in rows]

    def _fifo_unleased(self, queue: str, limit: int) -> list[FifoMessage]:
        rows = self._execute(self._lease_sql.unleased, (queue, limit)).fetchall()
        return [fifo_from_row(row) for row in rows]

    def _fifo_set_lease(
        self, queue: str, sequence: int, attempts: int, lease_id: str, leased_until_ms: int
    ) -> None:
        parameters = (attempts, lease_id, leased_until_ms, queue, sequence)
        self._execute(self._lease_sql.set_lease, parameters)

    def _fifo_remove(self, queue: str, sequence: int) -> None:
        self._execute(self._lease_sql.remove, (queue, sequence))

    # -- reads ----------------------------------------------------------------------------------

    def _reader(self) -> ConnectionT:
        """The calling thread's reader connection, opened on its first read."""
        con: ConnectionT | None = getattr(self._local, "con", None)
        if con is not None:
            return con
        with self._readers_lock:
            self._ensure_open()
            try:
                con = self._open_reader()
            except self.driver_error as error:
                raise self._storage_error(error, "opening a reader") from None
            self._readers.append(con)
        self._local.con = con
        return con

    def _query(
        self, sql: str, parameters: Sequence[object] = (), doing: str = "reading"
    ) -> list[Any]:
        self._ensure_open()
        con = self._reader()
        try:
            rows: list[Any] = con.execute(sql, parameters).fetchall()
        except self.driver_error as error:
            raise self._storage_error(error, doing) from None
        return rows

    @staticmethod
    def _messages(topic: str, origin: NodeId, rows: list[Any]) -> list[Message]:
        """Messages of one log from rows in `MESSAGE_COLUMNS` order."""
        return [
            new_message(
                message_id,
                topic,
                origin,
                head_id,
                payload,
                decode_headers(headers) if headers else {},
                created_at_ms,
                deleted == 1,  # an INTEGER in SQLite, a BOOLEAN elsewhere
            )
            for head_id, message_id, payload, headers, created_at_ms, deleted in rows
        ]

    def _query_within(self, sql: str, parameters: Sequence[object], max_bytes: int) -> list[Any]:
        """The rows of a message query, up to `max_bytes` of `read_size` (at least one row).

        Rows are stepped one at a time and the cursor is closed at the first row that does not
        fit, so the read never holds more than `max_bytes` plus that one row.
        """
        self._ensure_open()
        con = self._reader()
        rows: list[Any] = []
        try:
            cursor = con.execute(sql, parameters)
            with contextlib.closing(cursor):
                total = 0
                while (row := cursor.fetchone()) is not None:
                    # read_size from the columns: payload bytes plus the stored header JSON.
                    total += len(row[2]) + len(row[3] or "")
                    if rows and total > max_bytes:
                        break
                    rows.append(row)
        except self.driver_error as error:
            raise self._storage_error(error, "fetching") from None
        return rows

    def fetch(
        self,
        topic: str,
        origin: NodeId,
        from_head_id: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> list[Message]:
        """Up to `limit` messages of a log with head >= `from_head_id`, in head order.

        With `max_bytes`, the page ends before the message that would bring it above
        `max_bytes` (see `MsgbusStore.fetch`).
        """
        if limit <= 0:
            return []
        parameters = (
            *log_key(topic, origin),
            clamp_stored(max(from_head_id, 1)),
            clamp_stored(limit),
        )
        if max_bytes is None:
            rows = self._query(self._sql.fetch, parameters, "fetching")
        else:
            rows = self._query_within(self._sql.fetch, parameters, max_bytes)
        return self._messages(topic, origin, rows)

    def get_head(self, topic: str, origin: NodeId) -> int:
        """The highest head of a log, or 0 when it never had a message."""
        rows = self._query(self._sql.head, log_key(topic, origin))
        return int(rows[0][0]) if rows else 0

    def log_head(self, topic: str, origin: NodeId) -> TopicHead:
        """One log's head, first head held and bytes; all zero for an unknown log."""
        rows = self._query(self._sql.log_head, log_key(topic, origin))
        if not rows:
            return TopicHead(topic, origin, 0)
        head, start, size = rows[0]
        return TopicHead(topic, origin, int(head), first_held(int(start), int(head)), int(size))

    def list_heads(
        self, after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[TopicHead]:
        """Every log that ever had a message, by topic and then origin key (code points).

        `after` and `limit` make it a keyset page (see `MsgbusStore.list_heads`).
        """
        if limit is not None and limit <= 0:
            return []
        parameters: list[object]
        if limit is None and after is None:
            sql, parameters = self._sql.heads, []
        elif after is None:
            sql, parameters = self._sql.heads_first, [clamp_stored(limit or MAX_STORED_INT)]
        else:
            topic, origin_key = after
            sql = self._sql.heads_after
            parameters = [topic, topic, origin_key, clamp_stored(limit or MAX_STORED_INT)]
        heads = [
            TopicHead(topic, NodeId(tenant, bl, device), head, first_held(start, head), size)
            for topic, tenant, bl, device, head, start, size in self._query(sql, parameters)
        ]
        return self._sorted_heads(heads)

    def summaries(
        self, topic: str, origin: NodeId, from_head_id: int, limit: int
    ) -> list[MessageSummary]:
        """Up to `limit` summaries of a log's messages from `from_head_id`, in head order."""
        if limit <= 0:
            return []
        parameters = (*log_key(topic, origin), clamp_stored(max(from_head_id, 1)), limit)
        rows = self._query(self._sql.summaries, parameters)
        return [MessageSummary(int(h), int(size), int(t)) for h, size, t in rows]

    @abc.abstractmethod
    def disk_usage(self) -> DiskUsage:
        """The database's files and their reusable free space (see `MsgbusStore.disk_usage`)."""

    @staticmethod
    def _sorted_heads(
        heads: list[TopicHead], after: tuple[str, str] | None = None, limit: int | None = None
    ) -> list[TopicHead]:
        # Sorted here as well as by SQL, so the order is Python's code-point order by
        # construction, exactly as the reference store sorts, whatever the collation.
        return page_of_heads(heads, after, limit)

    def list_tombstones(self) -> list[TombstoneRange]:
        """Every recorded tombstone, ordered by topic, origin key, from and to."""
        rows = self._query(self._sql.tombstones)
        tombstones = [
            TombstoneRange(topic, NodeId(tenant, bl, device), first, last, created)
            for topic, tenant, bl, device, first, last, created in rows
        ]
        return sorted(
            tombstones, key=lambda t: (t.topic, t.origin.key, t.from_head_id, t.to_head_id)
        )

    def peek_fifo(self, queue: str, now_ms: int = 0) -> FifoMessage | None:
        """The front of a queue (the lowest no live lease holds); see `MsgbusStore.peek_fifo`."""
        rows = self._query(self._lease_sql.front, (queue, clamp_stored(now_ms)))
        return as_seen(fifo_from_row(rows[0]), now_ms) if rows else None

    def list_fifo(
        self, queue: str, after_sequence: int, limit: int, now_ms: int = 0
    ) -> list[FifoMessage]:
        """One page of a queue, leased or not; see `MsgbusStore.list_fifo`."""
        if limit <= 0:
            return []
        parameters = (queue, clamp_stored(after_sequence), clamp_stored(limit))
        rows = self._query(self._lease_sql.page, parameters)
        return [as_seen(fifo_from_row(row), now_ms) for row in rows]

    def list_fifo_queues(
        self, after: str | None = None, limit: int | None = None
    ) -> list[FifoQueueSummary]:
        """The queues holding messages, by name; see `MsgbusStore.list_fifo_queues`."""
        if limit is not None and limit <= 0:
            return []
        bound = clamp_stored(limit if limit is not None else MAX_STORED_INT)
        if after is None:
            rows = self._query(self._sql.fifo_queues_first, (bound,))
        else:
            rows = self._query(self._sql.fifo_queues_after, (after, bound))
        summaries = [FifoQueueSummary(str(q), int(n), int(a), int(held)) for q, n, a, held in rows]
        # Sorted here as well, so the order is code-point order whatever the collation.
        return sorted(summaries, key=lambda summary: summary.queue)

    def list_sync_states(
        self, after: tuple[str, str, str] | None = None, limit: int | None = None
    ) -> list[PeerSyncState]:
        """Sync states ordered by peer, topic and origin key; see `MsgbusStore.list_sync_states`."""
        if limit is not None and limit <= 0:
            return []
        sql, parameters = self._sql.sync_states, list[object]()
        if after is not None:
            peer, topic, origin_key = after
            sql, parameters = self._sql.sync_states_after, [peer, peer, topic, topic, origin_key]
        sql += self._sql.sync_states_order
        if limit is not None:
            sql += self._sql.limit
            parameters.append(clamp_stored(limit))
        return [sync_state_from_row(row) for row in self._query(sql, parameters)]

    def get_cursor(self, name: str, topic: str, origin: NodeId) -> Cursor | None:
        """The durable cursor (name, topic, origin), or None when none was committed."""
        rows = self._query(self._cursor_sql.get, (name, topic, origin.key))
        return sql_cursors.cursor_from_row(rows[0]) if rows else None

    def list_cursors(
        self, name: str | None = None, after: CursorKey | None = None, limit: int = 1_000
    ) -> list[Cursor]:
        """Cursors by name, topic and origin key; see `MsgbusStore.list_cursors`."""
        if limit <= 0:
            return []
        sql, parameters = self._cursor_sql.page(name, after, clamp_stored(limit))
        cursors = [sql_cursors.cursor_from_row(row) for row in self._query(sql, parameters)]
        # Sorted here as well, so the order is code-point order whatever the collation.
        return sorted(cursors, key=lambda cursor: cursor.key)

    def check(self) -> None:
        """Raise `StorageError` unless the database answers a trivial query."""
        self._query(self._sql.check)

    # -- lifecycle ------------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self._path}: the store is closed")

    def _release(self) -> None:
        """Close the writer connection (called once, by `close`)."""
        self._writer.close()

    def close(self) -> None:
        """Close the writer and every reader connection. Calling it twice is harmless."""
        with self._write_lock, self._readers_lock:
            if self._released:
                return
            self._released = True
            self._closed = True
            for con in self._readers:
                con.close()
            self._readers.clear()
            self._release()
            self._logs.clear()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r})"


__all__ = ["MESSAGE_COLUMNS", "DbConnection", "LogState", "SqlDialect", "SqlStore", "log_key"]
