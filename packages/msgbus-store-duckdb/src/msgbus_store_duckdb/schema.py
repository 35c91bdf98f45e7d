"""The DuckDB schema: its version, its DDL, and how a file is recognised as ours.

The rules that accept or refuse a file are in `msgbus_core.sql_schema`; this module only knows
how DuckDB lists its tables.
"""

from __future__ import annotations

from typing import Final

import duckdb

from msgbus_core import sql_fifo_leases, sql_schema

# Durable named cursors (`msgbus_core.cursors`), keyed as `Cursor.key`; never replicated.
_CURSORS: Final = """CREATE TABLE cursors (
        name VARCHAR NOT NULL,
        topic VARCHAR NOT NULL,
        origin_key VARCHAR NOT NULL,
        tenant_id VARCHAR NOT NULL,
        bl_name VARCHAR NOT NULL,
        device_id VARCHAR NOT NULL,
        head_id BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        PRIMARY KEY (name, topic, origin_key)
    )"""

# Idempotency keys (`msgbus_core.publish_keys`): the message each key published, written in the
# transaction of that message; the primary key refuses a second row for a key. DuckDB scans
# only single-column ART indexes, and only while the filter names no other column: the index on
# the key serves the writer's lookups (`idempotency_key IN (...)`, the log checked on the rows
# found), which the composite primary key never does (bench/publish_keys_duckdb.py, 1,000,000
# keys: 256 keys in 5 ms by the index, 14-37 ms by a scan). There is no index on created_at_ms,
# on purpose: DuckDB does not use a composite one for the dedup worker's oldest-first ORDER BY
# ... LIMIT either (removing the 10,000 oldest took 35 ms with it, 23 ms without), and it cost
# every insert (256 rows: 2.7 ms with it, 1.9 ms without).
_PUBLISH_KEYS: Final = (
    """CREATE TABLE publish_keys (
        log_id BIGINT NOT NULL,
        idempotency_key VARCHAR NOT NULL,
        head_id BIGINT NOT NULL,
        message_id VARCHAR NOT NULL,
        created_at_ms BIGINT NOT NULL,
        PRIMARY KEY (log_id, idempotency_key)
    )""",
    "CREATE INDEX publish_keys_by_key ON publish_keys (idempotency_key)",
)

# Heads are not stored: a log is gap-free and only retention removes rows (a prefix, below
# `first_head`), so a log's head is max(max(head_id), first_head - 1), computed once at open and
# then kept by the single writer in memory, like its bytes. That saves one UPDATE statement
# (~1 ms of DuckDB CPU) per write transaction; only a trim updates `first_head`.
_TABLES: Final = (
    # Origins are separate columns, so two different NodeIds never collide.
    """CREATE TABLE logs (
        id BIGINT PRIMARY KEY,
        topic VARCHAR NOT NULL,
        tenant_id VARCHAR NOT NULL,
        bl_name VARCHAR NOT NULL,
        device_id VARCHAR NOT NULL,
        first_head BIGINT NOT NULL DEFAULT 1,
        UNIQUE (topic, tenant_id, bl_name, device_id)
    )""",
    # No primary key on (log_id, head_id), on purpose. DuckDB would keep an ART index over every
    # row in memory and update it on every insert (measured: +40% time per 100-row append), yet
    # never use it for range reads: those are served by the row groups' zone maps on log_id and
    # head_id, which stay tight because rows are appended in head order. Uniqueness comes from
    # the single writer, which assigns every head from the log's in-memory head.
    """CREATE TABLE messages (
        log_id BIGINT NOT NULL,
        head_id BIGINT NOT NULL,
        id VARCHAR NOT NULL,
        payload BLOB NOT NULL,
        headers VARCHAR,
        created_at_ms BIGINT NOT NULL,
        deleted BOOLEAN NOT NULL
    )""",
    """CREATE TABLE tombstones (
        log_id BIGINT NOT NULL,
        from_head_id BIGINT NOT NULL,
        to_head_id BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        PRIMARY KEY (log_id, from_head_id, to_head_id)
    )""",
    # The last sequence handed out per queue; it survives acks so sequences are never reused.
    "CREATE TABLE fifo_queues (queue VARCHAR PRIMARY KEY, last_sequence BIGINT NOT NULL)",
    """CREATE TABLE fifo_messages (
        queue VARCHAR NOT NULL,
        sequence BIGINT NOT NULL,
        id VARCHAR NOT NULL,
        topic VARCHAR NOT NULL,
        source_tenant_id VARCHAR NOT NULL,
        source_bl_name VARCHAR NOT NULL,
        source_device_id VARCHAR NOT NULL,
        target_tenant_id VARCHAR NOT NULL,
        target_bl_name VARCHAR NOT NULL,
        target_device_id VARCHAR NOT NULL,
        payload BLOB NOT NULL,
        headers VARCHAR,
        created_at_ms BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        lease_id VARCHAR NOT NULL DEFAULT '',
        leased_until_ms BIGINT NOT NULL DEFAULT 0,
        dead_reason VARCHAR NOT NULL DEFAULT '',
        PRIMARY KEY (queue, sequence)
    )""",
    # Keyed like the model: (peer, topic, origin key, "" for a peer-level record).
    """CREATE TABLE sync_states (
        peer VARCHAR NOT NULL,
        topic VARCHAR NOT NULL,
        origin_key VARCHAR NOT NULL,
        origin_tenant_id VARCHAR,
        origin_bl_name VARCHAR,
        origin_device_id VARCHAR,
        local_head BIGINT NOT NULL,
        remote_head BIGINT NOT NULL,
        last_synced_head BIGINT NOT NULL,
        last_attempt_at_ms BIGINT NOT NULL,
        last_success_at_ms BIGINT NOT NULL,
        consecutive_failures BIGINT NOT NULL,
        last_error VARCHAR NOT NULL,
        PRIMARY KEY (peer, topic, origin_key)
    )""",
    _CURSORS,
    *_PUBLISH_KEYS,
)

SCHEMA_VERSION: Final = 3
"""The schema this code writes. Older versions are migrated at open (`migrate`); newer ones are
refused. Version 2 added `logs.first_head` (retention); version 3 added the `cursors` table
(durable named cursors) and `publish_keys` (idempotency keys), and the lease columns of
`fifo_messages` (`lease_id`, `leased_until_ms`, `dead_reason`: FIFO leases)."""

_MIGRATIONS: Final = {
    # 1 -> 2: nothing was ever trimmed, so every log starts at 1.
    1: ("ALTER TABLE logs ADD COLUMN first_head BIGINT NOT NULL DEFAULT 1",),
    # 2 -> 3: the tables of schema 3, empty.
    2: (_CURSORS, *_PUBLISH_KEYS, *sql_fifo_leases.add_lease_columns("VARCHAR", indexed=False)),
}


def migrate(con: duckdb.DuckDBPyConnection, version: int) -> None:
    """Bring a database of an older schema `version` to SCHEMA_VERSION, step by step.

    The caller holds a transaction, so a migration that fails changes nothing.
    """
    for step in range(version, SCHEMA_VERSION):
        for statement in _MIGRATIONS[step]:
            con.execute(statement)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def verify(con: duckdb.DuckDBPyConnection, path: str) -> int | None:
    """Return the schema version of an existing msgbus database, or None for a new one.

    Raises `SchemaError`, naming `path`, for anything this code cannot read as msgbus data.
    """
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name = 'main'"
    ).fetchall()
    return sql_schema.check_version(
        path,
        (name for (name,) in rows),
        lambda: dict(con.execute("SELECT key, value FROM meta").fetchall()),
        kind="a DuckDB database",
        current=SCHEMA_VERSION,
    )


def create(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table and the meta rows. The caller holds a transaction."""
    sql_schema.create_tables(con, _TABLES, SCHEMA_VERSION, text="VARCHAR")
