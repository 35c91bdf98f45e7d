"""The shared store conformance suite, run against SQLite files."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

from msgbus_core.store import MsgbusStore
from msgbus_core.testing import StoreConformance
from msgbus_store_sqlite import SqliteStore


class _FailingCommit:
    """Wraps the writer connection and fails its COMMIT the way a full disk does."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


class TestSqliteConformance(StoreConformance):
    factory = SqliteStore
    entry_point = "sqlite"
    downgrade_to_v1 = (
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

    @contextlib.contextmanager
    def fail_commits(self, store: MsgbusStore) -> Iterator[None]:
        assert isinstance(store, SqliteStore)
        real = store._writer
        store._writer = _FailingCommit(real)  # type: ignore[assignment]
        try:
            yield
        finally:
            store._writer = real
