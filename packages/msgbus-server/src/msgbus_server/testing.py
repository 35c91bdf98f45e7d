"""Run real `msgbusd` processes from tests.

`Daemon.start` launches the daemon as a subprocess (`python -m msgbus_server`) on a free loopback
port with a real database file in the given directory, and returns once the daemon answers
Health. Tests then talk to it through `daemon.endpoint` with any gRPC client:

    with Daemon.start(tmp_path, storage="sqlite") as daemon:
        stub = daemon.stub()
        stub.Publish(pb.PublishRequest(topic="events", payload=b"hi"))
        daemon.restart()          # same port, same data
        assert daemon.stop() == 0 # SIGTERM, exit code

The daemon's stdout and stderr go to files next to the database, so a chatty daemon can never
block on a full pipe, and `stderr_text()` shows what it logged. `wait_until` waits for a state
without sleeping for a fixed time.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Self, TypeVar, overload

import grpc

from msgbus_core.model import NodeId
from msgbus_proto import pb, rpc

DEFAULT_STARTUP_TIMEOUT = 30.0
"""Seconds to wait for a daemon to answer Health (generous: CI boxes are slow and shared)."""

_PROBE_OPTIONS = (
    # gRPC backs a channel off for ~1 s (plus jitter) after a refused connection, which is what
    # every probe sees while the daemon is still importing. Without these, readiness was
    # noticed one to two seconds late, and every start and restart in the suite paid for it.
    # (grpc.min_reconnect_backoff_ms is left alone: gRPC also uses it as the connect timeout.)
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 50),
)

DEFAULT_WAIT_TIMEOUT = 60.0
"""Seconds `wait_until` waits by default (generous: CI boxes are slow and shared)."""

_OPENED = re.compile(r"opened the \w+ store .* in (\d+) ms")
_STARTUP = re.compile(r"startup (\d+) ms")

_counter = itertools.count()

T = TypeVar("T")


class DaemonError(RuntimeError):
    """The daemon failed to start or to stop; the message carries its stderr."""


class WaitTimeout(AssertionError):
    """A `wait_until` condition did not hold before its deadline.

    An `AssertionError`, so that pytest reports it as a failed expectation, not as an error.
    """


@overload
def wait_until(
    condition: Callable[[], bool],
    *,
    message: str,
    timeout: float = ...,
    interval: float = ...,
    retry_on: tuple[type[Exception], ...] = ...,
) -> bool: ...
@overload
def wait_until(
    condition: Callable[[], T | bool | None],
    *,
    message: str,
    timeout: float = ...,
    interval: float = ...,
    retry_on: tuple[type[Exception], ...] = ...,
) -> T: ...
def wait_until(
    condition: Callable[[], object],
    *,
    message: str,
    timeout: float = DEFAULT_WAIT_TIMEOUT,
    interval: float = 0.05,
    retry_on: tuple[type[Exception], ...] = (grpc.RpcError,),
) -> object:
    """Poll `condition` every `interval` seconds until it returns something truthy; return that.

    `message` says what was awaited ("three identical nodes"); after `timeout` seconds
    `WaitTimeout` names it, with the last exception the condition raised. Exceptions in
    `retry_on` count as "not yet": a daemon that is restarting answers UNAVAILABLE for a moment.
    Anything else the condition raises ends the wait at once.

    A condition may be a plain check (`lambda: len(rows) == 3`) or return what it found
    (`lambda: (s := state()) and s.done and s`), which is then returned, typed without the
    `False`/`None` of the not-yet answers.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except retry_on as error:
            last_error = error
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error is not None else ""
            raise WaitTimeout(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback TCP ports that are free right now (the kernel picks them).

    All sockets stay bound until every port is picked, so the ports differ from each other.
    """
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port() -> int:
    """A loopback TCP port that is free right now (the kernel picks it)."""
    return free_ports(1)[0]


def msgbusd_command() -> list[str]:
    """The argv prefix that runs msgbusd with the current interpreter."""
    return [sys.executable, "-m", "msgbus_server"]


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process environment without MSGBUS_* variables, plus `env`.

    Inherited MSGBUS_* settings would silently change the daemon under test.
    """
    result = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    result.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        result.update(env)
    return result


def run_msgbusd(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run msgbusd to completion (for configuration errors) and capture its output."""
    return subprocess.run(
        [*msgbusd_command(), *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


class Daemon:
    """One running msgbusd subprocess. Create it with `Daemon.start`."""

    def __init__(
        self,
        *,
        data_dir: Path,
        storage: str,
        node: NodeId,
        port: int,
        extra_args: Sequence[str],
        env: Mapping[str, str] | None,
        credentials: grpc.ChannelCredentials | None,
        data: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.storage = storage
        self.node = node
        """The daemon's own node id."""
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        """`127.0.0.1:PORT`, for `grpc.insecure_channel` or the SDK."""
        self.data_path = data_dir / f"msgbus.{storage}"
        """The database file (ignored by the `memory` store)."""
        self.data = data if data is not None else str(self.data_path)
        """What `--data` says: the file, or a server store's connection string."""
        self.extra_args = tuple(extra_args)
        self.env = dict(env) if env else None
        self.credentials = credentials
        self._serial = next(_counter)
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr_path = data_dir / f"msgbusd-{self.port}-{self._serial}.stderr"
        self._stdout_path = data_dir / f"msgbusd-{self.port}-{self._serial}.stdout"
        self._stderr_file: IO[bytes] | None = None
        self._stdout_file: IO[bytes] | None = None
        self._channels: list[grpc.Channel] = []
        self.startup_s = 0.0
        """Seconds from the last launch of the process to its first SERVING Health answer."""

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        data_dir: Path,
        *,
        storage: str = "sqlite",
        node: str = "tenant/default/device",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        port: int | None = None,
        data: str | None = None,
    ) -> Daemon:
        """Start msgbusd and wait until it answers Health.

        `data` is the `--data` value when it is not a file in `data_dir` (the connection
        string of a PostgreSQL store). `node` is `tenant/bl/device`. `credentials` are used
        for the readiness probe and for `channel()` when the daemon serves TLS. Raises
        `DaemonError` (with the daemon's stderr) when the daemon exits or does not become
        ready before the deadline.
        """
        data_dir.mkdir(parents=True, exist_ok=True)
        node_id = NodeId.from_key(node)
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            daemon = cls(
                data_dir=data_dir,
                storage=storage,
                node=node_id,
                port=port if port is not None else free_port(),
                extra_args=extra_args,
                env=env,
                credentials=credentials,
                data=data,
            )
            try:
                daemon._launch()
            except DaemonError as error:
                # Another process may grab the port between free_port() and the daemon's bind.
                if "in use" in str(error) and attempt + 1 < attempts:
                    continue
                raise
            return daemon
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        args = [
            *msgbusd_command(),
            "--listen",
            self.endpoint,
            "--data",
            self.data,
            "--storage",
            self.storage,
            "--tenant-id",
            self.node.tenant_id,
            "--bl-name",
            self.node.bl_name,
            "--device-id",
            self.node.device_id,
            *self.extra_args,
        ]
        self._close_files()
        self._stderr_file = self._stderr_path.open("ab")
        self._stdout_file = self._stdout_path.open("ab")
        self._process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout_file,
            stderr=self._stderr_file,
            env=clean_env(self.env),
            cwd=self.data_dir,
        )
        self._wait_ready(launched=time.monotonic())

    def _wait_ready(self, launched: float) -> None:
        channel = self._new_channel(_PROBE_OPTIONS)
        stub = rpc.MsgbusServiceStub(channel)

        def serving() -> bool:
            code = self.poll()
            if code is not None:
                self._close_files()
                raise DaemonError(
                    f"msgbusd exited with {code} during startup:\n{self.stderr_text()}"
                )
            reply = stub.Health(pb.HealthRequest(), timeout=1.0)
            return reply.status == "SERVING"

        try:
            remaining = max(0.0, launched + DEFAULT_STARTUP_TIMEOUT - time.monotonic())
            wait_until(serving, message="Health SERVING", timeout=remaining, interval=0.02)
            self.startup_s = time.monotonic() - launched
        except WaitTimeout:
            self.kill()
            raise DaemonError(
                f"msgbusd not ready after {DEFAULT_STARTUP_TIMEOUT}s:\n{self.stderr_text()}"
            ) from None
        finally:
            channel.close()

    def poll(self) -> int | None:
        """The exit code, or None while the daemon runs."""
        return self._process.poll() if self._process else None

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self._process is not None
        return self._process.pid

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon."""
        if self._process and self._process.poll() is None:
            self._process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the daemon to exit and return its exit code (`TimeoutError` if it won't)."""
        assert self._process is not None
        try:
            code = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"msgbusd still running after {timeout}s") from None
        self._close_files()
        return code

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait at most `timeout` seconds, and return the exit code.

        A daemon that does not exit in time is killed and `TimeoutError` is raised.
        """
        self._close_channels()
        if self._process is None:
            return 0
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except TimeoutError:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the daemon (a crash: nothing is flushed) and reap it."""
        self._close_channels()
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        if self._process is not None:
            self._process.wait()
        self._close_files()

    def restart(self) -> Self:
        """Stop (SIGTERM) if still running, then start again on the same port and data."""
        if self.poll() is None:
            self.stop()
        # Same port: SO_REUSEADDR lets the new daemon bind right away.
        self._launch()
        return self

    def stderr_text(self) -> str:
        """Everything the daemon wrote to stderr so far (all runs of this Daemon object)."""
        return _read_text(self._stderr_path)

    def stdout_text(self) -> str:
        """Everything the daemon wrote to stdout so far."""
        return _read_text(self._stdout_path)

    def reported_startup_ms(self) -> int:
        """The daemon's own figure for its last start, in milliseconds, read from its log.

        It is opening the store (with crash recovery) plus starting the server ("opened the ...
        store" and "startup N ms").
        """
        stderr = self.stderr_text()
        opened, started = _OPENED.findall(stderr), _STARTUP.findall(stderr)
        assert opened, "the daemon did not log how long opening the store took"
        assert started, "the daemon did not log its startup time"
        return int(opened[-1]) + int(started[-1])

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The daemon's VmRSS (current) or VmHWM (peak) memory in KiB, from /proc (Linux)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
        assert match, f"{field} missing from /proc/{self.pid}/status"
        return int(match.group(1))

    # -- clients --------------------------------------------------------------------------------

    def _new_channel(self, options: Sequence[tuple[str, int]] = ()) -> grpc.Channel:
        if self.credentials is not None:
            return grpc.secure_channel(self.endpoint, self.credentials, options=options)
        return grpc.insecure_channel(self.endpoint, options=options)

    def channel(self) -> grpc.Channel:
        """A blocking channel to the daemon, closed by `stop`/`kill`/`__exit__`."""
        channel = self._new_channel()
        self._channels.append(channel)
        return channel

    def stub(self) -> rpc.MsgbusServiceStub:
        """A blocking msgbus stub on a new channel."""
        return rpc.MsgbusServiceStub(self.channel())

    def aio_channel(self) -> grpc.aio.Channel:
        """A new grpc.aio channel to the daemon; the caller closes it."""
        if self.credentials is not None:
            return grpc.aio.secure_channel(self.endpoint, self.credentials)
        return grpc.aio.insecure_channel(self.endpoint)

    def _close_channels(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()

    def _close_files(self) -> None:
        for handle in (self._stderr_file, self._stdout_file):
            if handle is not None:
                handle.close()
        self._stderr_file = self._stdout_file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(TimeoutError):
            self.stop()
        self.kill()

    def __repr__(self) -> str:
        return f"Daemon({self.endpoint}, storage={self.storage}, node={self.node.key})"
