"""The `msgbus` command, run as a subprocess against a real daemon: output and exit codes."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from msgbus_sdk import MsgbusClient
from msgbus_server.testing import Daemon, free_port

MSGBUS = str(Path(sys.executable).parent / "msgbus")


def run(
    daemon: Daemon | None, *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    if daemon is not None:
        environment["MSGBUS_ENDPOINT"] = daemon.endpoint
    environment.update(env or {})
    return subprocess.run(
        [MSGBUS, *args], env=environment, capture_output=True, input=stdin, timeout=120
    )


def ok(daemon: Daemon, *args: str, **kwargs: Any) -> str:
    result = run(daemon, *args, **kwargs)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""
    return result.stdout.decode()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_help_lists_every_subcommand() -> None:
    result = run(None, "--help")
    assert result.returncode == 0
    for name in ("health", "ready", "publish", "fetch", "subscribe", "heads", "sync-state"):
        assert name in result.stdout.decode()
    for name in ("delete", "fifo", "bench", "probe"):
        assert name in result.stdout.decode()
    fifo = run(None, "fifo", "--help").stdout.decode()
    for action in ("enqueue", "peek", "ack", "reject"):
        assert action in fifo


def test_health_and_ready(daemon: Daemon) -> None:
    assert ok(daemon, "health") == "SERVING  node=tenant/default/device\n"
    assert json_lines(ok(daemon, "health", "--json")) == [
        {"status": "SERVING", "node": "tenant/default/device"}
    ]
    assert ok(daemon, "ready").startswith("READY")
    assert json_lines(ok(daemon, "--json", "ready"))[0]["ready"] is True


def test_endpoint_flag_wins_over_the_environment(daemon: Daemon) -> None:
    result = run(None, "--endpoint", f"http://{daemon.endpoint}", "health", "--json")
    assert result.returncode == 0
    assert json_lines(result.stdout.decode())[0]["status"] == "SERVING"


def test_publish_fetch_and_payload_rendering(daemon: Daemon, topic: str, tmp_path: Path) -> None:
    published = json_lines(ok(daemon, "publish", topic, "héllo", "-H", "k=v", "--json"))[0]
    assert (published["head_id"], published["payload"], published["headers"]) == (
        1,
        "héllo",
        {"k": "v"},
    )
    binary = bytes(range(256))
    (tmp_path / "blob").write_bytes(binary)
    assert "head_id=2" in ok(daemon, "publish", topic, "--file", str(tmp_path / "blob"))
    assert "head_id=3" in ok(daemon, "publish", topic, "--file", "-", stdin=b"from stdin")

    rows = json_lines(ok(daemon, "fetch", topic, "--json"))
    assert [r["head_id"] for r in rows] == [1, 2, 3]
    assert rows[1]["payload_encoding"] == "base64"
    assert base64.b64decode(rows[1]["payload"]) == binary
    assert (rows[2]["payload"], rows[2]["payload_encoding"]) == ("from stdin", "utf8")
    assert rows[0]["origin"] == "tenant/default/device"

    table = ok(daemon, "fetch", topic).splitlines()
    assert table[0].split() == ["HEAD_ID", "CREATED", "DELETED", "HEADERS", "PAYLOAD"]
    assert table[1].endswith("héllo")
    assert "base64:" in table[2]

    raw = run(daemon, "fetch", topic, "--from", "2", "--limit", "1", "--raw")
    assert raw.stdout == binary
    every = json_lines(ok(daemon, "fetch", topic, "--all", "--from", "2", "--json"))
    assert [r["head_id"] for r in every] == [2, 3]


SIGINT_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
"""Runs argv[1:] with SIGINT at its default disposition (exec keeps SIG_DFL)."""


def test_subscribe_follows_until_count_or_ctrl_c(daemon: Daemon, topic: str) -> None:
    for i in range(3):
        ok(daemon, "publish", topic, f"m{i}")
    rows = json_lines(ok(daemon, "subscribe", topic, "--count", "3", "--json"))
    assert [r["payload"] for r in rows] == ["m0", "m1", "m2"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    env["MSGBUS_ENDPOINT"] = daemon.endpoint
    process = subprocess.Popen(
        # With SIGINT at its default, whatever this test inherited: a shell runs a background
        # job (as CI may run the suite) with SIGINT ignored, and a Python started that way
        # keeps ignoring it, so Ctrl-C could never reach the CLI.
        [sys.executable, "-c", SIGINT_DEFAULT, MSGBUS, "subscribe", topic, "--from", "3", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["head_id"] == 3
        ok(daemon, "publish", topic, "live")
        assert json.loads(process.stdout.readline())["payload"] == "live"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        # Reaped here, whatever happened: a process left running would be reported (as an
        # unraisable warning) in whichever test the garbage collector happens to run in.
        process.kill()
        process.communicate()
    assert process.returncode == 0
    assert stderr == b""


def test_heads_delete_and_sync_state(daemon: Daemon, topic: str) -> None:
    for i in range(3):
        ok(daemon, "publish", topic, str(i))
    heads = json_lines(ok(daemon, "heads", "--json"))
    (head,) = [h for h in heads if h["topic"] == topic]
    assert {k: head[k] for k in ("origin", "head_id")} == {
        "origin": "tenant/default/device",
        "head_id": 3,
    }
    assert set(head) == {"topic", "origin", "first_head_id", "head_id", "count", "bytes"}
    table = ok(daemon, "heads").splitlines()
    assert table[0].split() == ["TOPIC", "ORIGIN", "FIRST", "HEAD", "COUNT", "BYTES"]
    assert any(line.split()[:2] == [topic, "tenant/default/device"] for line in table[1:])
    assert json_lines(ok(daemon, "delete", topic, "1", "2", "--json")) == [{"deleted_count": 2}]
    assert ok(daemon, "delete", topic, "1", "2") == "deleted=0\n"
    assert [r["deleted"] for r in json_lines(ok(daemon, "fetch", topic, "--json"))] == [
        True,
        True,
        False,
    ]
    assert ok(daemon, "sync-state", "--json") == ""
    assert ok(daemon, "sync-state").split() == [
        "PEER",
        "DIRECTION",
        "TOPIC",
        "ORIGIN",
        "LOCAL",
        "REMOTE",
        "LAG",
        "SYNCED",
        "LAST_SUCCESS",
        "FAILURES",
        "LAST_ERROR",
    ]


def test_fifo_subcommands_and_their_exit_codes(daemon: Daemon, topic: str) -> None:
    queue = f"q.{topic}"
    empty = run(daemon, "fifo", "peek", queue)
    assert (empty.returncode, empty.stdout) == (4, b"")
    assert b"is empty" in empty.stderr
    job = json_lines(ok(daemon, "fifo", "enqueue", queue, topic, "t/b/d", "job", "--json"))[0]
    assert (job["sequence"], job["target"], job["payload"]) == (1, "t/b/d", "job")
    assert "sequence=2" in ok(daemon, "fifo", "enqueue", queue, topic, "t/b/d", "second")
    front = json_lines(ok(daemon, "fifo", "peek", queue, "--json"))[0]
    assert front["id"] == job["id"]
    assert run(daemon, "fifo", "peek", queue, "--raw").stdout == b"job"
    assert json_lines(ok(daemon, "fifo", "reject", queue, job["id"], "--json")) == [
        {"accepted": True}
    ]
    assert json_lines(ok(daemon, "fifo", "peek", queue, "--json"))[0]["attempts"] == 1
    refused = run(daemon, "fifo", "ack", queue, "not-the-front")
    assert (refused.returncode, refused.stdout) == (4, b"accepted=false\n")
    assert ok(daemon, "fifo", "ack", queue, job["id"]) == "accepted=true\n"
    assert "second" in ok(daemon, "fifo", "peek", queue)


def test_server_errors_exit_1_with_one_line(daemon: Daemon) -> None:
    for args in (
        ("publish", "", "x"),
        ("publish", "$msgbus.delete", "x"),
        ("delete", "t", "2", "1"),
    ):
        result = run(daemon, *args)
        assert result.returncode == 1
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("msgbus: error: ")
        assert b"Traceback" not in result.stderr


def test_unreachable_daemon_exits_3_with_one_line() -> None:
    result = run(None, "--endpoint", f"127.0.0.1:{free_port()}", "health")
    assert result.returncode == 3
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("msgbus: cannot reach the daemon at 127.0.0.1:")


def test_usage_errors_exit_2() -> None:
    assert run(None, "publish").returncode == 2
    assert run(None, "frobnicate").returncode == 2
    result = run(None, "--endpoint", "ftp://x", "health")
    assert result.returncode == 2
    assert result.stderr.decode().startswith("msgbus: error: invalid endpoint")


def test_bench_reports_every_phase(daemon: Daemon) -> None:
    rows = json_lines(ok(daemon, "bench", "--count", "100", "--concurrency", "8", "--json"))
    assert [r["phase"] for r in rows] == ["publish", "subscribe", "fetch"]
    assert all(r["messages"] == 100 for r in rows)
    assert "p99_ms" in rows[0]
    assert rows[0]["coalesced"] is True


def test_bench_can_publish_without_coalescing(daemon: Daemon) -> None:
    args = ("bench", "--count", "50", "--concurrency", "8", "--no-coalesce")
    rows = json_lines(ok(daemon, *args, "--json"))
    assert (rows[0]["phase"], rows[0]["messages"], rows[0]["coalesced"]) == ("publish", 50, False)


def test_probe_actions_follow_the_original(daemon: Daemon) -> None:
    topic = "probe.events"
    assert ok(daemon, "probe", env={"MSGBUS_ACTION": "publish", "MSGBUS_TOPIC": topic}) == (
        "published head_id=1\n"
    )
    ok(daemon, "probe", env={"MSGBUS_ACTION": "publish", "MSGBUS_TOPIC": topic})
    fetched = ok(daemon, "probe", env={"MSGBUS_ACTION": "fetch", "MSGBUS_TOPIC": topic})
    assert fetched.splitlines() == [
        "fetched=2",
        "message head_id=1 deleted=false payload=hello msgbus",
        "message head_id=2 deleted=false payload=hello msgbus",
    ]
    deleted = ok(
        daemon,
        "probe",
        env={"MSGBUS_ACTION": "delete", "MSGBUS_TOPIC": topic, "MSGBUS_FROM_HEAD": "2"},
    )
    assert deleted == "deleted=1\n"
    heads = ok(daemon, "probe").splitlines()  # list-heads is the default action
    assert f"head topic={topic} origin=tenant/default/device head_id=2" in heads
    assert ok(daemon, "probe", env={"MSGBUS_ACTION": "list-sync"}) == ""
    foreign = run(
        daemon,
        "probe",
        env={"MSGBUS_ACTION": "publish", "MSGBUS_ORIGIN_DEVICE": "other"},
    )
    assert foreign.returncode == 1
    assert b"PERMISSION_DENIED" in foreign.stderr
    unknown = run(daemon, "probe", env={"MSGBUS_ACTION": "nope"})
    assert (unknown.returncode, unknown.stderr) == (2, b"msgbus: unsupported MSGBUS_ACTION: nope\n")


@pytest.mark.parametrize("example", ["basic.py", "fifo_worker.py"])
def test_examples_run_against_a_daemon(daemon: Daemon, example: str) -> None:
    path = Path(__file__).parents[3] / "examples" / example
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    env["MSGBUS_ENDPOINT"] = daemon.endpoint
    result = subprocess.run(
        [sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    if example == "basic.py":
        lines = result.stdout.splitlines()
        assert lines[0].startswith("published head_id=")
        assert lines[1] == "fetched 1 message(s)"
    else:
        assert "rejected sequence=2 attempt=1" in result.stdout
        assert result.stdout.splitlines()[-1] == "queue empty"


def test_cursors_list_filter_and_delete(daemon: Daemon, topic: str) -> None:
    with MsgbusClient.connect(daemon.endpoint) as bus:
        bus.publish_batch([(topic, b"a"), (topic, b"b")])
        bus.commit_cursor("cli-billing", topic, 2)
        bus.commit_cursor("cli-audit", topic, 1)
    table = ok(daemon, "cursors").splitlines()
    assert table[0].split() == ["NAME", "TOPIC", "ORIGIN", "HEAD", "UPDATED"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["cli-billing"][1:4] == [topic, "tenant/default/device", "2"]
    assert rows["cli-audit"][3] == "1"
    listed = json_lines(ok(daemon, "cursors", "--name", "cli-billing", "--json"))
    assert [(c["name"], c["topic"], c["head_id"]) for c in listed] == [("cli-billing", topic, 2)]
    assert listed[0]["origin"] == "tenant/default/device"
    assert ok(daemon, "cursors", "delete", "cli-billing", "--topic", topic) == "deleted=1\n"
    assert json_lines(ok(daemon, "cursors", "delete", "cli-audit", "--json")) == [
        {"deleted_count": 1}
    ]
    assert json_lines(ok(daemon, "cursors", "--name", "cli-billing", "--json")) == []
    refused = run(daemon, "cursors", "delete", "")
    assert refused.returncode != 0
    assert b"name" in refused.stderr
