"""The shared store conformance suite, run against DuckDB files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import duckdb

from msgbus_core.store import MsgbusStore
from msgbus_core.testing import StoreConformance
from msgbus_store_duckdb import DuckdbStore
from msgbus_store_duckdb.store import CONFIG


class _FailingCommit:
    """Wraps the writer connection and fails its commit the way a full disk does."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def commit(self) -> None:
        raise duckdb.IOException("Could not write file: No space left on device")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


class TestDuckdbConformance(StoreConformance):
    factory = DuckdbStore
    entry_point = "duckdb"
    downgrade_to_v2 = (
        "DROP TABLE cursors",
        "DROP TABLE publish_keys",
        "ALTER TABLE fifo_messages DROP COLUMN lease_id",
        "ALTER TABLE fifo_messages DROP COLUMN leased_until_ms",
        "ALTER TABLE fifo_messages DROP COLUMN dead_reason",
        "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
    )
    downgrade_to_v1 = (
        "DROP TABLE cursors",
        "DROP TABLE publish_keys",
        "ALTER TABLE fifo_messages DROP COLUMN lease_id",
        "ALTER TABLE fifo_messages DROP COLUMN leased_until_ms",
        "ALTER TABLE fifo_messages DROP COLUMN dead_reason",
        "ALTER TABLE logs DROP COLUMN first_head",
        "UPDATE meta SET value = '1' WHERE key = 'schema_version'",
    )

    @classmethod
    def execute_raw(cls, path: str, *statements: str) -> None:
        con = duckdb.connect(str(path), config=dict(CONFIG))
        try:
            for statement in statements:
                con.execute(statement)
        finally:
            con.close()

    @contextlib.contextmanager
    def fail_commits(self, store: MsgbusStore) -> Iterator[None]:
        assert isinstance(store, DuckdbStore)
        real = store._writer
        store._writer = _FailingCommit(real)  # type: ignore[assignment]
        try:
            yield
        finally:
            store._writer = real
