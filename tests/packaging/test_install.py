"""`pip install msgbus-server` in a fresh venv: what gets installed, and msgbusd runs from it.

The SDK-only install (no server, no stores, no duckdb, no grpcio-tools; `msgbus` works) is
tested by packages/msgbus-sdk/tests/test_install.py; these tests cover the server side.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from grpc_health.v1 import health_pb2

from msgbus_testkit.distributions import VERSION, Msgbusd, Venv

SERVER_STACK = {"msgbus-server", "msgbus-core", "msgbus-proto", "msgbus-store-sqlite"}


def test_server_install_brings_the_sqlite_store_and_nothing_optional(server_venv: Venv) -> None:
    installed = server_venv.distributions()
    ours = {name: version for name, version in installed.items() if name.startswith("msgbus-")}
    assert ours == dict.fromkeys(SERVER_STACK, VERSION)
    for unwanted in ("msgbus-sdk", "msgbus-store-duckdb", "duckdb", "grpcio-tools", "pytest"):
        assert unwanted not in installed, f"{unwanted} came with msgbus-server"
    assert {"grpcio", "grpcio-health-checking", "grpcio-reflection", "protobuf"} <= set(installed)


def test_server_venv_imports_from_itself_and_lists_the_sqlite_store(
    server_venv: Venv, workdir: Path
) -> None:
    script = (
        "import importlib.metadata as m, msgbus_server, msgbus_store_sqlite\n"
        "print(msgbus_server.__file__)\n"
        "print(msgbus_store_sqlite.__file__)\n"
        "print(sorted(e.name for e in m.entry_points(group='msgbus.stores')))\n"
    )
    result = subprocess.run(
        [str(server_venv.python), "-c", script],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    server_file, store_file, stores = result.stdout.splitlines()
    assert server_file.startswith(str(server_venv.path))
    assert store_file.startswith(str(server_venv.path))
    assert stores == "['memory', 'sqlite']"


def test_msgbusd_serves_health_and_exits_0_on_sigterm(server_venv: Venv, workdir: Path) -> None:
    data = workdir / "msgbus.sqlite"
    daemon = Msgbusd(
        argv=[
            str(server_venv.bin("msgbusd")),
            "--listen",
            "127.0.0.1:0",
            "--data",
            str(data),
            "--device-id",
            "install-test",
        ],
        cwd=workdir,
    )
    daemon.start()
    try:
        health = daemon.health()
        assert health.status == "SERVING"
        assert (health.node.tenant_id, health.node.bl_name, health.node.device_id) == (
            "tenant",
            "default",
            "install-test",
        )
        assert daemon.grpc_health() == health_pb2.HealthCheckResponse.SERVING
        assert daemon.grpc_health("msgbus.v1.MsgbusService") == (
            health_pb2.HealthCheckResponse.SERVING
        )
        assert "storage sqlite" in daemon.stderr_text()
        assert data.exists()
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.stderr_text()
    assert "msgbusd stopped" in daemon.stderr_text()


def test_msgbusd_without_duckdb_names_the_installed_stores(
    server_venv: Venv, workdir: Path
) -> None:
    """`--storage duckdb` without the `duckdb` extra: one clear line, exit status 2."""
    result = subprocess.run(
        [
            str(server_venv.bin("msgbusd")),
            "--listen",
            "127.0.0.1:0",
            "--data",
            str(workdir / "x.duckdb"),
            "--storage",
            "duckdb",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unknown store 'duckdb'" in result.stderr
    assert "memory, sqlite" in result.stderr
