"""The PostgreSQL schema: its version, its DDL, and how a database is recognised as ours.

The rules that accept or refuse a database are in `msgbus_core.sql_schema`; this module only
knows how PostgreSQL lists the tables of a schema. A msgbus database lives in the connection's
current schema (`public` unless the DSN or the role sets `search_path`), so one PostgreSQL
database can hold several msgbus nodes in separate schemas.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from msgbus_core import sql_schema

SCHEMA_VERSION: Final = 2
"""The schema this code writes; the same version numbers as the file stores (version 2 has
`logs.first_head` and `logs.bytes`). Newer versions are refused."""

SCHEMA_LOCK: Final = 0x6D736762
"""The advisory lock ("msgb") that serialises schema creation between processes opening an
empty database at once."""

# Text keys compare in the "C" collation, which for UTF-8 is code-point order: the order of
# ListHeads, of `PeerSyncState.sort_key` and of the other stores, whatever the database's
# default collation is.
_KEY = 'TEXT COLLATE "C" NOT NULL'

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
        PRIMARY KEY (queue, sequence)
    )""",
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
)


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


def create(con: psycopg.Connection[Any]) -> None:
    """Create every table and the meta rows. The caller holds a write transaction."""
    sql_schema.create_tables(con, _TABLES, SCHEMA_VERSION, text="TEXT", placeholder="%s")
