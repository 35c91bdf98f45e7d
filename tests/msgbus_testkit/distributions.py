"""For the packaging tests: uv, built distributions, fresh venvs and msgbusd run from them.

Everything here runs real tools (`uv build`, `uv venv`, `uv pip install`) and real daemons from
those venvs. Waiting is always a poll against a deadline; no test depends on timing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from msgbus_proto import pb, rpc
from msgbus_server.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]
VERSION = (ROOT / "VERSION").read_text(encoding="utf-8").strip()
PACKAGES = (
    "msgbus-core",
    "msgbus-proto",
    "msgbus-store-sqlite",
    "msgbus-store-duckdb",
    "msgbus-store-postgres",
    "msgbus-server",
    "msgbus-sdk",
)
UV_TIMEOUT = 900.0
"""Seconds for one uv command: generous, CI machines are slow and shared."""
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def uv_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus whatever would point uv at the workspace's venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "UV_PYTHON")
        and not k.startswith("MSGBUS_")
    }
    if extra:
        env.update(extra)
    return env


def uv(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run uv and fail the test with its output when it fails."""
    result = subprocess.run(
        ["uv", *args],
        cwd=cwd,
        env=uv_env(env),
        capture_output=True,
        text=True,
        timeout=UV_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"uv {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


def dist_name(filename: str) -> str:
    """`msgbus_store_sqlite-0.1.0-py3-none-any.whl` -> `msgbus-store-sqlite`."""
    return filename.split("-", 1)[0].replace("_", "-")


@dataclass(frozen=True)
class Dist:
    """The output of `uv build --all-packages`: one wheel and one sdist per package."""

    path: Path

    def wheel(self, package: str) -> Path:
        return self._one(f"{package.replace('-', '_')}-{VERSION}-*.whl")

    def sdist(self, package: str) -> Path:
        return self._one(f"{package.replace('-', '_')}-{VERSION}.tar.gz")

    def _one(self, pattern: str) -> Path:
        found = sorted(self.path.glob(pattern))
        assert len(found) == 1, f"{pattern} in {self.path}: {[p.name for p in found]}"
        return found[0]


@dataclass(frozen=True)
class Venv:
    """A fresh virtual environment made by uv."""

    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name

    def distributions(self) -> dict[str, str]:
        """Installed distribution name (normalized) -> version."""
        listing = uv("pip", "list", "--python", str(self.python), "--format", "json", cwd=self.path)
        return {
            re.sub(r"[-_.]+", "-", entry["name"]).lower(): entry["version"]
            for entry in json.loads(listing.stdout)
        }


def make_venv(path: Path, requirements: Sequence[str], dist: Dist) -> Venv:
    """A new venv with `requirements` installed: our packages come from `dist` (find-links),
    everything else from the package index (uv's cache makes that fast)."""
    uv("venv", "--quiet", "--python", os.path.realpath(sys.executable), str(path), cwd=path.parent)
    venv = Venv(path)
    uv(
        "pip",
        "install",
        "--python",
        str(venv.python),
        "--find-links",
        str(dist.path),
        *requirements,
        cwd=path.parent,
    )
    return venv


_LISTENING = re.compile(r"listening on \[?([0-9a-fA-F.:]+?)\]?:(\d+) ")


@dataclass
class Msgbusd:
    """A msgbusd process started from an installed console script.

    Listen on port 0: the daemon logs the port it bound ("listening on HOST:PORT"), so there is no
    race for a free port.
    """

    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    _stderr: IO[bytes] | None = None

    @property
    def stderr_path(self) -> Path:
        return self.cwd / "msgbusd.stderr"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> Msgbusd:
        """Start the daemon and wait until it logs its port and answers Health SERVING."""
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            env=uv_env({"PYTHONUNBUFFERED": "1", **self.env}),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )
        started = time.monotonic()
        self.port = wait_until(
            self._logged_port, message="msgbusd to log its port", timeout=STARTUP_TIMEOUT
        )
        # One startup budget for both waits.
        wait_until(
            self._serving,
            message="msgbusd to answer Health SERVING",
            timeout=max(0.0, started + STARTUP_TIMEOUT - time.monotonic()),
        )
        return self

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _logged_port(self) -> int | None:
        self._assert_running()
        match = _LISTENING.search(self.stderr_text())
        return int(match.group(2)) if match else None

    def _serving(self) -> bool | None:
        self._assert_running()
        try:
            return True if self.health().status == "SERVING" else None
        except grpc.RpcError:
            return None

    def _assert_running(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        assert code is None, f"msgbusd exited with {code}:\n{self.stderr_text()}"

    def health(self) -> pb.HealthResponse:
        """The msgbus.v1 Health RPC, over a plain gRPC channel."""
        with grpc.insecure_channel(self.endpoint) as channel:
            reply: pb.HealthResponse = rpc.MsgbusServiceStub(channel).Health(
                pb.HealthRequest(), timeout=5.0
            )
            return reply

    def grpc_health(self, service: str = "") -> int:
        """The standard grpc.health.v1 Check status for `service` ("" is the whole server)."""
        with grpc.insecure_channel(self.endpoint) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5.0
            )
            return int(reply.status)

    def terminate(self) -> int:
        """SIGTERM; wait for the exit code (AssertionError if the daemon does not exit)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"msgbusd still running {STOP_TIMEOUT}s after SIGTERM:\n{self.stderr_text()}"
            ) from None
        finally:
            self._close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()

    def _close(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
