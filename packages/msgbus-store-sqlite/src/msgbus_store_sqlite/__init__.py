"""SQLite storage backend for msgbusd (stdlib sqlite3; WAL; every commit fsynced).

Registered under the `msgbus.stores` entry point as `sqlite`:

    store = SqliteStore.open("/var/lib/msgbus/msgbus.sqlite")
"""

from msgbus_store_sqlite.schema import SCHEMA_VERSION
from msgbus_store_sqlite.store import SqliteStore

__all__ = ["SCHEMA_VERSION", "SqliteStore"]
