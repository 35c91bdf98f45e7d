"""The memory-bound flags of msgbusd and the payload cap: defaults, variables, one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import msgbus_sdk
from msgbus_core.limits import (
    ENVELOPE_OVERHEAD_BYTES,
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_LIMIT,
    RECEIVE_LIMIT_BYTES,
    receive_limit_bytes,
)
from msgbus_proto import pb
from msgbus_sdk._config import DEFAULT_MAX_RECEIVE_BYTES
from msgbus_server.cli import parse_config
from msgbus_server.testing import Daemon, free_port, run_msgbusd


def _refused(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> str:
    base = ["--listen", f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "db.sqlite")]
    result = run_msgbusd([*base, *args], env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--max-streams-per-connection", "0"], ["--max-streams-per-connection", "got 0"]),
        (["--max-streams-per-connection", str(2**31)], ["--max-streams-per-connection"]),
        (["--max-streams-per-connection", "many"], ["--max-streams-per-connection", "many"]),
        (["--max-read-bytes-in-flight", "0"], ["--max-read-bytes-in-flight", "at least 1"]),
        (["--max-read-bytes-in-flight", "-5"], ["--max-read-bytes-in-flight", "got -5"]),
        (["--max-read-bytes-in-flight", "16MiB"], ["--max-read-bytes-in-flight", "16MiB"]),
        (["--max-payload-bytes", str(MAX_PAYLOAD_LIMIT + 1)], ["--max-payload-bytes", "64 MiB"]),
        (["--max-payload-bytes", str(256 * 1024 * 1024)], [str(MAX_PAYLOAD_LIMIT)]),
    ],
    ids=[
        "streams-zero",
        "streams-above-int",
        "streams-not-int",
        "bytes-zero",
        "bytes-negative",
        "bytes-with-unit",
        "payload-just-above-the-cap",
        "payload-256-mib",
    ],
)
def test_bad_values_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    line = _refused(tmp_path, args)
    assert line.startswith("msgbusd: error: ")
    for word in words:
        assert word in line, line


def test_bad_environment_values_are_reported_like_flags(tmp_path: Path) -> None:
    line = _refused(tmp_path, [], env={"MSGBUS_MAX_READ_BYTES_IN_FLIGHT": "0"})
    assert "--max-read-bytes-in-flight" in line
    line = _refused(tmp_path, [], env={"MSGBUS_MAX_STREAMS_PER_CONNECTION": "x"})
    assert "--max-streams-per-connection" in line


def test_defaults_variables_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MSGBUS_"):
            monkeypatch.delenv(key)
    config = parse_config([])
    assert config.max_streams_per_connection == 4096
    assert config.max_read_bytes_in_flight == 16 * 1024 * 1024
    monkeypatch.setenv("MSGBUS_MAX_STREAMS_PER_CONNECTION", "8")
    monkeypatch.setenv("MSGBUS_MAX_READ_BYTES_IN_FLIGHT", "1")
    config = parse_config([])
    assert (config.max_streams_per_connection, config.max_read_bytes_in_flight) == (8, 1)
    config = parse_config(["--max-read-bytes-in-flight", "4096"])
    assert config.max_read_bytes_in_flight == 4096
    assert parse_config(["--max-payload-bytes", str(MAX_PAYLOAD_LIMIT)]).max_payload_bytes == (
        MAX_PAYLOAD_LIMIT
    )


def test_the_payload_cap_fits_what_the_sdk_and_peers_receive() -> None:
    # A message at the cap, with full headers and its envelope, fits the SDK's default receive
    # limit, and the daemon's and its peer channels' receive limits hold it.
    assert DEFAULT_MAX_RECEIVE_BYTES == RECEIVE_LIMIT_BYTES
    assert MAX_PAYLOAD_LIMIT + MAX_HEADER_BYTES + ENVELOPE_OVERHEAD_BYTES == RECEIVE_LIMIT_BYTES
    assert receive_limit_bytes(MAX_PAYLOAD_LIMIT) == RECEIVE_LIMIT_BYTES
    assert receive_limit_bytes(1024 * 1024) == 32 * 1024 * 1024


def test_a_daemon_at_the_payload_cap_serves_a_message_at_the_cap(tmp_path: Path) -> None:
    args = ["--max-payload-bytes", str(MAX_PAYLOAD_LIMIT), "--max-read-bytes-in-flight", "1"]
    with Daemon.start(tmp_path, extra_args=args) as daemon:
        payload = b"c" * MAX_PAYLOAD_LIMIT
        headers = {"h": "v" * (MAX_HEADER_BYTES - 1)}
        with msgbus_sdk.MsgbusClient.connect(daemon.endpoint) as client:
            stored = client.publish("cap", payload, headers=headers)
            [fetched] = client.fetch("cap", from_head_id=stored.head_id, limit=5)
            assert fetched.payload == payload
        # An application that wants less per response says so, and gets a clear error.
        with msgbus_sdk.MsgbusClient.connect(daemon.endpoint, max_receive_bytes=1 << 20) as small:
            with pytest.raises(msgbus_sdk.MsgbusError) as info:
                small.fetch("cap", limit=1)
            assert "larger than max" in str(info.value)
        assert daemon.poll() is None


def test_the_sdk_refuses_a_receive_limit_grpc_cannot_take() -> None:
    for bad in (0, -1, 2**31):
        with pytest.raises(msgbus_sdk.ConfigurationError, match="max_receive_bytes"):
            msgbus_sdk.MsgbusClient.connect("127.0.0.1:1", max_receive_bytes=bad)


def test_fetch_still_returns_the_whole_page_when_it_spans_many_byte_budgets(
    tmp_path: Path,
) -> None:
    # 40 messages of 512 KiB are 20 MiB, more than two read budgets and the in-flight cap: the
    # page is read in byte-sized chunks and still comes whole and in order.
    args = ["--max-read-bytes-in-flight", str(3 * 1024 * 1024)]
    with Daemon.start(tmp_path, extra_args=args) as daemon:
        stub = daemon.stub()
        payload = b"p" * (512 * 1024)
        for _ in range(8):
            entries = [pb.PublishRequest(topic="page", payload=payload)] * 5
            stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)
        with msgbus_sdk.MsgbusClient.connect(daemon.endpoint) as client:
            page = client.fetch("page", limit=100)
        assert [m.head_id for m in page] == list(range(1, 41))
