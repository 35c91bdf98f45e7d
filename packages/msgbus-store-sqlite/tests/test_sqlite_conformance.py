"""The shared store conformance suite, run against SQLite files."""

from msgbus_core.testing import StoreConformance
from msgbus_store_sqlite import SqliteStore


class TestSqliteConformance(StoreConformance):
    factory = SqliteStore
