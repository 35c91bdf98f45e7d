"""The PostgreSQL store of msgbusd: the hub's store, shared by several msgbusd processes.

`msgbusd --storage postgres --data postgresql://user@host/db` opens it through the
`msgbus.stores` entry point; see `msgbus_store_postgres.store` for what makes several processes
on one database safe.
"""

from msgbus_store_postgres.store import CHANNEL, ChangeCursor, PostgresStore, display_dsn

__all__ = ["CHANNEL", "ChangeCursor", "PostgresStore", "display_dsn"]
