"""The shared store conformance suite, run against databases on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ClassVar

import psycopg
import pytest

from msgbus_core.store import MsgbusStore
from msgbus_core.testing import StoreConformance, failing_commits
from msgbus_server.testing import free_port
from msgbus_store_postgres import PostgresStore
from msgbus_testkit.postgres import PostgresServer


class TestPostgresConformance(StoreConformance):
    factory = PostgresStore
    entry_point = "postgres"
    file_based = False
    downgrade_to_v2 = (
        "DROP TABLE cursors",
        "DROP TABLE publish_keys",
        "DROP INDEX fifo_messages_by_lease",
        "ALTER TABLE fifo_messages DROP COLUMN lease_id",
        "ALTER TABLE fifo_messages DROP COLUMN leased_until_ms",
        "ALTER TABLE fifo_messages DROP COLUMN dead_reason",
        "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
    )
    server: ClassVar[PostgresServer]

    @pytest.fixture(autouse=True)
    def _server(self, postgres_server: PostgresServer) -> None:
        # The Hypothesis comparison makes a database per example on the same server.
        type(self).server = postgres_server

    @pytest.fixture
    def location(self, postgres_dsn: str) -> str:
        return postgres_dsn

    def new_location(self) -> tuple[str, Callable[[], None]]:
        dsn = self.server.create_database()
        return dsn, lambda: self.server.drop_database(dsn)

    @classmethod
    def execute_raw(cls, location: str, *statements: str) -> None:
        with psycopg.connect(location, autocommit=True) as con:
            for statement in statements:
                con.execute(statement)

    @classmethod
    def stored_bytes(cls, location: str) -> int:
        # What the messages take, which the database's size must cover.
        with psycopg.connect(location, autocommit=True) as con:
            row = con.execute("SELECT pg_total_relation_size('messages')").fetchone()
        assert row is not None
        return int(row[0])

    @classmethod
    def unreachable_location(cls, location: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{free_port()}/msgbus?connect_timeout=5"

    def fail_commits(self, store: MsgbusStore) -> contextlib.AbstractContextManager[None]:
        assert isinstance(store, PostgresStore)
        return failing_commits(
            store, lambda: psycopg.errors.DiskFull("could not extend file: No space left on device")
        )
