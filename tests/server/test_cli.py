"""msgbusd configuration errors: one clear line on stderr, exit status 2, never a traceback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from msgbus_server.cli import parse_config
from msgbus_server.config import ConfigError
from msgbus_server.testing import Daemon, free_port, run_msgbusd


def _assert_config_error(args: list[str], *words: str, env: dict[str, str] | None = None) -> str:
    result = run_msgbusd(args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    line = lines[0]
    assert line.startswith("msgbusd: error: ")
    for word in words:
        assert word in line, line
    return line


def _base(tmp_path: Path) -> list[str]:
    return ["--listen", f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "db.sqlite")]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--no-such-flag"], ["--no-such-flag"]),
        (["--sync-interval-ms", "soon"], ["--sync-interval-ms"]),
        (["--tenant-id", ""], ["--tenant-id"]),
        (["--bl-name", "a/b"], ["--bl-name", "/"]),
        (["--device-id", "x\x01"], ["--device-id"]),
        (["--peer", "not a peer"], ["--peer"]),
        (["--peer", "127.0.0.1:1=too/few"], ["--peer"]),
        (["--tls-cert", "/nonexistent/cert.pem"], ["cert and key"]),
        (["--tls-client-ca", "/nonexistent/ca.pem"], ["MSGBUS_TLS_CLIENT_CA"]),
        (["--peer-tls-cert", "/nonexistent/c.pem"], ["peer TLS cert and key"]),
        (["--storage", "nosuchstore"], ["nosuchstore", "sqlite", "duckdb", "memory"]),
        (["--max-payload-bytes", "0"], ["--max-payload-bytes"]),
        (["--log-format", "xml"], ["--log-format"]),
        (["--log-level", "chatty"], ["--log-level"]),
    ],
    ids=[
        "unknown-flag",
        "bad-int",
        "empty-tenant",
        "slash-bl",
        "control-device",
        "bad-peer",
        "bad-peer-node",
        "cert-without-key",
        "client-ca-without-cert",
        "peer-cert-without-key",
        "unknown-storage",
        "payload-zero",
        "log-format",
        "log-level",
    ],
)
def test_config_errors(tmp_path: Path, args: list[str], words: list[str]) -> None:
    _assert_config_error([*_base(tmp_path), *args], *words)


@pytest.mark.parametrize(
    "listen",
    ["localhost:50051", "127.0.0.1", "127.0.0.1:99999", "::1:5000", "300.1.1.1:5", ""],
)
def test_bad_listen_address(tmp_path: Path, listen: str) -> None:
    _assert_config_error(["--listen", listen, "--data", str(tmp_path / "db")], "--listen")


def test_unreadable_pem(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    _assert_config_error(
        [*_base(tmp_path), "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)],
        "--tls-cert",
        "missing.pem",
    )
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    _assert_config_error(
        [*_base(tmp_path), "--tls-cert", str(not_pem), "--tls-key", str(key)], "not a PEM"
    )


def test_unreadable_peer_pem(tmp_path: Path) -> None:
    _assert_config_error(
        [*_base(tmp_path), "--peer", "127.0.0.1:1", "--peer-tls-ca", str(tmp_path / "nope.pem")],
        "nope.pem",
    )


@pytest.mark.parametrize("backend", ["sqlite", "duckdb"])
def test_store_open_failures(tmp_path: Path, backend: str) -> None:
    # A directory where the file should be.
    directory = tmp_path / "dir"
    directory.mkdir()
    _assert_config_error(
        ["--listen", f"127.0.0.1:{free_port()}", "--storage", backend, "--data", str(directory)],
        backend,
        str(directory),
    )
    # A file that is not a database of this kind.
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database file\n" * 100)
    _assert_config_error(
        ["--listen", f"127.0.0.1:{free_port()}", "--storage", backend, "--data", str(garbage)],
        str(garbage),
    )
    # A parent directory that does not exist.
    _assert_config_error(
        [
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--storage",
            backend,
            "--data",
            str(tmp_path / "no" / "such" / "db"),
        ],
        "cannot open",
    )


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        _assert_config_error(
            ["--listen", f"127.0.0.1:{port}", "--data", str(tmp_path / "db")], "in use"
        )


def test_second_daemon_on_the_same_port_is_refused(tmp_path: Path) -> None:
    with Daemon.start(tmp_path / "a") as daemon:
        _assert_config_error(
            ["--listen", daemon.endpoint, "--data", str(tmp_path / "b.sqlite")], "in use"
        )


def test_plaintext_on_non_loopback_needs_allow_insecure(tmp_path: Path) -> None:
    _assert_config_error(
        ["--listen", f"0.0.0.0:{free_port()}", "--data", str(tmp_path / "db")],
        "--allow-insecure",
    )


def test_allow_insecure_serves_on_all_interfaces(tmp_path: Path) -> None:
    port = free_port()
    with Daemon.start(
        tmp_path,
        port=port,
        extra_args=["--listen", f"0.0.0.0:{port}", "--allow-insecure", "--allow-anyone"],
    ) as daemon:
        assert daemon.stop() == 0


def test_environment_errors_are_reported_like_flags(tmp_path: Path) -> None:
    _assert_config_error(_base(tmp_path), "--tenant-id", env={"MSGBUS_TENANT_ID": "a/b"})
    _assert_config_error(_base(tmp_path), "--peer", env={"MSGBUS_PEERS": "ok:1,,bad peer"})


def test_parse_config_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MSGBUS_"):
            monkeypatch.delenv(key)
    config = parse_config([])
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 50051)
    assert (config.storage, config.data) == ("sqlite", "./msgbus.sqlite")
    assert config.node.key == "tenant/default/device"
    assert config.max_payload_bytes == 1024 * 1024
    # No --sync-batch-limit: sync batches adapt to the link (None).
    assert (config.sync_interval_s, config.sync_batch_limit) == (1.0, None)
    monkeypatch.setenv("MSGBUS_PEERS", "127.0.0.1:7001, 127.0.0.1:7002=a/b/c")
    monkeypatch.setenv("MSGBUS_SYNC_INTERVAL_MS", "5")
    monkeypatch.setenv("MSGBUS_SYNC_BATCH_LIMIT", "0")
    config = parse_config(["--listen", "[::1]:6000"])
    assert [p.endpoint for p in config.peers] == ["127.0.0.1:7001", "127.0.0.1:7002"]
    assert config.peers[1].pinned is not None
    assert (config.sync_interval_s, config.sync_batch_limit) == (0.1, 1)
    assert (config.listen_host, config.listen) == ("::1", "[::1]:6000")
    # A flag wins over its variable (and repeated, comma-separated flags add up).
    config = parse_config(["--peer", "h:1,h:2", "--peer", "h:3"])
    assert [p.endpoint for p in config.peers] == ["h:1", "h:2", "h:3"]
    with pytest.raises(ConfigError):
        parse_config(["--listen", "0.0.0.0:1"])
