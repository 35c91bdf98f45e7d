"""`msgbus top` against real daemons: once for scripts, and live in a real terminal under tmux.

The live test runs the command in a detached tmux session of its own (a private tmux server) and
reads the screen with `tmux capture-pane`: it shows the logs and the peers, redraws in place
when the daemon changes, and Ctrl-C ends it with status 0. With MSGBUS_DOCS_IMAGES=1 the screen
is also written to docs/images/msgbus-top.txt, the capture the README shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from msgbus_proto import pb
from msgbus_server.testing import Daemon, free_port, wait_until

MSGBUS = str(Path(sys.executable).parent / "msgbus")
DOCS_CAPTURE = Path(__file__).resolve().parents[3] / "docs" / "images" / "msgbus-top.txt"


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    env.update(extra)
    return env


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """A hub, and an edge daemon that pulls from it."""
    args = ("--sync-interval-ms", "100")
    with Daemon.start(tmp_path / "hub", node="tenant/default/hub", extra_args=args) as hub:
        edge_args = [*args, "--peer", hub.endpoint]
        with Daemon.start(
            tmp_path / "edge", node="tenant/default/edge", extra_args=edge_args
        ) as edge:
            yield hub, edge


def seed(hub: Daemon, edge: Daemon) -> None:
    """Logs on the hub that the edge pulls, and a log of the edge's own."""
    stub = hub.stub()
    for _ in range(12):
        stub.Publish(pb.PublishRequest(topic="orders.eu", payload=b"o" * 200))
    stub.Publish(pb.PublishRequest(topic="telemetry.cpu", payload=b"c" * 50))
    edge.stub().Publish(pb.PublishRequest(topic="edge.local", payload=b"e"))
    origin = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="hub")
    wait_until(
        lambda: (
            edge.stub().GetHead(pb.GetHeadRequest(topic="orders.eu", origin=origin)).head_id == 12
        ),
        message="the edge pulled the hub's log",
    )


def test_top_once_shows_the_node_the_busiest_logs_and_the_peers(
    pair: tuple[Daemon, Daemon],
) -> None:
    hub, edge = pair
    seed(hub, edge)
    result = subprocess.run(
        [MSGBUS, "--endpoint", edge.endpoint, "top", "--once"],
        env=environment(COLUMNS="140"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    screen = result.stdout
    assert "node tenant/default/edge" in screen
    assert "SERVING" in screen
    assert "logs 3" in screen
    assert "orders.eu" in screen
    assert "tenant/default/hub" in screen
    # The largest log first (no rates yet on a first look).
    assert screen.index("orders.eu") < screen.index("telemetry.cpu") < screen.index("edge.local")
    assert hub.endpoint in screen
    assert "in sync" in screen


def tmux_available() -> bool:
    if shutil.which("tmux"):
        return True
    if os.environ.get("CI") == "true":
        pytest.fail("tmux is not installed (.ci/run installs it); the msgbus top test needs it")
    pytest.skip("tmux is not installed")


class Tmux:
    """A private tmux server (its own socket) with one detached session."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"msgbus-top-{uuid.uuid4().hex[:8]}"
        self.session = "top"

    def run(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def start(self, command: str, *, width: int, height: int) -> None:
        self.run(
            "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height), command
        )

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.session)

    def showing(self, *texts: str) -> str | None:
        """The screen, once it shows every one of `texts` (None before)."""
        screen = self.screen()
        return screen if all(text in screen for text in texts) else None

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def test_top_under_tmux_redraws_in_place_and_ends_on_ctrl_c(
    pair: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    tmux_available()
    hub, edge = pair
    seed(hub, edge)
    tmux = Tmux(tmp_path)
    # The shell reports how top ended, and keeps the pane for the test to read. COLUMNS and
    # LINES, which the test run may have set, would override the pane's size.
    command = (
        f"env -u MSGBUS_ENDPOINT -u COLUMNS -u LINES {MSGBUS} --endpoint {edge.endpoint} "
        "top --interval 0.3; "
        "echo top exited with $?; sleep 60"
    )
    tmux.start(command, width=160, height=50)
    try:
        screen = wait_until(
            lambda: tmux.showing("orders.eu", hub.endpoint),
            message="msgbus top drew the logs and the peer",
        )
        assert "Busiest logs" in screen
        assert "Peers" in screen
        assert "in sync" in screen
        (tmp_path / "top.txt").write_text(screen)
        # A change shows up in place: the same screen, redrawn (no scrolling output).
        edge.stub().Publish(pb.PublishRequest(topic="alerts.new", payload=b"!" * 10_000))
        redrawn = wait_until(
            lambda: tmux.showing("alerts.new"),
            message="msgbus top redrew with the new log",
        )
        assert redrawn.count("Busiest logs") == 1
        if os.environ.get("MSGBUS_DOCS_IMAGES") == "1":
            DOCS_CAPTURE.parent.mkdir(parents=True, exist_ok=True)
            DOCS_CAPTURE.write_text(redrawn.rstrip() + "\n")
        tmux.run("send-keys", "-t", tmux.session, "C-c")
        wait_until(
            lambda: "top exited with 0" in tmux.screen(),
            message="Ctrl-C ended msgbus top with status 0",
        )
    finally:
        tmux.close()


def test_top_without_rich_names_the_extra_to_install() -> None:
    # The command as installed without the top extra: importing rich fails.
    script = (
        "import sys; sys.modules['rich'] = None\n"
        "from msgbus_sdk.cli import main\n"
        "sys.exit(main(['--endpoint', '127.0.0.1:1', 'top', '--once']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr == (
        "msgbus: msgbus top needs the 'top' extra (rich is not installed): "
        "pip install 'msgbus-sdk[top]'\n"
    )


def test_top_usage_errors_and_an_unreachable_daemon() -> None:
    bad = subprocess.run(
        [MSGBUS, "top", "--interval", "0"], env=environment(), capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr == "msgbus: error: --interval must be above 0 seconds, got 0\n"
    unreachable = subprocess.run(
        [MSGBUS, "--endpoint", f"127.0.0.1:{free_port()}", "--timeout", "1", "top", "--once"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unreachable.returncode == 3
    assert unreachable.stderr.startswith("msgbus: cannot reach the daemon at 127.0.0.1:")
