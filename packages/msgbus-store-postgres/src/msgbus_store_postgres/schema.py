"""The PostgreSQL schema: its version, its DDL, and how a database is recognised as ours.

The rules that accept or refuse a database are in `msgbus_core.sql_schema`; this module only
knows how PostgreSQL lists the tables of a schema. A msgbus database lives in the connection's
current schema (`public` unless the DSN or the role sets `search_path`), so one PostgreSQL
database can hold several msgbus nodes in separate schemas.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from msgbus_core import sql_fifo_leases, sql_schema

SCHEMA_VERSION: Final = 3
"""The schema this code writes; the same version numbers as the file stores (version 2 has
`logs.first_head` and `logs.bytes`, version 3 the `cursors` and `publish_keys` tables
and the lease columns of `fifo_messages`).
Older versions from FIRST_VERSION on are migrated at open (`migrate`); newer ones are
refused."""

FIRST_VERSION: Final = 2
"""The first version a PostgreSQL store wrote; anything older was not made by msgbus."""

SCHEMA_LOCK: Final = 0x6D736762
"""The advisory lock ("msgb") that serialises schema creation between processes opening an
empty database at once."""

# Text keys compare in the "C" collation, which for UTF-8 is code-point order: the order of
# ListHeads, of `PeerSyncState.sort_key` and of the other stores, whatever the database's
# default collation is.
_KEY = 'TEXT COLLATE "C" NOT NULL'

# Durable named cursors (`msgbus_core.cursors`), keyed as `Cursor.key`; never replicated.
_CURSORS: Final = f"""CREATE TABLE cursors (
        name {_KEY},
        topic {_KEY},
        origin_key {_KEY},
        tenant_id TEXT NOT NULL,
        bl_name TEXT NOT NULL,
        device_id TEXT NOT NULL,
        head_id BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        PRIMARY KEY (name, topic, origin_key)
    )"""

# Idempotency keys (`msgbus_core.publish_keys`): the message each key published, written in the
# transaction of that message; the primary key refuses a second row for a key, and the index
# serves the dedup worker's oldest-first pruning.
_PUBLISH_KEYS: Final = (
    f"""CREATE TABLE publish_keys (
        log BIGINT NOT NULL REFERENCES logs (id),
        idempotency_key {_KEY},
        head_id BIGINT NOT NULL,
        message_id TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        PRIMARY KEY (log, idempotency_key)
    )""",
    "CREATE INDEX publish_keys_by_age ON publish_keys (created_at_ms, idempotency_key)",
)

_TABLES: Final = (
    # One row per (topic, origin) log, as in the file stores. `head` is assigned here: a write
    # locks the row (SELECT ... FOR UPDATE), so processes sharing the database hand out gap-free
    # heads. `change_xid` is the transaction id (xid8) of the last commit that moved the log:
    # processes find each other's commits by it (`PostgresStore.changed_logs`).
    f"""CREATE TABLE logs (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        topic {_KEY},
        tenant_id {_KEY},
        bl_name {_KEY},
        device_id {_KEY},
        head BIGINT NOT NULL DEFAULT 0,
        first_head BIGINT NOT NULL DEFAULT 1,
        bytes BIGINT NOT NULL DEFAULT 0,
        change_xid BIGINT NOT NULL DEFAULT 0,
        UNIQUE (topic, tenant_id, bl_name, device_id)
    )""",
    "CREATE INDEX logs_by_change ON logs (change_xid, id)",
    """CREATE TABLE messages (
        log BIGINT NOT NULL REFERENCES logs (id),
        head_id BIGINT NOT NULL,
        id TEXT NOT NULL,
        payload BYTEA NOT NULL,
        headers TEXT,
        created_at_ms BIGINT NOT NULL,
        deleted BOOLEAN NOT NULL,
        PRIMARY KEY (log, head_id)
    )""",
    """CREATE TABLE tombstones (
        log BIGINT NOT NULL REFERENCES logs (id),
        from_head_id BIGINT NOT NULL,
        to_head_id BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        PRIMARY KEY (log, from_head_id, to_head_id)
    )""",
    # The last sequence handed out per queue; its row is also what serialises the queue's
    # writers across processes (every enqueue, ack and reject locks it first).
    f"CREATE TABLE fifo_queues (queue {_KEY} PRIMARY KEY, last_sequence BIGINT NOT NULL)",
    f"""CREATE TABLE fifo_messages (
        queue {_KEY},
        sequence BIGINT NOT NULL,
        id TEXT NOT NULL,
        topic TEXT NOT NULL,
        source_tenant_id TEXT NOT NULL,
        source_bl_name TEXT NOT NULL,
        source_device_id TEXT NOT NULL,
        target_tenant_id TEXT NOT NULL,
        target_bl_name TEXT NOT NULL,
        target_device_id TEXT NOT NULL,
        payload BYTEA NOT NULL,
        headers TEXT,
        created_at_ms BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        lease_id TEXT NOT NULL DEFAULT '',
        leased_until_ms BIGINT NOT NULL DEFAULT 0,
        dead_reason TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (queue, sequence)
    )""",
    sql_fifo_leases.LEASE_INDEX_DDL,
    f"""CREATE TABLE sync_states (
        peer {_KEY},
        topic {_KEY},
        origin_key {_KEY},
        origin_tenant_id TEXT,
        origin_bl_name TEXT,
        origin_device_id TEXT,
        local_head BIGINT NOT NULL,
        remote_head BIGINT NOT NULL,
        last_synced_head BIGINT NOT NULL,
        last_attempt_at_ms BIGINT NOT NULL,
        last_success_at_ms BIGINT NOT NULL,
        consecutive_failures BIGINT NOT NULL,
        last_error TEXT NOT NULL,
        PRIMARY KEY (peer, topic, origin_key)
    )""",
    _CURSORS,
    *_PUBLISH_KEYS,
)

_MIGRATIONS: Final = {
    # 2 -> 3: the tables of schema 3, empty.
    2: (_CURSORS, *_PUBLISH_KEYS, *sql_fifo_leases.add_lease_columns("TEXT")),
}


def _table_names(con: psycopg.Connection[Any]) -> set[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
    ).fetchall()
    return {str(name) for (name,) in rows}


def verify(con: psycopg.Connection[Any], where: str) -> int | None:
    """Return the schema version of the msgbus data in the current schema, or None if empty.

    Raises `SchemaError`, naming `where`, for tables that are not a msgbus database this code
    can read. Nothing is written.
    """
    return sql_schema.check_version(
        where,
        _table_names(con),
        sql_schema.meta_reader(con, where, psycopg.DatabaseError),
        kind="a PostgreSQL database",
        current=SCHEMA_VERSION,
    )


def migrate(con: psycopg.Connection[Any], version: int) -> None:
    """Bring msgbus data of an older schema `version` to SCHEMA_VERSION, step by step.

    The caller holds a transaction (and the schema lock), so a migration that fails changes
    nothing.
    """
    for step in range(version, SCHEMA_VERSION):
        for statement in _MIGRATIONS[step]:
            con.execute(statement)
    con.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def create(con: psycopg.Connection[Any]) -> None:
    """Create every table and the meta rows. The caller holds a write transaction."""
    sql_schema.create_tables(con, _TABLES, SCHEMA_VERSION, text="TEXT", placeholder="%s")
