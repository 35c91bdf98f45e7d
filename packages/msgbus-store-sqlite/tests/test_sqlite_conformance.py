"""The shared store conformance suite, run against SQLite files."""

from __future__ import annotations

import contextlib
import sqlite3

from msgbus_core.store import MsgbusStore
from msgbus_core.testing import StoreConformance, failing_commits
from msgbus_store_sqlite import SqliteStore


class TestSqliteConformance(StoreConformance):
    factory = SqliteStore
    entry_point = "sqlite"
    downgrade_to_v2 = (
        "DROP TABLE cursors",
        "DROP TABLE publish_keys",
        "DROP INDEX fifo_messages_by_lease",
        "ALTER TABLE fifo_messages DROP COLUMN lease_id",
        "ALTER TABLE fifo_messages DROP COLUMN leased_until_ms",
        "ALTER TABLE fifo_messages DROP COLUMN dead_reason",
        "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
    )
    downgrade_to_v1 = (
        "DROP TABLE cursors",
        "DROP TABLE publish_keys",
        "DROP INDEX fifo_messages_by_lease",
        "ALTER TABLE fifo_messages DROP COLUMN lease_id",
        "ALTER TABLE fifo_messages DROP COLUMN leased_until_ms",
        "ALTER TABLE fifo_messages DROP COLUMN dead_reason",
        "ALTER TABLE logs DROP COLUMN first_head",
        "ALTER TABLE logs DROP COLUMN bytes",
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    )

    @classmethod
    def execute_raw(cls, path: str, *statements: str) -> None:
        con = sqlite3.connect(path)
        try:
            for statement in statements:
                con.execute(statement)
            con.commit()
        finally:
            con.close()

    def fail_commits(self, store: MsgbusStore) -> contextlib.AbstractContextManager[None]:
        assert isinstance(store, SqliteStore)
        return failing_commits(store, lambda: sqlite3.OperationalError("database or disk is full"))
