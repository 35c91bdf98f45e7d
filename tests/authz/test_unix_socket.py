"""msgbusd on a Unix socket: mode and group, the SDK and the CLI, stale and taken paths, and
the startup refusals of listeners and policies."""

from __future__ import annotations

import grp
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_sdk import MsgbusClient, PermissionDeniedError
from msgbus_server.testing import (
    Daemon,
    clean_env,
    free_port,
    msgbusd_command,
    run_msgbusd,
    wait_until,
)


def _other_group() -> grp.struct_group:
    """A group other than the test's own, to hand the socket to."""
    mine = os.getegid()
    return next(group for group in grp.getgrall() if group.gr_gid != mine)


def _one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_the_socket_has_its_mode_and_group_and_serves_the_sdk_and_the_cli(
    tmp_path: Path, socket_dir: Path
) -> None:
    path = socket_dir / "sdk.sock"
    group = _other_group()
    args = [
        "--listen",
        f"unix://{path}",
        "--socket-mode",
        "0640",
        "--socket-group",
        group.gr_name,
        "--max-payload-bytes",
        str(8 * 1024 * 1024),
    ]
    with Daemon.start(tmp_path, extra_args=args) as daemon:
        status = os.stat(path)
        assert stat.S_ISSOCK(status.st_mode)
        assert stat.S_IMODE(status.st_mode) == 0o640
        assert status.st_gid == group.gr_gid
        assert f"and unix:{path} (node" in daemon.stderr_text()
        big = os.urandom(4 * 1024 * 1024)  # several relay buffers in each direction
        for target in (f"unix://{path}", f"unix:{path}"):
            with MsgbusClient.connect(target) as bus:
                assert bus.health().status == "SERVING"
                sent = bus.publish("unix.events", big)
                (fetched,) = bus.fetch("unix.events", from_head_id=sent.head_id, limit=1)
                assert fetched.payload == big
        cli = subprocess.run(
            [sys.executable, "-m", "msgbus_sdk", "--endpoint", f"unix://{path}", "health"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        assert "SERVING" in cli.stdout
        assert daemon.stop() == 0
    assert not path.exists(), "msgbusd left its socket file behind"


def test_a_stale_socket_is_replaced_and_a_served_one_refused(
    tmp_path: Path, socket_dir: Path
) -> None:
    path = socket_dir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))  # what a daemon killed with SIGKILL leaves behind
    leftover.close()
    with Daemon.start(tmp_path / "a", extra_args=["--listen", f"unix://{path}"]):
        with grpc.insecure_channel(f"unix://{path}") as channel:
            health = rpc.MsgbusServiceStub(channel).Health(pb.HealthRequest(), timeout=10)
            assert health.status == "SERVING"
        data = tmp_path / "b.sqlite"
        taken = run_msgbusd(
            [
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--listen",
                f"unix://{path}",
                "--data",
                str(data),
            ]
        )
        _one_error_line(taken, f"cannot listen on unix:{path}: address in use")
        assert not data.exists(), "the store was opened for a daemon that cannot listen"


@pytest.mark.parametrize("problem", ["regular-file", "missing-directory"])
def test_a_path_that_cannot_be_a_socket_is_one_line(
    tmp_path: Path, socket_dir: Path, problem: str
) -> None:
    if problem == "regular-file":
        path, needle = socket_dir / "file.sock", "exists and is not a socket"
        path.write_text("not a socket")
    else:
        path, needle = socket_dir / "no" / "x.sock", f"no directory {socket_dir / 'no'}"
    data = tmp_path / "db.sqlite"
    result = run_msgbusd(["--listen", f"unix://{path}", "--data", str(data)])
    _one_error_line(result, f"cannot listen on unix:{path}: ", needle)
    assert not data.exists()


def test_a_daemon_on_a_unix_socket_alone(tmp_path: Path, socket_dir: Path) -> None:
    path = socket_dir / "alone.sock"
    argv = [*msgbusd_command(), "--listen", f"unix://{path}", "--data", str(tmp_path / "db")]
    with (tmp_path / "stderr").open("wb") as stderr:
        process = subprocess.Popen(argv, env=clean_env(), stderr=stderr, cwd=tmp_path)
        try:
            with grpc.insecure_channel(f"unix://{path}") as channel:
                stub = rpc.MsgbusServiceStub(channel)
                wait_until(
                    lambda: stub.Health(pb.HealthRequest(), timeout=1).status == "SERVING",
                    message="Health SERVING on the socket",
                    timeout=30,
                )
                stub.Publish(pb.PublishRequest(topic="alone", payload=b"x"), timeout=10)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
    assert f"listening on unix:{path} (node" in (tmp_path / "stderr").read_text()


def _internal_socket(pid: int) -> str:
    """The abstract name of a daemon's internal socket, from /proc/net/unix."""
    text = Path("/proc/net/unix").read_text()
    names: set[str] = set(re.findall(rf"@(msgbusd-{pid}-[0-9a-f]+)\b", text))
    assert len(names) == 1, names
    return names.pop()


def test_a_connection_that_goes_around_the_socket_is_refused(
    tmp_path: Path, socket_dir: Path
) -> None:
    """The internal socket is abstract, so anyone may connect to it; without the relay's
    credentials every call is refused, even without a policy (which the socket's mode guards)."""
    path = socket_dir / "guarded.sock"
    extra = ["--listen", f"unix://{path}", "--socket-mode", "0600"]
    with Daemon.start(tmp_path, extra_args=extra) as daemon:
        internal = _internal_socket(daemon.pid)
        with grpc.insecure_channel(f"unix-abstract:{internal}") as channel:
            stub = rpc.MsgbusServiceStub(channel)
            for call in (
                lambda: stub.Health(pb.HealthRequest(), timeout=10),
                lambda: stub.Publish(pb.PublishRequest(topic="t", payload=b"x"), timeout=10),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "did not come through msgbusd's Unix socket" in (info.value.details() or "")
        with grpc.insecure_channel(f"unix://{path}") as channel:
            rpc.MsgbusServiceStub(channel).Publish(pb.PublishRequest(topic="t", payload=b"x"))


def test_a_non_loopback_listener_needs_a_policy_or_allow_anyone(tmp_path: Path) -> None:
    data = tmp_path / "db.sqlite"
    base = ["--listen", f"0.0.0.0:{free_port()}", "--allow-insecure", "--data", str(data)]
    _one_error_line(
        run_msgbusd(base),
        "refusing to serve 0.0.0.0:",
        "without an authorization policy",
        "--allow-anyone",
    )
    # Loopback TCP and Unix sockets stay open without one, as before authorization existed.
    config = tmp_path / "msgbusd.toml"
    config.write_text('[policy]\ndefault = "allow"\n')
    port = free_port()
    with Daemon.start(
        tmp_path / "policy",
        port=port,
        extra_args=["--listen", f"0.0.0.0:{port}", "--allow-insecure", "--config", str(config)],
    ) as daemon:
        assert "authorization: policy from" in daemon.stderr_text()
    assert not data.exists()


def test_a_policy_that_does_not_parse_stops_startup_with_one_line_naming_the_key(
    tmp_path: Path,
) -> None:
    config = tmp_path / "msgbusd.toml"
    config.write_text(
        'listen = "127.0.0.1:1"\n[policy]\n[[policy.rule]]\ncallers = ["*"]\nallow = ["raed"]\n'
    )
    data = tmp_path / "db.sqlite"
    line = _one_error_line(run_msgbusd(["--config", str(config), "--data", str(data)]))
    assert line == (
        f"msgbusd: error: {config}: policy.rule[0].allow[0]: unknown action 'raed' (did you mean "
        "'read'?) (actions: publish, read, delete, fifo, admin, pull, push)"
    )
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text("[policy]\ntenant-isolation = 1\n")
    line = _one_error_line(run_msgbusd(["--policy", str(policy_file), "--data", str(data)]))
    assert f"{policy_file}: policy.tenant-isolation must be one of" in line
    assert not data.exists()


def test_a_denial_is_the_sdks_permission_denied(tmp_path: Path, socket_dir: Path) -> None:
    config = tmp_path / "msgbusd.toml"
    config.write_text(
        f'[policy]\n[[policy.rule]]\nname = "mine"\ncallers = ["uid:{os.geteuid()}"]\n'
        'allow = ["publish", "read"]\ntopics = ["mine.*"]\n'
    )
    path = socket_dir / "sdk-denied.sock"
    extra = ["--listen", f"unix://{path}", "--config", str(config)]
    with Daemon.start(tmp_path, extra_args=extra), MsgbusClient.connect(f"unix://{path}") as bus:
        bus.publish("mine.events", b"ok")
        with pytest.raises(PermissionDeniedError) as info:
            bus.publish("theirs.events", b"no")
        assert info.value.field == "topic"
        assert f"uid:{os.geteuid()} may not publish to topic 'theirs.events'" in str(info.value)
