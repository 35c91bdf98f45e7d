"""`SqliteStore`: the `MsgbusStore` on one SQLite file (stdlib sqlite3, WAL, synchronous=FULL).

One write connection serves whichever single thread calls `write`; every reading thread gets its
own connection, so in WAL mode reads never wait for the writer and see only committed data.
Other processes may open the file and read it while the daemon writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from msgbus_core.errors import InvalidArgumentError, MsgbusError, StorageError
from msgbus_core.limits import DELETE_TOPIC, MAX_STORED_INT
from msgbus_core.model import (
    FifoMessage,
    Message,
    NodeId,
    PeerSyncState,
    TombstoneRange,
    TopicHead,
)
from msgbus_core.ops import (
    AckOp,
    AppendOp,
    DeleteRangeOp,
    DeleteResult,
    EnqueueOp,
    Outcome,
    RecordSyncStateOp,
    RejectOp,
    ReplicateOp,
    ReplicateResult,
    WriteOp,
    WriteResult,
)
from msgbus_core.replication import (
    Decision,
    apply_tombstones,
    check_replicated,
    decide,
    marker_tombstone,
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
from msgbus_core.validation import clamp_stored, validate_stored_int
from msgbus_store_sqlite import schema
from msgbus_store_sqlite.errors import storage_error

BUSY_TIMEOUT_MS: Final = 10_000
"""How long a connection waits for a lock (another process's checkpoint, say) before failing."""

MAX_ATTEMPTS: Final = 2**32 - 1
"""FIFO attempts are a uint32 on the wire and saturate there."""

_LOG_ID_SQL: Final = (
    "SELECT id, head FROM logs WHERE topic = ? AND tenant_id = ? AND bl_name = ? AND device_id = ?"
)
_FETCH_SQL: Final = """
    SELECT m.head_id, m.id, m.payload, m.headers, m.created_at_ms, m.deleted
    FROM logs AS l JOIN messages AS m ON m.log = l.id
    WHERE l.topic = ? AND l.tenant_id = ? AND l.bl_name = ? AND l.device_id = ?
      AND m.head_id >= ?
    ORDER BY m.head_id
    LIMIT ?
"""
_INSERT_MESSAGE_SQL: Final = (
    "INSERT INTO messages (log, head_id, id, payload, headers, created_at_ms, deleted) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_ERASE_SQL: Final = (
    "UPDATE messages SET deleted = 1, payload = X'', headers = NULL "
    "WHERE log = ? AND head_id BETWEEN ? AND ? AND deleted = 0"
)


@dataclass(slots=True)
class _Log:
    """The writer's view of one log: its row id, head and tombstones.

    It is valid only inside the current transaction and is dropped when one fails, so a rollback
    never leaves it wrong.
    """

    id: int
    head: int
    tombstones: list[TombstoneRange] = field(default_factory=list)


class SqliteStore:
    """A `MsgbusStore` in one SQLite database file."""

    def __init__(self, path: str, writer: sqlite3.Connection, version: int) -> None:
        """Use `SqliteStore.open`; this takes over an already verified write connection."""
        self._path = path
        self._writer = writer
        self._version = version
        self._write_lock = threading.Lock()
        self._logs: dict[tuple[str, NodeId], _Log] = {}
        self._dirty: dict[int, _Log] = {}
        # Message rows of the current transaction not yet inserted: one executemany per batch.
        self._pending: list[tuple[object, ...]] = []
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: str) -> SqliteStore:
        """Open the database at `path`, creating it when the file is missing or empty.

        Raises `SchemaError` (naming the file) when it is not a msgbus database or was written by
        a newer schema, and `StorageError` when it cannot be opened at all.
        """
        try:
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
            mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StorageError(f"{path}: SQLite refused WAL mode (journal_mode is {mode})")
            # FULL: every commit is fsynced before `write` returns, so an acknowledged write
            # survives power loss (NORMAL in WAL mode would only protect against crashes).
            writer.execute("PRAGMA synchronous = FULL")
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

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        return self._version

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    # -- writes ---------------------------------------------------------------------------------

    def write(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        """Apply `ops` in order in one durable transaction; see `MsgbusStore.write`."""
        with self._write_lock:
            self._ensure_open()
            con = self._writer
            try:
                con.execute("BEGIN IMMEDIATE")
                outcomes = self._apply_all(ops)
                self._flush()
                for log in self._dirty.values():
                    con.execute("UPDATE logs SET head = ? WHERE id = ?", (log.head, log.id))
                con.execute("COMMIT")
            except BaseException as error:
                self._abort()
                if isinstance(error, sqlite3.Error):
                    raise storage_error(error, self._path, "writing") from None
                raise
            self._dirty.clear()
            return outcomes

    def _abort(self) -> None:
        # The cache may hold heads and tombstones of the failed transaction: drop it whole.
        self._logs.clear()
        self._dirty.clear()
        self._pending.clear()
        if self._writer.in_transaction:
            # SQLite may already have rolled back by itself, as it does after some I/O errors.
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("ROLLBACK")

    def _apply_all(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        # Invariant: an op raises its MsgbusError before its first change, so a failed op
        # has written nothing and the batch can go on without a savepoint per op.
        outcomes: list[Outcome] = []
        for op in ops:
            try:
                # Appends are the hot path: skip the dispatch.
                if type(op) is AppendOp:
                    outcomes.append(self._append(op))
                else:
                    outcomes.append(self._apply(op))
            except MsgbusError as error:
                outcomes.append(error)
        return outcomes

    def _flush(self) -> None:
        """Insert the buffered message rows (one executemany) before anything reads them."""
        if self._pending:
            self._writer.executemany(_INSERT_MESSAGE_SQL, self._pending)
            self._pending.clear()

    def _apply(self, op: WriteOp) -> WriteResult:
        match op:
            case AppendOp():
                return self._append(op)
            case ReplicateOp():
                return self._replicate(op)
            case DeleteRangeOp():
                return self._delete_range(op)
            case EnqueueOp():
                return self._enqueue(op)
            case AckOp():
                return self._ack(op)
            case RejectOp():
                return self._reject(op)
            case RecordSyncStateOp():
                self._record_sync_state(op.state)
                return None

    def _log(self, topic: str, origin: NodeId, *, create: bool) -> _Log | None:
        key = (topic, origin)
        log = self._logs.get(key)
        if log is not None:
            return log
        con = self._writer
        row = con.execute(
            _LOG_ID_SQL, (topic, origin.tenant_id, origin.bl_name, origin.device_id)
        ).fetchone()
        if row is not None:
            log = _Log(int(row[0]), int(row[1]))
            log.tombstones = [
                TombstoneRange(topic, origin, int(first), int(last), int(created))
                for first, last, created in con.execute(
                    "SELECT from_head_id, to_head_id, created_at_ms FROM tombstones WHERE log = ?",
                    (log.id,),
                )
            ]
        elif create:
            cursor = con.execute(
                "INSERT INTO logs (topic, tenant_id, bl_name, device_id) VALUES (?, ?, ?, ?)",
                (topic, origin.tenant_id, origin.bl_name, origin.device_id),
            )
            assert cursor.lastrowid is not None
            log = _Log(cursor.lastrowid, 0)
        else:
            return None
        self._logs[key] = log
        return log

    def _insert(self, log: _Log, message: Message) -> None:
        self._pending.append(
            (
                log.id,
                message.head_id,
                message.id,
                message.payload,
                encode_headers(message.headers),
                message.created_at_ms,
                message.deleted,
            )
        )
        log.head = message.head_id
        self._dirty[log.id] = log

    def _append(self, op: AppendOp) -> Message:
        if not 0 <= op.created_at_ms <= MAX_STORED_INT:
            validate_stored_int("created_at_ms", op.created_at_ms)
        log = self._logs.get((op.topic, op.origin)) or self._log(op.topic, op.origin, create=True)
        assert log is not None
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
        for raw in op.messages:
            try:
                incoming = check_replicated(raw)
                log = self._log(incoming.topic, incoming.origin, create=False)
                head = 0 if log is None else log.head
                existing = None
                if log is not None:
                    incoming = apply_tombstones(incoming, log.tombstones)
                    if incoming.head_id <= head:
                        existing = self._stored(log, incoming)
                decision = decide(existing, incoming, head)
            except MsgbusError as error:
                return ReplicateResult(changed, unchanged, error)
            if decision is Decision.UNCHANGED:
                unchanged += 1
                continue
            if decision is Decision.INSERT:
                log = self._log(incoming.topic, incoming.origin, create=True)
                assert log is not None
                self._insert(log, incoming)
                if incoming.topic == DELETE_TOPIC and not incoming.deleted:
                    self._record_tombstone(marker_tombstone(incoming))
            else:
                assert log is not None
                self._erase(log, incoming.head_id, incoming.head_id)
            changed.append(incoming)
        return ReplicateResult(changed, unchanged)

    def _stored(self, log: _Log, like: Message) -> Message | None:
        self._flush()
        row = self._writer.execute(
            "SELECT id, payload, headers, created_at_ms, deleted FROM messages "
            "WHERE log = ? AND head_id = ?",
            (log.id, like.head_id),
        ).fetchone()
        if row is None:
            return None
        message_id, payload, headers, created_at_ms, deleted = row
        return Message(
            message_id,
            like.topic,
            like.origin,
            like.head_id,
            payload,
            decode_headers(headers),
            created_at_ms,
            bool(deleted),
        )

    def _erase(self, log: _Log, first: int, last: int) -> int:
        self._flush()
        return self._writer.execute(_ERASE_SQL, (log.id, first, last)).rowcount

    def _record_tombstone(self, tombstone: TombstoneRange) -> int:
        """Record a tombstone (the first of duplicates is kept) and erase the rows it covers."""
        log = self._log(tombstone.topic, tombstone.origin, create=True)
        assert log is not None
        span = (tombstone.from_head_id, tombstone.to_head_id)
        if not any((t.from_head_id, t.to_head_id) == span for t in log.tombstones):
            self._writer.execute(
                "INSERT INTO tombstones (log, from_head_id, to_head_id, created_at_ms) "
                "VALUES (?, ?, ?, ?)",
                (log.id, *span, tombstone.created_at_ms),
            )
            log.tombstones.append(tombstone)
        last = min(tombstone.to_head_id, log.head)
        if tombstone.from_head_id > last:
            return 0
        return self._erase(log, tombstone.from_head_id, last)

    def _delete_range(self, op: DeleteRangeOp) -> DeleteResult:
        if op.from_head_id > op.to_head_id:
            raise InvalidArgumentError(
                f"from_head_id must be <= to_head_id, got {op.from_head_id} > {op.to_head_id}"
            )
        validate_stored_int("created_at_ms", op.created_at_ms)
        log = self._log(op.topic, op.origin, create=False)
        head = 0 if log is None else log.head
        first, last = max(op.from_head_id, 1), min(op.to_head_id, head)
        if first > last:
            return DeleteResult(0)
        tombstone = TombstoneRange(op.topic, op.origin, first, last, op.created_at_ms)
        count = self._record_tombstone(tombstone)
        markers = self._log(DELETE_TOPIC, op.origin, create=True)
        assert markers is not None
        marker = Message(
            id=op.marker_id,
            topic=DELETE_TOPIC,
            origin=op.origin,
            head_id=markers.head + 1,
            payload=tombstone.to_marker_payload(),
            headers={},
            created_at_ms=op.created_at_ms,
        )
        self._insert(markers, marker)
        return DeleteResult(count, marker, tombstone)

    def _enqueue(self, op: EnqueueOp) -> FifoMessage:
        validate_stored_int("created_at_ms", op.created_at_ms)
        con = self._writer
        row = con.execute(
            "INSERT INTO fifo_queues (queue, last_sequence) VALUES (?, 1) "
            "ON CONFLICT (queue) DO UPDATE SET last_sequence = last_sequence + 1 "
            "RETURNING last_sequence",
            (op.queue,),
        ).fetchone()
        assert row is not None
        message = FifoMessage(
            id=op.id,
            queue=op.queue,
            topic=op.topic,
            source=op.source,
            target=op.target,
            payload=bytes(op.payload),
            headers=dict(op.headers),
            created_at_ms=op.created_at_ms,
            sequence=int(row[0]),
        )
        con.execute(
            f"INSERT INTO fifo_messages ({FIFO_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            fifo_row(message),
        )
        return message

    def _front(self, queue: str, message_id: str) -> int | None:
        """The front's sequence when the front of `queue` has id `message_id`, else None."""
        row = self._writer.execute(
            "SELECT sequence, id FROM fifo_messages WHERE queue = ? ORDER BY sequence LIMIT 1",
            (queue,),
        ).fetchone()
        if row is None or row[1] != message_id:
            return None
        return int(row[0])

    def _ack(self, op: AckOp) -> bool:
        sequence = self._front(op.queue, op.message_id)
        if sequence is None:
            return False
        self._writer.execute(
            "DELETE FROM fifo_messages WHERE queue = ? AND sequence = ?", (op.queue, sequence)
        )
        return True

    def _reject(self, op: RejectOp) -> bool:
        sequence = self._front(op.queue, op.message_id)
        if sequence is None:
            return False
        self._writer.execute(
            "UPDATE fifo_messages SET attempts = min(attempts + 1, ?) "
            "WHERE queue = ? AND sequence = ?",
            (MAX_ATTEMPTS, op.queue, sequence),
        )
        return True

    def _record_sync_state(self, state: PeerSyncState) -> None:
        self._writer.execute(
            f"INSERT OR REPLACE INTO sync_states ({SYNC_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            sync_state_row(state),
        )

    # -- reads ----------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is not None:
            return con
        self._ensure_open()
        try:
            # check_same_thread=False only so that `close` can close it from another thread;
            # the connection is used by the thread that opened it.
            con = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            con.execute("PRAGMA query_only = ON")
        except sqlite3.Error as error:
            raise storage_error(error, self._path, "opening a reader") from None
        with self._readers_lock:
            if self._closed:
                con.close()
                self._ensure_open()
            self._readers.append(con)
        self._local.con = con
        return con

    def _query(self, sql: str, parameters: tuple[object, ...] = ()) -> list[Any]:
        con = self._reader()
        try:
            rows: list[Any] = con.execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            raise storage_error(error, self._path, "reading") from None
        return rows

    def fetch(self, topic: str, origin: NodeId, from_head_id: int, limit: int) -> list[Message]:
        """Up to `limit` messages of a log with head >= `from_head_id`, in head order."""
        if limit <= 0:
            return []
        con = self._reader()
        try:
            rows = con.execute(
                _FETCH_SQL,
                (
                    topic,
                    origin.tenant_id,
                    origin.bl_name,
                    origin.device_id,
                    clamp_stored(max(from_head_id, 1)),
                    clamp_stored(limit),
                ),
            ).fetchall()
        except sqlite3.Error as error:
            raise storage_error(error, self._path, "fetching") from None
        return [
            new_message(
                message_id,
                topic,
                origin,
                head_id,
                payload,
                decode_headers(headers) if headers else {},
                created_at_ms,
                deleted == 1,
            )
            for head_id, message_id, payload, headers, created_at_ms, deleted in rows
        ]

    def get_head(self, topic: str, origin: NodeId) -> int:
        """The highest head of a log, or 0 when it has no message."""
        rows = self._query(
            "SELECT head FROM logs WHERE topic = ? AND tenant_id = ? AND bl_name = ? "
            "AND device_id = ?",
            (topic, origin.tenant_id, origin.bl_name, origin.device_id),
        )
        return int(rows[0][0]) if rows else 0

    def list_heads(self) -> list[TopicHead]:
        """Every non-empty log's head, ordered by topic and then origin key (code points)."""
        rows = self._query(
            "SELECT topic, tenant_id, bl_name, device_id, head FROM logs WHERE head > 0"
        )
        heads = [
            TopicHead(str(topic), NodeId(str(tenant), str(bl), str(device)), int(head))
            for topic, tenant, bl, device, head in rows
        ]
        # Sorted here rather than by SQL so the order is Python's code-point order by
        # construction, exactly as the reference store sorts, whatever the collation.
        return sorted(heads, key=lambda h: (h.topic, h.origin.key))

    def list_tombstones(self) -> list[TombstoneRange]:
        """Every recorded tombstone, ordered by topic, origin key, from and to."""
        rows = self._query(
            "SELECT l.topic, l.tenant_id, l.bl_name, l.device_id, t.from_head_id, "
            "t.to_head_id, t.created_at_ms FROM tombstones AS t JOIN logs AS l ON l.id = t.log"
        )
        tombstones = [
            TombstoneRange(
                str(topic),
                NodeId(str(tenant), str(bl), str(device)),
                int(first),
                int(last),
                int(created),
            )
            for topic, tenant, bl, device, first, last, created in rows
        ]
        return sorted(
            tombstones, key=lambda t: (t.topic, t.origin.key, t.from_head_id, t.to_head_id)
        )

    def peek_fifo(self, queue: str) -> FifoMessage | None:
        """The front (lowest sequence) of a queue, or None when it is empty."""
        rows = self._query(
            f"SELECT {FIFO_COLUMNS} FROM fifo_messages WHERE queue = ? ORDER BY sequence LIMIT 1",
            (queue,),
        )
        return fifo_from_row(rows[0]) if rows else None

    def list_sync_states(self) -> list[PeerSyncState]:
        """Every sync state, ordered by peer, topic and origin key."""
        rows = self._query(f"SELECT {SYNC_COLUMNS} FROM sync_states")
        states = [sync_state_from_row(row) for row in rows]
        return sorted(states, key=lambda s: s.sort_key)

    def check(self) -> None:
        """Raise `StorageError` unless the database answers a trivial query."""
        self._query("SELECT value FROM meta WHERE key = 'schema_version'")

    # -- lifecycle ------------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self._path}: the store is closed")

    def close(self) -> None:
        """Close the writer and every reader connection. Calling it twice is harmless."""
        with self._write_lock, self._readers_lock:
            if self._closed:
                return
            self._closed = True
            for con in self._readers:
                con.close()
            self._readers.clear()
            self._writer.close()
            self._logs.clear()

    def __repr__(self) -> str:
        return f"SqliteStore({self._path!r})"
