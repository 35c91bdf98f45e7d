"""The shared store conformance suite, run against DuckDB files."""

from msgbus_core.testing import StoreConformance
from msgbus_store_duckdb import DuckdbStore


class TestDuckdbConformance(StoreConformance):
    factory = DuckdbStore
