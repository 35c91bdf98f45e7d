"""`msgbus fifo dead QUEUE` and `msgbus fifo redrive QUEUE` against a real daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from msgbus_sdk import MsgbusClient
from msgbus_server.testing import Daemon

MSGBUS = shutil.which("msgbus") or "msgbus"


def _ok(daemon: Daemon, *args: str) -> str:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    environment["MSGBUS_ENDPOINT"] = daemon.endpoint
    result = subprocess.run([MSGBUS, *args], env=environment, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def test_dead_lists_attempts_and_reason_and_redrive_moves_them_back(tmp_path: Path) -> None:
    with Daemon.start(tmp_path, extra_args=["--fifo-max-attempts", "mail=1"]) as daemon:
        with MsgbusClient.connect(daemon.endpoint) as bus:
            for payload in (b"first", b"second"):
                bus.enqueue_fifo("mail", "jobs", "t/b/d", payload)
                [lease] = bus.lease_fifo("mail")
                assert bus.reject_fifo_lease("mail", lease.lease_id).dead_lettered
        table = _ok(daemon, "fifo", "dead", "mail")
        header, *rows = table.splitlines()
        assert header.split()[:5] == ["SEQUENCE", "ID", "TOPIC", "ATTEMPTS", "REASON"]
        assert len(rows) == 2
        assert "max_attempts reached by reject" in rows[0]
        listed = [
            json.loads(line) for line in _ok(daemon, "fifo", "dead", "mail", "--json").splitlines()
        ]
        assert [(m["payload"], m["attempts"]) for m in listed] == [("first", 1), ("second", 1)]
        assert _ok(daemon, "fifo", "redrive", "mail", "--max-messages", "1") == "moved=1\n"
        assert json.loads(_ok(daemon, "fifo", "redrive", "mail", "--json")) == {"moved": 1}
        assert _ok(daemon, "fifo", "dead", "mail", "--json") == ""
        with MsgbusClient.connect(daemon.endpoint) as bus:
            assert [m.payload for m in bus.list_fifo("mail")] == [b"first", b"second"]
