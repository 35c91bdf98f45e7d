"""`--storage memory` keeps nothing on disk, so msgbusd refuses it unless the operator asks for a
volatile daemon with `--volatile` (MSGBUS_VOLATILE=1), and then says so at startup."""

from __future__ import annotations

from pathlib import Path

import pytest

from msgbus_proto import pb
from msgbus_server.testing import Daemon, free_port, run_msgbusd


def _refusal(args: list[str], env: dict[str, str] | None = None) -> str:
    result = run_msgbusd(args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--storage", "memory"], None),
        ([], {"MSGBUS_STORAGE": "memory"}),
        (["--storage", "memory"], {"MSGBUS_VOLATILE": "0"}),
    ],
    ids=["flag", "env", "volatile-env-off"],
)
def test_memory_store_is_refused_without_volatile(
    tmp_path: Path, args: list[str], env: dict[str, str] | None
) -> None:
    base = ["--listen", f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "unused")]
    line = _refusal([*base, *args], env)
    assert line.startswith("msgbusd: error: --storage memory keeps nothing on disk"), line
    assert "--volatile" in line, line
    assert "MSGBUS_VOLATILE" in line, line


@pytest.mark.parametrize(
    ("extra", "env"),
    [(["--volatile"], None), ([], {"MSGBUS_VOLATILE": "1"})],
    ids=["flag", "env"],
)
def test_volatile_daemon_warns_at_startup_and_forgets_on_restart(
    tmp_path: Path, extra: list[str], env: dict[str, str] | None
) -> None:
    with Daemon.start(tmp_path, storage="memory", extra_args=extra, env=env) as daemon:
        assert "VOLATILE daemon" in daemon.stderr_text()
        assert "nothing survives a restart" in daemon.stderr_text()
        stub = daemon.stub()
        sent = stub.Publish(pb.PublishRequest(topic="gone", payload=b"x"), timeout=30)
        assert sent.message.head_id == 1
        # What the warning promises: the acknowledged publish does not survive a restart.
        daemon.restart()
        head = daemon.stub().GetHead(pb.GetHeadRequest(topic="gone"), timeout=30)
        assert (head.head_id, head.found) == (0, False)
        assert daemon.stderr_text().count("VOLATILE daemon") == 2


def test_a_durable_daemon_logs_no_volatile_warning(tmp_path: Path) -> None:
    # --volatile only permits a volatile store; it changes nothing for a durable one.
    with Daemon.start(tmp_path, extra_args=["--volatile"]) as daemon:
        assert "VOLATILE" not in daemon.stderr_text()
        stub = daemon.stub()
        stub.Publish(pb.PublishRequest(topic="kept", payload=b"x"), timeout=30)
        daemon.restart()
        head = daemon.stub().GetHead(pb.GetHeadRequest(topic="kept"), timeout=30)
        assert head.head_id == 1
