"""msgbusd --storage postgres: the connection string, the libpq environment, and clear errors."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from msgbus_sdk import MsgbusClient
from msgbus_server.testing import Daemon, free_port, run_msgbusd
from msgbus_testkit import postgres

# The fixtures, for this module only: the other daemon tests of this folder need no PostgreSQL.
postgres_server = postgres.postgres_server
postgres_dsn = postgres.postgres_dsn

NODE = ["--tenant-id", "acme", "--bl-name", "hub", "--device-id", "h1"]


def _listen() -> list[str]:
    return ["--listen", f"127.0.0.1:{free_port()}"]


def test_the_libpq_environment_fills_in_the_connection(postgres_dsn: str, tmp_path: Path) -> None:
    params = conninfo_to_dict(postgres_dsn)
    env = {
        "PGHOST": str(params["host"]),
        "PGPORT": str(params["port"]),
        "PGUSER": str(params["user"]),
        "PGDATABASE": str(params["dbname"]),
    }
    with Daemon.start(
        tmp_path, storage="postgres", data="postgresql://", node="acme/hub/h1", env=env
    ) as daemon:
        with MsgbusClient.connect(daemon.endpoint) as bus:
            assert bus.publish("events", b"via PG* variables").head_id == 1
        assert "opened the postgres store postgresql:// in" in daemon.stderr_text()
    # It went to the database the variables named.
    with psycopg.connect(postgres_dsn) as con:
        row = con.execute("SELECT head FROM logs WHERE topic = 'events'").fetchone()
    assert row == (1,)


def test_a_file_path_for_the_postgres_store_is_one_clear_line(tmp_path: Path) -> None:
    result = run_msgbusd(
        ["--storage", "postgres", "--data", str(tmp_path / "hub.sqlite"), *_listen(), *NODE]
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--data" in lines[0]
    assert "connection string" in lines[0]
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    dsn = f"postgresql://msgbus:hunter2@127.0.0.1:{free_port()}/hub?connect_timeout=3"
    result = run_msgbusd(["--storage", "postgres", "--data", dsn, *_listen(), *NODE])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot open postgres store at postgresql://msgbus:***@127.0.0.1" in lines[0]
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_another_applications_database_is_refused_with_one_line(
    postgres_dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute("CREATE TABLE invoices (id BIGINT PRIMARY KEY, amount NUMERIC)")
    result = run_msgbusd(["--storage", "postgres", "--data", postgres_dsn, *_listen(), *NODE])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not a msgbus database" in lines[0]
    assert "invoices" in lines[0]
    # Nothing of msgbus was created next to the other application's table.
    with psycopg.connect(postgres_dsn) as con:
        tables = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert tables == [("invoices",)]


def test_a_newer_schema_is_refused_with_one_line(postgres_dsn: str, tmp_path: Path) -> None:
    with Daemon.start(tmp_path, storage="postgres", data=postgres_dsn, node="acme/hub/h1"):
        pass
    with psycopg.connect(postgres_dsn, autocommit=True) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    result = run_msgbusd(["--storage", "postgres", "--data", postgres_dsn, *_listen(), *NODE])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "schema version 99" in lines[0]
    assert "upgrade msgbus" in lines[0]
