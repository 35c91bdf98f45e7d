"""DuckDB storage backend for msgbusd (set-based writes, every commit fsynced to DuckDB's WAL).

Registered under the `msgbus.stores` entry point as `duckdb`:

    store = DuckdbStore.open("/var/lib/msgbus/msgbus.duckdb")

One process owns a DuckDB file: other processes cannot open it, even read-only, while the
daemon runs.
"""

from msgbus_store_duckdb.schema import SCHEMA_VERSION
from msgbus_store_duckdb.store import DuckdbStore

__all__ = ["SCHEMA_VERSION", "DuckdbStore"]
