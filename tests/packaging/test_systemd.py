"""packaging/systemd/msgbusd.service: systemd's own checks, and its settings as msgbusd reads them.

`scripts/verify-systemd.sh` runs `systemd-analyze verify` (no warnings allowed) and
`systemd-analyze security --offline=true` (exposure at most 2.0); it installs systemd from the
distribution's packages when it is missing, and exits 77 only when it has no apt-get to do that.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from msgbus_server.cli import parse_config
from msgbus_server.listeners import TcpListener, UnixListener
from msgbus_testkit.distributions import ROOT

UNIT = ROOT / "packaging" / "systemd" / "msgbusd.service"
SKIP = 77


def directives() -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        result.setdefault(key, []).append(value)
    return result


def test_systemd_analyze_verify_and_security() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "verify-systemd.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=1500,
    )
    if result.returncode == SKIP:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for msgbusd\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) <= 2.0


def test_unit_keeps_the_original_hardening_and_adds_the_rest() -> None:
    unit = directives()
    expected = {
        # the original's
        "DynamicUser": "true",
        "StateDirectory": "msgbus",
        "NoNewPrivileges": "true",
        "PrivateTmp": "true",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        # added
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectControlGroups": "true",
        "CapabilityBoundingSet": "",
        "LockPersonality": "true",
        "RestrictNamespaces": "true",
        "MemoryDenyWriteExecute": "true",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "ExecStart": "/opt/msgbus/bin/msgbusd",
        "Restart": "on-failure",
        # the Unix socket's directory
        "RuntimeDirectory": "msgbus",
        "RuntimeDirectoryMode": "0755",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert "@system-service" in unit["SystemCallFilter"]
    assert re.fullmatch(r"\d+s", unit["TimeoutStopSec"][0])
    assert unit["ReadWritePaths"] == ["-/var/lib/msgbus"]
    # A user namespace would show the Unix socket's callers as nobody: uid rules could not work.
    assert "PrivateUsers" not in unit


def test_unit_environment_is_what_msgbusd_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MSGBUS_* variable in the unit is one msgbusd reads, with the value it should get."""
    for name in [k for k in os.environ if k.startswith("MSGBUS_")]:
        monkeypatch.delenv(name)
    env = dict(value.split("=", 1) for value in directives()["Environment"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = parse_config([])
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 50051)
    runtime = directives()["RuntimeDirectory"][0]
    socket = UnixListener(f"/run/{runtime}/msgbusd.sock", mode=0o666)
    assert config.listeners == (TcpListener("127.0.0.1", 50051), socket)
    assert config.policy is None, "the unit's defaults are loopback and the socket: no policy"
    assert config.data == "/var/lib/msgbus/msgbus.sqlite"
    assert config.storage == "sqlite"
    assert config.node.key == "tenant/default/device"
    assert config.log_level == "info"
    assert env["MSGBUS_DATA"].startswith("/var/lib/" + directives()["StateDirectory"][0] + "/")
    known = {
        "MSGBUS_LISTEN",
        "MSGBUS_SOCKET_MODE",
        "MSGBUS_DATA",
        "MSGBUS_STORAGE",
        "MSGBUS_TENANT_ID",
        "MSGBUS_BL_NAME",
        "MSGBUS_DEVICE_ID",
        "MSGBUS_LOG_LEVEL",
    }
    assert {k for k in env if k.startswith("MSGBUS_")} == known
    cli_source = (ROOT / "packages/msgbus-server/src/msgbus_server/cli.py").read_text()
    for key in known:
        assert f'"{key}"' in cli_source, f"msgbusd does not read {key}"
