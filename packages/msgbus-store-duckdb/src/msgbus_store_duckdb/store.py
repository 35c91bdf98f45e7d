"""`DuckdbStore`: the `MsgbusStore` on one DuckDB file.

DuckDB spends about a millisecond of CPU per statement, so the write path is set-based: a batch
of appends costs one appender flush however many messages it holds, and the writer keeps each
log's id, head and tombstones in memory (one process owns a DuckDB file, so nobody else can
change them). Reads run on a cursor per thread and see committed data only.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import duckdb

from msgbus_core.errors import InvalidArgumentError, MsgbusError, SchemaError, StorageError
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
from msgbus_store_duckdb import schema
from msgbus_store_duckdb.errors import storage_error

MAX_ATTEMPTS: Final = 2**32 - 1
"""FIFO attempts are a uint32 on the wire and saturate there."""

CONFIG: Final = {
    # Never reach for the network or load code because of what a file looks like: DuckDB would
    # otherwise try to download its sqlite extension when handed an SQLite file.
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}
"""DuckDB settings every connection of this store uses."""

_FETCH_SQL: Final = (
    "SELECT head_id, id, payload, headers, created_at_ms, deleted FROM messages "
    "WHERE log_id = ? AND head_id BETWEEN ? AND ? ORDER BY head_id"
)
_ERASE_SQL: Final = (
    "UPDATE messages SET deleted = true, payload = ''::BLOB, headers = NULL "
    "WHERE log_id = ? AND head_id BETWEEN ? AND ? AND NOT deleted"
)

LogKey = tuple[str, NodeId]


@dataclass(slots=True)
class _Log:
    """The writer's view of one log: its id, head and tombstones.

    Changed inside a transaction; rebuilt from the database when a transaction fails.
    """

    id: int
    head: int
    tombstones: list[TombstoneRange] = field(default_factory=list)


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


class DuckdbStore:
    """A `MsgbusStore` in one DuckDB database file."""

    def __init__(self, path: str, writer: duckdb.DuckDBPyConnection, version: int) -> None:
        """Use `DuckdbStore.open`; this takes over an already verified connection."""
        self._path = path
        self._writer = writer
        self._version = version
        self._write_lock = threading.Lock()
        self._logs: dict[LogKey, _Log] = {}
        self._next_log_id = 1
        self._pending: list[tuple[object, ...]] = []
        self._dirty: dict[int, tuple[LogKey, _Log]] = {}
        self._appender: Any = None
        # What readers may see: (log id, head) of every log as of the last commit.
        self._committed: dict[LogKey, tuple[int, int]] = {}
        self._committed_lock = threading.Lock()
        # Cursors are made from a connection nobody queries, under a lock, never from the
        # writer while it works.
        self._root = writer.cursor()
        self._local = threading.local()
        self._readers: list[duckdb.DuckDBPyConnection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._released = False
        self._in_transaction = False
        self._load()

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
        heads = dict(
            con.execute("SELECT log_id, max(head_id) FROM messages GROUP BY log_id").fetchall()
        )
        logs: dict[LogKey, _Log] = {}
        by_id: dict[int, LogKey] = {}
        rows = con.execute("SELECT id, topic, tenant_id, bl_name, device_id FROM logs").fetchall()
        for log_id, topic, tenant, bl, device in rows:
            key = (topic, NodeId(tenant, bl, device))
            logs[key] = _Log(log_id, heads.get(log_id, 0))
            by_id[log_id] = key
        tombstones = con.execute(
            "SELECT log_id, from_head_id, to_head_id, created_at_ms FROM tombstones"
        ).fetchall()
        for log_id, first, last, created in tombstones:
            topic, origin = by_id[log_id]
            logs[by_id[log_id]].tombstones.append(
                TombstoneRange(topic, origin, first, last, created)
            )
        self._logs = logs
        self._next_log_id = max(by_id, default=0) + 1
        self._pending.clear()
        self._dirty.clear()
        self._appender = None
        with self._committed_lock:
            self._committed = {key: (log.id, log.head) for key, log in logs.items()}

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
            self._in_transaction = False
            try:
                outcomes = self._apply_all(ops)
                if self._in_transaction:
                    self._flush()
                    self._writer.commit()
                else:
                    # Only buffered rows: one appender flush is a transaction of its own, and
                    # saves the BEGIN and COMMIT statements on the hot path.
                    self._flush_rows()
            except BaseException as error:
                self._abort()
                if isinstance(error, duckdb.Error):
                    raise storage_error(error, self._path, "writing") from None
                raise
            with self._committed_lock:
                for key, log in self._dirty.values():
                    self._committed[key] = (log.id, log.head)
            self._dirty.clear()
            return outcomes

    def _abort(self) -> None:
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

    def _sql(self, sql: str, parameters: Sequence[object] = ()) -> duckdb.DuckDBPyConnection:
        """Run one statement of the write transaction, opening the transaction first if needed."""
        if not self._in_transaction:
            self._writer.begin()
            self._in_transaction = True
        return self._writer.execute(sql, parameters)

    def _apply_all(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        # Invariant: an op raises its MsgbusError before it changes anything, so a failed op
        # leaves no trace and the batch can go on.
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

    def _flush(self) -> None:
        """Write the buffered rows inside the transaction, before a statement that reads them."""
        if self._pending and not self._in_transaction:
            self._writer.begin()
            self._in_transaction = True
        self._flush_rows()

    def _flush_rows(self) -> None:
        """Write the buffered message rows with one appender flush (one statement)."""
        if not self._pending:
            return
        if self._appender is None:
            self._appender = self._writer.appender("messages")
        self._appender.append_rows(self._pending)
        self._pending.clear()
        self._appender.flush()

    def _log(self, topic: str, origin: NodeId) -> _Log:
        """The log's state, creating the log (head 0) when it is new."""
        key = (topic, origin)
        log = self._logs.get(key)
        if log is None:
            log = _Log(self._next_log_id, 0)
            self._sql(
                "INSERT INTO logs VALUES (?, ?, ?, ?, ?)",
                [log.id, topic, origin.tenant_id, origin.bl_name, origin.device_id],
            )
            self._next_log_id += 1
            self._logs[key] = log
            self._dirty[log.id] = (key, log)
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
        self._dirty[log.id] = ((message.topic, message.origin), log)

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
        for raw in op.messages:
            try:
                incoming = check_replicated(raw)
                log = self._logs.get((incoming.topic, incoming.origin))
                head = 0 if log is None else log.head
                existing = None
                if log is not None:
                    incoming = apply_tombstones(incoming, log.tombstones)
                    if incoming.head_id <= head:
                        existing = self._stored(log, incoming, op, seen)
                decision = decide(existing, incoming, head)
            except MsgbusError as error:
                return ReplicateResult(changed, unchanged, error)
            if decision is Decision.UNCHANGED:
                unchanged += 1
                continue
            log = self._log(incoming.topic, incoming.origin)
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
        self, log: _Log, like: Message, op: ReplicateOp, seen: dict[tuple[int, int], Message]
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
        rows = self._sql(
            _FETCH_SQL, [log.id, like.head_id, min(max(last, like.head_id), log.head)]
        ).fetchall()
        for head_id, message_id, payload, headers, created_at_ms, deleted in rows:
            seen[(log.id, head_id)] = Message(
                message_id,
                like.topic,
                like.origin,
                head_id,
                payload,
                decode_headers(headers),
                created_at_ms,
                deleted,
            )
        return seen.get((log.id, like.head_id))

    def _erase(self, log: _Log, first: int, last: int) -> int:
        self._flush()
        row = self._sql(_ERASE_SQL, [log.id, first, last]).fetchone()
        return 0 if row is None else int(row[0])

    def _record_tombstone(self, tombstone: TombstoneRange) -> int:
        """Record a tombstone (the first of duplicates is kept) and erase the rows it covers."""
        log = self._log(tombstone.topic, tombstone.origin)
        span = (tombstone.from_head_id, tombstone.to_head_id)
        if not any((t.from_head_id, t.to_head_id) == span for t in log.tombstones):
            self._sql(
                "INSERT INTO tombstones VALUES (?, ?, ?, ?)",
                [log.id, *span, tombstone.created_at_ms],
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
        existing = self._logs.get((op.topic, op.origin))
        head = 0 if existing is None else existing.head
        first, last = max(op.from_head_id, 1), min(op.to_head_id, head)
        if first > last:
            return DeleteResult(0)
        tombstone = TombstoneRange(op.topic, op.origin, first, last, op.created_at_ms)
        count = self._record_tombstone(tombstone)
        markers = self._log(DELETE_TOPIC, op.origin)
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
        row = self._sql(
            "INSERT INTO fifo_queues VALUES (?, 1) "
            "ON CONFLICT (queue) DO UPDATE SET last_sequence = last_sequence + 1 "
            "RETURNING last_sequence",
            [op.queue],
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
        self._sql(
            f"INSERT INTO fifo_messages ({FIFO_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            fifo_row(message),
        )
        return message

    def _front(self, queue: str, message_id: str) -> int | None:
        """The front's sequence when the front of `queue` has id `message_id`, else None."""
        row = self._sql(
            "SELECT sequence, id FROM fifo_messages WHERE queue = ? ORDER BY sequence LIMIT 1",
            [queue],
        ).fetchone()
        if row is None or row[1] != message_id:
            return None
        return int(row[0])

    def _ack(self, op: AckOp) -> bool:
        sequence = self._front(op.queue, op.message_id)
        if sequence is None:
            return False
        self._sql(
            "DELETE FROM fifo_messages WHERE queue = ? AND sequence = ?", [op.queue, sequence]
        )
        return True

    def _reject(self, op: RejectOp) -> bool:
        sequence = self._front(op.queue, op.message_id)
        if sequence is None:
            return False
        self._sql(
            "UPDATE fifo_messages SET attempts = least(attempts + 1, ?) "
            "WHERE queue = ? AND sequence = ?",
            [MAX_ATTEMPTS, op.queue, sequence],
        )
        return True

    def _record_sync_state(self, state: PeerSyncState) -> None:
        self._sql(
            f"INSERT OR REPLACE INTO sync_states ({SYNC_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            sync_state_row(state),
        )

    # -- reads ----------------------------------------------------------------------------------

    def _reader(self) -> duckdb.DuckDBPyConnection:
        con: duckdb.DuckDBPyConnection | None = getattr(self._local, "con", None)
        if con is not None:
            return con
        with self._readers_lock:
            self._ensure_open()
            try:
                con = self._root.cursor()
            except duckdb.Error as error:
                raise storage_error(error, self._path, "opening a reader") from None
            self._readers.append(con)
        self._local.con = con
        return con

    def _query(self, sql: str, parameters: Sequence[object] = ()) -> list[Any]:
        self._ensure_open()
        con = self._reader()
        try:
            rows: list[Any] = con.execute(sql, parameters).fetchall()
        except duckdb.Error as error:
            raise storage_error(error, self._path, "reading") from None
        return rows

    def fetch(self, topic: str, origin: NodeId, from_head_id: int, limit: int) -> list[Message]:
        """Up to `limit` messages of a log with head >= `from_head_id`, in head order."""
        self._ensure_open()
        found = self._committed.get((topic, origin))
        if found is None or limit <= 0:
            return []
        log_id, head = found
        first = clamp_stored(max(from_head_id, 1))
        # Logs are gap-free, so the page is exactly heads first..first+limit-1: a closed range
        # lets DuckDB skip row groups by their zone maps instead of sorting a top-N.
        last = min(head, first + min(limit, MAX_STORED_INT) - 1)
        if first > last:
            return []
        rows = self._query(_FETCH_SQL, (log_id, first, last))
        return [
            new_message(
                message_id,
                topic,
                origin,
                head_id,
                payload,
                decode_headers(headers) if headers else {},
                created_at_ms,
                deleted,
            )
            for head_id, message_id, payload, headers, created_at_ms, deleted in rows
        ]

    def get_head(self, topic: str, origin: NodeId) -> int:
        """The highest head of a log, or 0 when it has no message."""
        self._ensure_open()
        found = self._committed.get((topic, origin))
        return 0 if found is None else found[1]

    def list_heads(self) -> list[TopicHead]:
        """Every non-empty log's head, ordered by topic and then origin key (code points)."""
        self._ensure_open()
        with self._committed_lock:
            entries = list(self._committed.items())
        heads = [TopicHead(topic, origin, head) for (topic, origin), (_, head) in entries if head]
        return sorted(heads, key=lambda h: (h.topic, h.origin.key))

    def list_tombstones(self) -> list[TombstoneRange]:
        """Every recorded tombstone, ordered by topic, origin key, from and to."""
        rows = self._query(
            "SELECT l.topic, l.tenant_id, l.bl_name, l.device_id, t.from_head_id, "
            "t.to_head_id, t.created_at_ms FROM tombstones AS t JOIN logs AS l ON l.id = t.log_id"
        )
        tombstones = [
            TombstoneRange(topic, NodeId(tenant, bl, device), first, last, created)
            for topic, tenant, bl, device, first, last, created in rows
        ]
        # Sorted here so the order is Python's code-point order, whatever DuckDB's collation.
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
        """Close every connection; DuckDB checkpoints the WAL into the file on the last one."""
        with self._write_lock, self._readers_lock:
            if self._released:
                return
            self._released = True
            self._closed = True
            for con in self._readers:
                con.close()
            self._readers.clear()
            self._appender = None
            self._root.close()
            self._writer.close()

    def __repr__(self) -> str:
        return f"DuckdbStore({self._path!r})"
