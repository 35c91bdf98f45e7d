"""Installing only the SDK wheel (plus msgbus-proto) into a fresh venv: no server, no stores,
no duckdb, no code generators, and the `msgbus` command works from there.

Needs the package index (or uv's cache) for grpcio, protobuf, betterproto2 and tenacity.
Set MSGBUS_SKIP_INSTALL_TEST=1 to skip it on a machine without either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from msgbus_server.testing import Daemon

ROOT = Path(__file__).parents[3]
FORBIDDEN = ("msgbus-server", "msgbus-store-", "msgbus-core", "duckdb", "grpcio-tools")

pytestmark = pytest.mark.skipif(
    os.environ.get("MSGBUS_SKIP_INSTALL_TEST") == "1" or shutil.which("uv") is None,
    reason="install test disabled (MSGBUS_SKIP_INSTALL_TEST=1) or uv missing",
)


def _uv(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
    }
    result = subprocess.run(
        ["uv", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"uv {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def test_sdk_wheel_installs_alone_and_the_cli_works(tmp_path: Path, daemon: Daemon) -> None:
    dist = tmp_path / "dist"
    _uv("build", "--wheel", "--package", "msgbus-sdk", "--out-dir", str(dist))
    _uv("build", "--wheel", "--package", "msgbus-proto", "--out-dir", str(dist))
    wheels = sorted(str(p) for p in dist.glob("*.whl"))
    assert len(wheels) == 2, wheels

    venv = tmp_path / "venv"
    _uv("venv", "--python", sys.executable, str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    _uv("pip", "install", "--python", str(python), *wheels, cwd=tmp_path)

    installed = _uv("pip", "freeze", "--python", str(python), cwd=tmp_path).stdout.lower()
    names = {line.split("==")[0].split(" @ ")[0].strip() for line in installed.splitlines()}
    assert {"msgbus-sdk", "msgbus-proto", "grpcio", "protobuf", "betterproto2", "tenacity"} <= names
    for name in names:
        assert not name.startswith(FORBIDDEN), f"{name} should not come with the SDK"

    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    msgbus = str(venv / "bin" / "msgbus")
    help_text = subprocess.run([msgbus, "--help"], capture_output=True, text=True, env=env)
    assert help_text.returncode == 0, help_text.stderr
    assert "subscribe" in help_text.stdout
    health = subprocess.run(
        [msgbus, "--endpoint", daemon.endpoint, "health", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert health.returncode == 0, health.stderr
    assert '"status":"SERVING"' in health.stdout
    # The SDK imports from that environment, not from the workspace.
    where = subprocess.run(
        [str(python), "-c", "import msgbus_sdk; print(msgbus_sdk.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert str(venv) in where.stdout
