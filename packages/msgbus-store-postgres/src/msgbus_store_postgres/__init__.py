"""The PostgreSQL store of msgbusd: the hub's store, shared by several msgbusd processes."""
