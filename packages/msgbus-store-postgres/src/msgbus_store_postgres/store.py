"""`PostgresStore`: the `MsgbusStore` on a PostgreSQL database, shared by msgbusd processes.

Several msgbusd processes with the same node identity can open one database and serve the same
logs (a hub behind a load balancer). What makes that safe lives in the database, not in any
process:

- Heads are assigned under a row lock on the log's row (`SELECT ... FOR UPDATE`, in READ
  COMMITTED): a write locks every existing log it touches at the start of its transaction, in
  row id order, so two processes' batches never wait on each other in a cycle; the head it then
  reads is the latest committed one. A deadlock that remains (two processes creating the same
  new logs in opposite orders) or a serialization failure is retried: PostgreSQL rolled the
  transaction back, so sending it again applies nothing twice.
- A FIFO queue's row in `fifo_queues` (and its dead-letter queue's) is locked before its
  front or its leases are read, so front-only acks and rejects, leases and dead-lettering hold
  across processes.
- Replicated writes read the stored rows under the same log lock, so two processes ingesting
  the same log apply the accept rules one after the other, as one process would.
- Every commit that moves a log stamps its row with the transaction id (`change_xid`) and sends
  `NOTIFY msgbus_commits`. The other processes wake on the notification and read the changed
  logs by transaction id (`changed_logs`), which also catches what a lost notification missed.
- Work that must run once per hub (sync with a peer, retention) is claimed with a session
  advisory lock (`try_claim`), which PostgreSQL releases when its holder's connection ends.

Connections: one writer (the daemon's commit pipeline; reconnected after a failure), a
`psycopg_pool` pool of readers checked before use, one listener and one connection holding the
claims. After PostgreSQL restarts, each is opened again on its next use, so the daemon serves
again without a restart of its own. Everything common to the SQL stores is in
`msgbus_core.sql_store.SqlStore`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, NamedTuple

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg_pool import ConnectionPool

from msgbus_core.errors import SchemaError, StorageError
from msgbus_core.fifo_leases import LeaseWriteOp, dead_letter_queue
from msgbus_core.intervals import TombstoneSet
from msgbus_core.limits import DELETE_TOPIC
from msgbus_core.model import Message, NodeId, TopicHead, first_held
from msgbus_core.ops import (
    AckOp,
    AppendOp,
    DeleteRangeOp,
    EnqueueOp,
    Outcome,
    RejectOp,
    ReplicateOp,
    TrimOp,
    WriteOp,
)
from msgbus_core.sql_publish_keys import KEY_COLUMNS
from msgbus_core.sql_store import MESSAGE_COLUMNS, LogState, SqlDialect, SqlStore, log_key
from msgbus_core.store import DiskUsage
from msgbus_core.validation import clamp_stored
from msgbus_store_postgres import schema
from msgbus_store_postgres.errors import TransactionRolledBack, storage_error

logger = logging.getLogger("msgbus_store_postgres")

Connection = psycopg.Connection[Any]

CHANNEL: Final = "msgbus_commits"
"""The NOTIFY channel on which every commit that moved a log is announced."""
CLAIM_CLASS: Final = 0x6D736263
"""The first key of every claim's advisory lock ("msbc"); the second is the name's hash."""
READER_CONNECTIONS: Final = 8
"""The most reader connections a process keeps: the daemon reads from a handful of threads."""
CONNECT_TIMEOUT_S: Final = 10
"""How long opening a connection may take before the store reports the database down."""
POOL_WAIT_S: Final = 5.0
"""How long a read waits for a reader connection (all busy, or the database down)."""
RECONNECT_GIVE_UP_S: Final = 4.0
"""How long the reader pool retries one lost connection before a new attempt starts over."""
CHECK_WAIT_S: Final = 2.0
"""How long the health check waits for a connection: a database that is down shows within it."""
WRITE_ATTEMPTS: Final = 5
"""How often a write transaction is sent after PostgreSQL rolled it back for a conflict."""
COPY_ROWS: Final = 16
"""From how many buffered rows a batch is inserted with COPY rather than one INSERT each."""


class ChangeCursor(NamedTuple):
    """Where `changed_logs` stands: the transaction ids it has seen every change below.

    A pass lists the logs whose `change_xid` is at least `low`. Transaction ids are handed out
    when transactions start, not when they commit, so a pass must start below every
    transaction that was still running when the previous pass started: `next_low` is the
    oldest transaction running (the snapshot's xmin) when the current pass began, and becomes
    the next pass's `low`. `position` is the (change_xid, id) the current pass has read up to.

    `listen_losses` is how often the store had lost its listening session when the pass began
    (see `PostgresStore.changed_logs`): a pass that finds it changed reads every log.
    """

    low: int
    next_low: int
    position: tuple[int, int] | None
    listen_losses: int = 0


def display_dsn(dsn: str) -> str:
    """The connection string as errors and logs show it: never with its password."""
    try:
        params = pg_conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql (unparsable connection string)"
    host = str(params.get("host") or "") or "(libpq default host)"
    port = f":{params['port']}" if params.get("port") else ""
    user = f"{params['user']}@" if params.get("user") else ""
    database = str(params.get("dbname") or "") or "(libpq default database)"
    return f"postgresql://{user}{host}{port}/{database}"


class PostgresStore(SqlStore[Connection]):
    """A `MsgbusStore` (and `SharedStore`) in a PostgreSQL database."""

    dialect = SqlDialect(
        log_column="log", placeholder="%s", lock_rows=" FOR UPDATE", blob_length="octet_length"
    )
    driver_error = psycopg.Error
    wrap_error = storage_error
    single_writer = False

    def __init__(self, dsn: str, writer: Connection, version: int, *, created: bool) -> None:
        """Take over an opened, verified writer; `open` builds the store."""
        super().__init__(display_dsn(dsn), writer, version)
        self._dsn = dsn
        self.created = created
        """True when this open created the schema: the database held no msgbus data before."""
        self._token = secrets.token_hex(8)
        # What this process's commits announce, so that its own listener skips them.
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=READER_CONNECTIONS,
            kwargs=_connect_kwargs("reader"),
            check=ConnectionPool.check_connection,
            timeout=POOL_WAIT_S,
            # The pool retries a lost connection with a doubling delay (1, 2, 4, ... s) for as
            # long as this; after a long outage the next wait could reach a minute. Giving up
            # early lets the next read that finds no connection start again from a 1 s delay,
            # so the pool serves again within seconds of the database coming back.
            reconnect_timeout=RECONNECT_GIVE_UP_S,
            name="msgbus-readers",
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except Exception as error:
            writer.close()
            raise StorageError(f"{self.path}: cannot open reader connections: {error}") from None
        self._listener: Connection | None = None
        self._listener_lock = threading.Lock()
        self._listen_losses = 0
        """How often listening failed: the server may have restarted (`changed_logs`)."""
        self._claims: Connection | None = None
        self._claims_lock = threading.Lock()
        self._claimed: set[str] = set()
        log = self.dialect.render
        # The log rows with their tombstones, in one round trip: FOR UPDATE locks only the
        # rows of `logs` (the subqueries read, they do not lock).
        self._lock_logs: Final = log(
            "SELECT l.id, l.head, l.first_head, l.bytes, l.topic, l.tenant_id, l.bl_name, "
            "l.device_id, "
            "ARRAY(SELECT t.from_head_id FROM tombstones AS t WHERE t.log = l.id "
            "ORDER BY t.from_head_id, t.to_head_id), "
            "ARRAY(SELECT t.to_head_id FROM tombstones AS t WHERE t.log = l.id "
            "ORDER BY t.from_head_id, t.to_head_id) "
            "FROM logs AS l WHERE (l.topic, l.tenant_id, l.bl_name, l.device_id) IN "
            "(SELECT * FROM unnest(?::text[], ?::text[], ?::text[], ?::text[])) "
            "ORDER BY l.id FOR UPDATE OF l"
        )
        self._lock_queues: Final = log(
            "SELECT queue FROM fifo_queues WHERE queue = ANY(?::text[]) ORDER BY queue FOR UPDATE"
        )
        self._create_logs: Final = log(
            "INSERT INTO logs (topic, tenant_id, bl_name, device_id) "
            "SELECT * FROM unnest(?::text[], ?::text[], ?::text[], ?::text[]) "
            "ON CONFLICT (topic, tenant_id, bl_name, device_id) DO NOTHING"
        )
        self._create_log_row: Final = log(
            "INSERT INTO logs (topic, tenant_id, bl_name, device_id) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (topic, tenant_id, bl_name, device_id) DO NOTHING"
        )
        # The moved heads and their announcement, in one round trip; NOTIFY is delivered
        # when (and only if) the transaction commits.
        self._store_heads: Final = log(
            "WITH moved AS (UPDATE logs AS l SET head = v.head, first_head = v.first_head, "
            "bytes = v.bytes, change_xid = pg_current_xact_id()::text::bigint "
            "FROM unnest(?::bigint[], ?::bigint[], ?::bigint[], ?::bigint[]) "
            "AS v (id, head, first_head, bytes) WHERE l.id = v.id RETURNING l.id) "
            f"SELECT pg_notify('{CHANNEL}', ?) FROM (SELECT count(*) FROM moved) AS done"
        )
        self._copy: Final = f"COPY messages (log, {', '.join(MESSAGE_COLUMNS)}) FROM STDIN"
        self._copy_keys: Final = f"COPY publish_keys (log, {KEY_COLUMNS}) FROM STDIN"
        columns = ", ".join(f"m.{name}" for name in MESSAGE_COLUMNS)
        size = self.dialect.read_size("m")
        # A page within max_bytes in one query: the running total of read_size in head order,
        # cut at the first row that does not fit (always keeping the first). Payloads of the
        # rows cut are never sent, and PostgreSQL's octet_length reads a stored value's size
        # without decompressing it.
        self._fetch_within: Final = log(
            f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM ("
            f"SELECT {columns}, sum({size}) OVER (ORDER BY m.head_id) AS total, "
            "row_number() OVER (ORDER BY m.head_id) AS n "
            "FROM logs AS l JOIN messages AS m ON m.log = l.id "
            "WHERE l.topic = ? AND l.tenant_id = ? AND l.bl_name = ? AND l.device_id = ? "
            "AND m.head_id >= ? ORDER BY m.head_id LIMIT ?"
            ") AS page WHERE n = 1 OR total <= ? ORDER BY head_id"
        )
        self._xmin: Final = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        self._changes: Final = log(
            "SELECT topic, tenant_id, bl_name, device_id, head, first_head, bytes, change_xid, id "
            "FROM logs WHERE (change_xid, id) > (?, ?) ORDER BY change_xid, id LIMIT ?"
        )

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str) -> PostgresStore:
        """Connect to the database `path` (a libpq connection string or URI) and prepare it.

        An empty string uses the libpq environment (PGHOST, PGDATABASE, PGUSER, ...). An empty
        schema gets the msgbus tables; msgbus tables of an older version are refused for now
        (PostgreSQL stores start at version 2). Raises `SchemaError` for tables that are not a
        msgbus database or of a newer version, `StorageError` when the database cannot be
        reached.
        """
        where = display_dsn(path)
        try:
            writer = psycopg.connect(path, **_connect_kwargs("writer"))
        except psycopg.Error as error:
            raise storage_error(error, where, "connecting") from None
        try:
            version, created = cls._prepare(writer, where)
        except BaseException:
            writer.close()
            raise
        return cls(path, writer, version, created=created)

    @staticmethod
    def _prepare(writer: Connection, where: str) -> tuple[int, bool]:
        try:
            version = schema.verify(writer, where)
            if version is not None and _supported(version, where) == schema.SCHEMA_VERSION:
                return version, False
            with writer.transaction():
                # Processes opening an empty database at once: one creates, the others wait
                # here and then find the tables.
                writer.execute("SELECT pg_advisory_xact_lock(%s)", (schema.SCHEMA_LOCK,))
                version = schema.verify(writer, where)
                if version is not None:
                    if _supported(version, where) < schema.SCHEMA_VERSION:
                        schema.migrate(writer, version)
                        logger.info(
                            "%s: migrated the msgbus schema from version %d to %d",
                            where,
                            version,
                            schema.SCHEMA_VERSION,
                        )
                    return schema.SCHEMA_VERSION, False
                schema.create(writer)
        except psycopg.Error as error:
            raise storage_error(error, where, "opening the database") from None
        logger.info("%s: created the msgbus schema (version %d)", where, schema.SCHEMA_VERSION)
        return schema.SCHEMA_VERSION, True

    # -- the write transaction ------------------------------------------------------------------

    def write(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        """Apply `ops` in one transaction; one retried after a conflict with another process."""
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return super().write(ops)
            except TransactionRolledBack as error:
                if attempt == WRITE_ATTEMPTS:
                    raise StorageError(str(error)) from None
                logger.debug("write rolled back (%s); attempt %d", error, attempt + 1)
                # A little jitter, so that the two processes do not collide again in step.
                time.sleep(random.uniform(0.001, 0.005) * attempt)
        raise AssertionError("unreachable")

    def _begin(self) -> None:
        if not self._writer.closed:
            try:
                super()._begin()
                return
            except psycopg.OperationalError:
                # An idle connection whose server went away (a restart, a failover) fails at
                # its first statement. Nothing was sent yet, so a new connection may begin.
                if not self._writer.closed:
                    raise
        # Open a new connection; while the database is down this raises, and the write fails
        # as a storage error (the daemon reports NOT_SERVING and probes until it commits).
        self._writer = psycopg.connect(self._dsn, **_connect_kwargs("writer"))
        super()._begin()

    def _apply_all(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        self._lock_touched(ops)
        return super()._apply_all(ops)

    def _lock_touched(self, ops: Sequence[WriteOp]) -> None:
        """Lock the existing logs and queues the batch touches, in one fixed order.

        Every process locks in the same order (logs by row id, queues by name), so concurrent
        batches wait for each other instead of deadlocking. The rows read under the lock are
        the latest committed: they become the writer's view of those logs.
        """
        keys: set[tuple[str, NodeId]] = set()
        queues: set[str] = set()
        for op in ops:
            if isinstance(op, AppendOp | TrimOp):
                keys.add((op.topic, op.origin))
            elif isinstance(op, DeleteRangeOp):
                keys.update(((op.topic, op.origin), (DELETE_TOPIC, op.origin)))
            elif isinstance(op, ReplicateOp):
                keys.update((m.topic, m.origin) for m in op.messages)
            elif isinstance(op, EnqueueOp):
                queues.add(op.queue)
            elif isinstance(op, AckOp | RejectOp | LeaseWriteOp):
                # Any of these may release expired leases into the dead-letter queue, or move
                # messages between the two; "Q" sorts before "Q.dead", the order of every lock.
                queues.update((op.queue, dead_letter_queue(op.queue)))
        if queues:
            self._execute(self._lock_queues, (sorted(queues),))
        if not keys:
            return
        locked = self._lock_logs_of(keys)
        # A log the batch may create is created now, before any op reads it: an op that
        # found no log would decide on "empty" while another process is creating it. The
        # rows go in key order (the order two creators then wait in), and stay at head 0,
        # which no listing shows, if the batch writes nothing to them after all.
        missing = keys - {log.key for log in locked.values()}
        if missing:
            self._execute(self._create_logs, _key_columns(sorted(missing, key=_sort_key)))
            locked.update(self._lock_logs_of(missing))

    def _lock_logs_of(self, keys: set[tuple[str, NodeId]]) -> dict[int, LogState]:
        """Lock the existing logs of `keys` in row id order; they become the writer's view."""
        rows = self._execute(self._lock_logs, _key_columns(keys)).fetchall()
        locked: dict[int, LogState] = {}
        for row_id, head, start, size, topic, tenant, bl, device, firsts, lasts in rows:
            key = (topic, NodeId(tenant, bl, device))
            log = self._logs[key] = LogState(key, row_id, head, start, size)
            log.tombstones = TombstoneSet(zip(firsts, lasts, strict=True))
            locked[row_id] = log
        return locked

    def _log(self, topic: str, origin: NodeId) -> LogState:
        log = self._find_log(topic, origin)
        if log is not None:
            return log
        # Another process may create the same log at the same moment: the insert then waits
        # for it and does nothing, and the locked read finds its row (and any head it assigned).
        self._execute(self._create_log_row, log_key(topic, origin))
        created = self._find_log(topic, origin)
        if created is None:
            raise StorageError(f"{self.path}: the log {topic!r} vanished while it was created")
        return created

    def _flush(self) -> None:
        """Insert the buffered message rows: COPY for a batch, INSERT for a few."""
        pending = self._pending
        if not pending:
            return
        self._insert_rows(self._sql.insert_message, self._copy, pending)
        pending.clear()

    def _insert_key_rows(self, rows: Sequence[tuple[object, ...]]) -> None:
        self._insert_rows(self._key_sql.insert, self._copy_keys, rows)

    def _insert_rows(self, insert: str, copy_sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        """Insert rows with COPY from `COPY_ROWS` rows on, else one INSERT each."""
        if len(rows) < COPY_ROWS:
            with self._writer.cursor() as cursor:
                cursor.executemany(insert, rows)
        else:
            with self._writer.cursor() as cursor, cursor.copy(copy_sql) as copy:
                for row in rows:
                    copy.write_row(row)

    def _commit(self) -> None:
        """Store the moved heads in one statement, announce them and commit."""
        self._flush()
        if self._dirty:
            logs = list(self._dirty.values())
            self._execute(
                self._store_heads,
                (
                    [log.id for log in logs],
                    [log.head for log in logs],
                    [log.first for log in logs],
                    [log.bytes for log in logs],
                    self._token,
                ),
            )
        self._writer.execute("COMMIT")

    def _compact(self) -> None:
        # Trimmed rows are dead tuples until a vacuum; autovacuum gets there in its own time,
        # and a CompactOp (asked for near a disk budget) runs it now: it makes their space
        # reusable and gives empty pages at the tables' ends back to the file system.
        self._writer.execute("VACUUM (SKIP_LOCKED) messages, tombstones")

    # -- reads ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self, doing: str) -> Iterator[Connection]:
        self._ensure_open()
        try:
            with self._pool.connection() as con:
                yield con
        except psycopg.Error as error:
            raise self._storage_error(error, doing) from None

    def _open_reader(self) -> Connection:
        # Never called: every read borrows a connection from the pool (`_reading`).
        raise NotImplementedError("PostgresStore reads through its connection pool")

    def _query(
        self, sql: str, parameters: Sequence[object] = (), doing: str = "reading"
    ) -> list[Any]:
        with self._reading(doing) as con:
            rows: list[Any] = con.execute(sql, parameters).fetchall()
        return rows

    def fetch(
        self,
        topic: str,
        origin: NodeId,
        from_head_id: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> list[Message]:
        """Up to `limit` messages of a log from `from_head_id`, within `max_bytes` if given."""
        if max_bytes is None or limit <= 0:
            return super().fetch(topic, origin, from_head_id, limit, max_bytes)
        parameters = (
            *log_key(topic, origin),
            clamp_stored(max(from_head_id, 1)),
            clamp_stored(limit),
            clamp_stored(max(max_bytes, 0)),
        )
        rows = self._query(self._fetch_within, parameters, "fetching")
        return self._messages(topic, origin, rows)

    def check(self) -> None:
        """Raise `StorageError` unless the database answers, within `CHECK_WAIT_S`."""
        self._ensure_open()
        try:
            with self._pool.connection(timeout=CHECK_WAIT_S) as con:
                con.execute(self._sql.check).fetchall()
        except psycopg.Error as error:
            raise self._storage_error(error, "checking the database") from None

    def disk_usage(self) -> DiskUsage:
        """The database's size as PostgreSQL reports it; autovacuum reuses what trims free."""
        rows = self._query("SELECT pg_database_size(current_database())", (), "measuring")
        return DiskUsage(int(rows[0][0]), 0)

    # -- what other processes do ----------------------------------------------------------------

    def changed_logs(self, cursor: object | None, limit: int) -> tuple[list[TopicHead], object]:
        """Logs any process changed since `cursor` (see `SharedStore.changed_logs`).

        After a crash PostgreSQL hands out again the ids of the transactions whose WAL it lost,
        among them any that aborted shortly before (an abort is not flushed at once), and those
        ids may lie below the cursor. Every session ends with such a crash (or a failover), the
        listening one too: the first pass that starts after listening failed reads every log.
        """
        losses = self._listen_losses  # before the xmin: a loss after it shows next pass
        if cursor is None:
            xmin = int(self._query(self._xmin)[0][0])
            return [], ChangeCursor(xmin, xmin, None, losses)
        if not isinstance(cursor, ChangeCursor):
            raise TypeError(f"not a cursor of this store: {cursor!r}")
        if cursor.position is None:
            # A new pass: note who is running now, then read from the last pass's low mark.
            next_low = int(self._query(self._xmin)[0][0])
            position = (cursor.low, 0) if cursor.listen_losses == losses else (-1, 0)
        else:
            next_low, position, losses = cursor.next_low, cursor.position, cursor.listen_losses
        rows = self._query(self._changes, (*position, clamp_stored(max(limit, 1))))
        heads = [
            TopicHead(topic, NodeId(tenant, bl, device), head, first_held(start, head), size)
            for topic, tenant, bl, device, head, start, size, _, _ in rows
        ]
        if len(rows) >= limit:
            last = rows[-1]
            return heads, ChangeCursor(cursor.low, next_low, (int(last[7]), int(last[8])), losses)
        return heads, ChangeCursor(next_low, next_low, None, losses)

    def wait_for_commits(self, timeout_s: float) -> bool:
        """Wait for another process's commit announcement (see `SharedStore`)."""
        with self._listener_lock:
            self._ensure_open()
            try:
                if self._listener is None or self._listener.closed:
                    listener = psycopg.connect(self._dsn, **_connect_kwargs("listener"))
                    listener.execute(f"LISTEN {CHANNEL}")
                    self._listener = listener
                    # Commits made while nobody listened were not announced: say "maybe".
                    return True
                for notice in self._listener.notifies(timeout=timeout_s, stop_after=1):
                    if notice.payload != self._token:
                        return True
            except psycopg.Error as error:
                self._listen_losses += 1
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                raise self._storage_error(error, "listening for commits") from None
        return False

    def try_claim(self, name: str) -> bool:
        """Hold the claim `name` (an advisory lock) unless another process does."""
        with self._claims_lock:
            self._ensure_open()
            try:
                if self._claims is None or self._claims.closed:
                    self._claimed.clear()  # they ended with the old connection's session
                    self._claims = psycopg.connect(self._dsn, **_connect_kwargs("claims"))
                con = self._claims
                if name in self._claimed:
                    con.execute("SELECT 1")  # a claim is only as alive as its session
                    return True
                row = con.execute(
                    "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (CLAIM_CLASS, name)
                ).fetchone()
            except psycopg.Error as error:
                if self._claims is not None:
                    self._claims.close()
                    self._claims = None
                self._claimed.clear()
                raise self._storage_error(error, "claiming work") from None
            if row is not None and row[0]:
                self._claimed.add(name)
                return True
            return False

    def release_claim(self, name: str) -> None:
        """Give the claim `name` up, if held."""
        with self._claims_lock:
            if name not in self._claimed or self._claims is None or self._claims.closed:
                self._claimed.discard(name)
                return
            self._claimed.discard(name)
            with contextlib.suppress(psycopg.Error):
                self._claims.execute(
                    "SELECT pg_advisory_unlock(%s, hashtext(%s))", (CLAIM_CLASS, name)
                )

    # -- lifecycle ------------------------------------------------------------------------------

    def _release(self) -> None:
        self._pool.close()
        for con in (self._listener, self._claims):
            if con is not None:
                con.close()
        self._writer.close()


def _key_columns(keys: Iterable[tuple[str, NodeId]]) -> list[list[str]]:
    """Log keys as four parallel arrays (topics, tenants, bls, devices), for `unnest`."""
    columns: list[list[str]] = [[], [], [], []]
    for topic, origin in keys:
        for column, value in zip(columns, log_key(topic, origin), strict=True):
            column.append(value)
    return columns


def _sort_key(key: tuple[str, NodeId]) -> tuple[str, str, str, str]:
    return log_key(*key)


def _supported(version: int, where: str) -> int:
    """`version`, unless it is one no PostgreSQL store ever wrote (they start at 2)."""
    if version < schema.FIRST_VERSION:
        raise SchemaError(
            f"{where} holds msgbus schema version {version}, which no PostgreSQL store writes "
            f"(they start at version {schema.FIRST_VERSION}); it was not made by msgbus"
        )
    return version


def _connect_kwargs(role: str) -> dict[str, Any]:
    """How every connection of the store is opened; `role` names it in pg_stat_activity."""
    return {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": f"msgbusd-{role}",
        # Ask the server to notice a vanished peer (a failover, a cut network) within a minute.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }


__all__ = ["CHANNEL", "ChangeCursor", "PostgresStore", "display_dsn"]
