"""The PostgreSQL test servers of `msgbus_testkit.postgres`: real servers, started by the tests.

What the PostgreSQL store's tests and the multi-process daemon tests build on: a server that
answers, databases that start empty and apart, a crash that keeps what was committed (and
only that), restarts on the same port, private servers apart from the shared one, and no
server outliving the test process that started it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from msgbus_server.testing import wait_until
from msgbus_testkit import postgres
from msgbus_testkit.postgres import (
    BINDIR_ENV,
    PostgresServer,
    PostgresServerFactory,
    cluster_processes,
    find_binaries,
    require_postgres,
    sweep_stale_servers,
)

# The fixtures, for this module only: the other daemon tests of this folder need no PostgreSQL.
postgres_server = postgres.postgres_server
postgres_dsn = postgres.postgres_dsn
postgres_server_factory = postgres.postgres_server_factory

TESTS = Path(__file__).resolve().parents[1]


def _user_tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "select tablename from pg_tables"
            " where schemaname not in ('pg_catalog', 'information_schema')"
        ).fetchall()
    return [row[0] for row in rows]


def _log_since(server: PostgresServer, offset: int) -> str:
    return server.log_text()[offset:]


def test_the_session_server_answers_with_durable_settings(
    postgres_server: PostgresServer,
) -> None:
    with psycopg.connect(postgres_server.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        settings: dict[str, str] = dict(
            conn.execute(
                "select name, setting from pg_settings where name in"
                " ('fsync', 'synchronous_commit', 'max_connections', 'listen_addresses')"
            ).fetchall()
        )
    assert settings == {
        "fsync": "on",
        "synchronous_commit": "on",
        "max_connections": "200",
        "listen_addresses": "127.0.0.1",
    }
    assert postgres_server.dsn("x") == f"postgresql://postgres@127.0.0.1:{postgres_server.port}/x"


def test_the_server_never_runs_as_root(postgres_server: PostgresServer) -> None:
    status = Path(f"/proc/{postgres_server.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    if os.geteuid() == 0:
        assert uid != 0
    else:
        assert uid == os.geteuid()


def test_two_fresh_databases_are_distinct_and_empty(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    other = postgres_server.create_database()
    try:
        assert other != postgres_dsn
        assert _user_tables(postgres_dsn) == []
        assert _user_tables(other) == []
        with psycopg.connect(postgres_dsn) as conn:
            conn.execute("create table only_here (id int)")
        assert _user_tables(postgres_dsn) == ["only_here"]
        assert _user_tables(other) == []
    finally:
        postgres_server.drop_database(other)


def test_drop_database_closes_open_sessions(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.create_database("dropped_with_a_session_open")
    with psycopg.connect(dsn) as session:
        session.execute("select 1")
        postgres_server.drop_database(dsn)
        with pytest.raises(psycopg.OperationalError):
            session.execute("select 1")
    with postgres_server.connect() as conn:
        names = [row[0] for row in conn.execute("select datname from pg_database").fetchall()]
    assert "dropped_with_a_session_open" not in names
    postgres_server.drop_database("dropped_with_a_session_open")  # already gone: no error


def test_a_bad_database_name_is_refused_naming_the_rule(postgres_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match=r"database name 'Bad-Name': 1 to 63 lowercase"):
        postgres_server.create_database("Bad-Name")
    with pytest.raises(ValueError, match="database name"):
        postgres_server.create_database("a" * 64)


def test_kill_loses_nothing_committed_and_everything_uncommitted(
    postgres_server_factory: PostgresServerFactory,
) -> None:
    server = postgres_server_factory()
    dsn = server.create_database()
    port = server.port
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table acked (id int primary key)")
        conn.execute("insert into acked values (1)")
    in_flight = psycopg.connect(dsn)
    try:
        in_flight.execute("insert into acked values (2)")  # never committed
        server.kill()
        assert not server.running
        assert cluster_processes(server.data_dir) == []
    finally:
        in_flight.close()
    offset = len(server.log_text())
    server.start()
    assert "not properly shut down; automatic recovery in progress" in _log_since(server, offset)
    assert server.port == port
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select id from acked order by id").fetchall() == [(1,)]


def test_restart_shuts_down_cleanly_and_keeps_port_and_data(
    postgres_server_factory: PostgresServerFactory,
) -> None:
    server = postgres_server_factory()
    dsn = server.create_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("create table kept (id int)")
        conn.execute("insert into kept values (7)")
    first_pid, port = server.pid, server.port
    offset = len(server.log_text())
    server.restart()
    log = _log_since(server, offset)
    assert "received fast shutdown request" in log
    assert "not properly shut down" not in log
    assert server.pid != first_pid
    assert server.port == port
    with psycopg.connect(dsn) as conn:
        assert conn.execute("select id from kept").fetchall() == [(7,)]


def test_a_private_server_is_independent_of_the_session_server(
    postgres_server: PostgresServer, postgres_server_factory: PostgresServerFactory
) -> None:
    private = postgres_server_factory(settings={"max_connections": "20"})
    assert private.port != postgres_server.port
    assert private.data_dir != postgres_server.data_dir
    with private.connect() as conn:
        assert conn.execute("show max_connections").fetchone() == ("20",)
    private.kill()
    with postgres_server.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_close_stops_the_server_and_removes_its_files() -> None:
    with PostgresServer(require_postgres()) as server:
        data_dir = server.data_dir
        assert server.running
    assert not server.running
    assert not data_dir.exists()
    assert cluster_processes(data_dir) == []


def test_a_dead_test_process_leaves_no_server_running_nor_its_folder(tmp_path: Path) -> None:
    require_postgres()
    script = (
        "import os\n"
        "from msgbus_testkit.postgres import PostgresServer\n"
        "server = PostgresServer().start()\n"
        "print(server.data_dir, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert child.returncode == -9, child.stderr
    data_dir = Path(child.stdout.strip())
    assert (data_dir / "PG_VERSION").exists()
    # The postmaster follows its test process down (PR_SET_PDEATHSIG), backends and all.
    wait_until(lambda: cluster_processes(data_dir) == [], message="the orphaned server to stop")
    sweep_stale_servers()
    assert not data_dir.parent.exists()


def test_postgres_missing_skips_but_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(BINDIR_ENV, str(tmp_path))
    assert find_binaries() is None
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{BINDIR_ENV}=.* is not usable"):
        require_postgres()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the PostgreSQL tests must run"):
        require_postgres()


def test_the_binaries_directory_can_be_named(monkeypatch: pytest.MonkeyPatch) -> None:
    found = require_postgres()
    monkeypatch.setenv(BINDIR_ENV, str(found))
    assert find_binaries() == found
