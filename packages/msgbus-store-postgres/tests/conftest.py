"""The real PostgreSQL server these tests run against (tests/msgbus_testkit/postgres.py)."""

from msgbus_testkit.postgres import postgres_dsn, postgres_server, postgres_server_factory

__all__ = ["postgres_dsn", "postgres_server", "postgres_server_factory"]
