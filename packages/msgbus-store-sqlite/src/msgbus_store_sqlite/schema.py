"""The SQLite schema: its version, its DDL, and how a file is recognised as ours.

The rules that accept or refuse a file are in `msgbus_core.sql_schema`; this module only knows
how SQLite lists its tables and tells a foreign file from a storage failure.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from msgbus_core import sql_fifo_leases, sql_schema
from msgbus_core.errors import SchemaError

SCHEMA_VERSION: Final = 3
"""The schema this code writes. Older versions are migrated at open (`migrate`); newer ones are
refused. Version 2 added `logs.first_head` and `logs.bytes` (retention); version 3 added the
`cursors` table (durable named cursors), `publish_keys` (idempotency keys) and the lease
columns of `fifo_messages` (`lease_id`, `leased_until_ms`, `dead_reason`: FIFO leases)."""

# Durable named cursors (`msgbus_core.cursors`), keyed as `Cursor.key`; never replicated.
_CURSORS: Final = """CREATE TABLE cursors (
        name TEXT NOT NULL,
        topic TEXT NOT NULL,
        origin_key TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        bl_name TEXT NOT NULL,
        device_id TEXT NOT NULL,
        head_id INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (name, topic, origin_key)
    ) WITHOUT ROWID"""

APPLICATION_ID: Final = 0x6D736762
"""`PRAGMA application_id` ("msgb"): lets `file(1)` and other tools tell what the file is."""

# Idempotency keys (`msgbus_core.publish_keys`): the message each key published, written in the
# transaction of that message; the primary key refuses a second row for a key, and the index
# serves the dedup worker's oldest-first pruning.
_PUBLISH_KEYS: Final = (
    """CREATE TABLE publish_keys (
        log INTEGER NOT NULL REFERENCES logs (id),
        idempotency_key TEXT NOT NULL,
        head_id INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (log, idempotency_key)
    ) WITHOUT ROWID""",
    "CREATE INDEX publish_keys_by_age ON publish_keys (created_at_ms, idempotency_key)",
)

# Integers are signed 64-bit in SQLite; the core refuses larger stored values before they get
# here. Logs get a small integer id so that messages carry 8 bytes, not four strings, per row.
# `meta` is created first, by `msgbus_core.sql_schema.create_tables`.
_TABLES: Final = (
    # One row per (topic, origin) log. The parts of the origin are separate columns, so two
    # different NodeIds can never collide the way a joined string could. `head` is the highest
    # head_id stored, kept here so that get_head and list_heads never scan messages; retention
    # trims below `first_head` (the log holds first_head..head), and `bytes` is the read_size
    # total of the rows held, so that retention and ListHeads never sum a log either.
    """CREATE TABLE logs (
        id INTEGER PRIMARY KEY,
        topic TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        bl_name TEXT NOT NULL,
        device_id TEXT NOT NULL,
        head INTEGER NOT NULL DEFAULT 0,
        first_head INTEGER NOT NULL DEFAULT 1,
        bytes INTEGER NOT NULL DEFAULT 0,
        UNIQUE (topic, tenant_id, bl_name, device_id)
    )""",
    # A rowid table (appends land at the end of the b-tree) with a unique (log, head_id) index:
    # the index serves every range read and makes a duplicate head impossible.
    """CREATE TABLE messages (
        log INTEGER NOT NULL REFERENCES logs (id),
        head_id INTEGER NOT NULL,
        id TEXT NOT NULL,
        payload BLOB NOT NULL,
        headers TEXT,
        created_at_ms INTEGER NOT NULL,
        deleted INTEGER NOT NULL
    )""",
    "CREATE UNIQUE INDEX messages_by_log_head ON messages (log, head_id)",
    """CREATE TABLE tombstones (
        log INTEGER NOT NULL REFERENCES logs (id),
        from_head_id INTEGER NOT NULL,
        to_head_id INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (log, from_head_id, to_head_id)
    ) WITHOUT ROWID""",
    # The last sequence handed out per queue; it survives acks so sequences are never reused.
    "CREATE TABLE fifo_queues (queue TEXT PRIMARY KEY, last_sequence INTEGER NOT NULL)",
    """CREATE TABLE fifo_messages (
        queue TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        id TEXT NOT NULL,
        topic TEXT NOT NULL,
        source_tenant_id TEXT NOT NULL,
        source_bl_name TEXT NOT NULL,
        source_device_id TEXT NOT NULL,
        target_tenant_id TEXT NOT NULL,
        target_bl_name TEXT NOT NULL,
        target_device_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        headers TEXT,
        created_at_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        lease_id TEXT NOT NULL DEFAULT '',
        leased_until_ms BIGINT NOT NULL DEFAULT 0,
        dead_reason TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (queue, sequence)
    )""",
    sql_fifo_leases.LEASE_INDEX_DDL,
    # Keyed like the model: (peer, topic, origin key, "" for a peer-level record). The origin
    # parts are kept separately (NULL for a peer-level record) so the NodeId reads back exactly.
    """CREATE TABLE sync_states (
        peer TEXT NOT NULL,
        topic TEXT NOT NULL,
        origin_key TEXT NOT NULL,
        origin_tenant_id TEXT,
        origin_bl_name TEXT,
        origin_device_id TEXT,
        local_head INTEGER NOT NULL,
        remote_head INTEGER NOT NULL,
        last_synced_head INTEGER NOT NULL,
        last_attempt_at_ms INTEGER NOT NULL,
        last_success_at_ms INTEGER NOT NULL,
        consecutive_failures INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        PRIMARY KEY (peer, topic, origin_key)
    )""",
    _CURSORS,
    *_PUBLISH_KEYS,
)

_NOT_A_DATABASE: Final = frozenset({sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT})


def _table_names(con: sqlite3.Connection, path: str) -> set[str]:
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.DatabaseError as error:
        # Random bytes, a truncated or an encrypted file. Anything else (a locked file, a
        # missing directory, no permission) is a storage problem, not a foreign file.
        if getattr(error, "sqlite_errorcode", None) in _NOT_A_DATABASE:
            raise SchemaError(f"{path} is not a msgbus database: {error}") from None
        raise
    return {str(name) for (name,) in rows}


def verify(con: sqlite3.Connection, path: str) -> int | None:
    """Return the schema version of an existing msgbus database, or None for an empty file.

    Raises `SchemaError`, naming `path`, for anything that is not a msgbus database this code
    can read. Nothing is written.
    """
    return sql_schema.check_version(
        path,
        _table_names(con, path),
        sql_schema.meta_reader(con, path, sqlite3.DatabaseError),
        kind="an SQLite database",
        current=SCHEMA_VERSION,
    )


_MIGRATIONS: Final = {
    # 1 -> 2: nothing was ever trimmed, so every log starts at 1; its bytes are summed once.
    1: (
        "ALTER TABLE logs ADD COLUMN first_head INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE logs ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0",
        "UPDATE logs SET bytes = (SELECT coalesce(sum(length(payload) + "
        "coalesce(length(headers), 0)), 0) FROM messages WHERE messages.log = logs.id)",
    ),
    # 2 -> 3: the tables of schema 3, empty.
    2: (_CURSORS, *_PUBLISH_KEYS, *sql_fifo_leases.add_lease_columns("TEXT")),
}


def migrate(con: sqlite3.Connection, version: int) -> None:
    """Bring a database of an older schema `version` to SCHEMA_VERSION, step by step.

    The caller holds a write transaction, so a migration that fails changes nothing.
    """
    for step in range(version, SCHEMA_VERSION):
        for statement in _MIGRATIONS[step]:
            con.execute(statement)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def create(con: sqlite3.Connection) -> None:
    """Create every table and the meta rows. The caller holds a write transaction."""
    sql_schema.create_tables(con, _TABLES, SCHEMA_VERSION, text="TEXT")
    con.execute(f"PRAGMA application_id = {APPLICATION_ID}")
