"""A real slow link for end-to-end tests: a network namespace, a veth pair, tbf, and a proxy.

`veth_namespace()` makes a network namespace whose one interface is a veth pair to this
namespace; `VethLink.shape` limits both ends with tc's `tbf` qdisc, so everything that crosses
the pair shares its rate. A daemon started in the namespace (`NamespacedDaemon`) is reachable
only across the pair. The kernels of the CI machines have tbf, htb and nftables but not netem,
so the link's delay and its broken connections come from `DelayCutProxy`, an asyncio TCP proxy
in the test process that delays every chunk it forwards and cuts connections on demand or every
N bytes.

Names (namespace, interfaces) and the pair's /30 subnet are unique per link, so pytest-xdist
workers never collide, and the namespace, the pair and the processes in it are removed however
the test ends. `require_namespaces()` skips a test, saying why, where namespaces cannot be made
(not root, no iproute2); under `CI=true` it fails instead: CI must never pass by running none of
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self, TypeVar

import grpc
import pytest

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.testing import DEFAULT_STARTUP_TIMEOUT, clean_env, msgbusd_command, wait_until

T = TypeVar("T")

SUBNETS = ipaddress.IPv4Network("10.213.0.0/16")
"""Where each link's /30 is picked: a private range the test machines do not route."""

_IP_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """A `tbf` qdisc's settings, in tc's own units.

    `burst` is how many bytes may leave at once above the rate; `latency` bounds the queue
    (packets that would wait longer are dropped, and TCP backs off, as on a real slow link).
    """

    rate: str = "2mbit"
    burst: str = "32kbit"
    latency: str = "400ms"


def _run(argv: Sequence[str], what: str) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=_IP_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({result.returncode}): {' '.join(argv)}: {result.stderr.strip()}"
        )


def namespaces_unavailable() -> str | None:
    """None when this process can make network namespaces with veth pairs and tbf, else why."""
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: apt-get install iproute2)"
    probe = f"msgbus-probe-{uuid.uuid4().hex[:8]}"
    try:
        _run(["ip", "netns", "add", probe], "creating a network namespace")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return f"cannot create a network namespace (root or CAP_SYS_ADMIN needed): {error}"
    with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
        _run(["ip", "netns", "delete", probe], "deleting the probe namespace")
    return None


def require_namespaces() -> None:
    """Skip the calling test where namespaces cannot be made; fail it instead under CI=true."""
    reason = namespaces_unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the slow-link test must run)")
    pytest.skip(reason)


@dataclass(frozen=True, slots=True)
class VethLink:
    """A network namespace joined to this one by a veth pair; made by `veth_namespace`."""

    namespace: str
    host_device: str
    """The pair's end in this (the test's) namespace."""
    namespace_device: str
    """The pair's end inside `namespace`."""
    host_address: str
    namespace_address: str
    """The address a process inside `namespace` listens on to be reached across the pair."""

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: same process id)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def shape(self, bucket: TokenBucket) -> None:
        """Limit both directions of the pair with `bucket` (tbf on each end's egress)."""
        settings = ["rate", bucket.rate, "burst", bucket.burst, "latency", bucket.latency]
        _run(
            ["tc", "qdisc", "replace", "dev", self.host_device, "root", "tbf", *settings],
            "tbf on the host end",
        )
        _run(
            self.command(
                ["tc", "qdisc", "replace", "dev", self.namespace_device, "root", "tbf", *settings]
            ),
            "tbf on the namespace end",
        )


def _subnets_in_use() -> list[ipaddress.IPv4Network]:
    result = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"],
        capture_output=True,
        text=True,
        timeout=_IP_TIMEOUT_S,
        check=True,
    )
    used: list[ipaddress.IPv4Network] = []
    for line in result.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.IPv4Interface(fields[fields.index("inet") + 1]).network)
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of `SUBNETS` that no interface of this namespace overlaps right now."""
    used = _subnets_in_use()
    candidates = list(SUBNETS.subnets(new_prefix=30))
    for _ in range(100):
        subnet = random.choice(candidates)
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError(f"no free /30 in {SUBNETS}")


@contextlib.contextmanager
def veth_namespace() -> Iterator[VethLink]:
    """A fresh namespace with one end of a veth pair, the other end here; removed on exit.

    The link is not shaped until `VethLink.shape`. On exit every process still in the namespace
    is killed and the namespace is deleted, which destroys the pair with it.
    """
    tag = uuid.uuid4().hex[:8]
    subnet = _free_subnet()
    host, inside = (str(address) for address in list(subnet.hosts())[:2])
    link = VethLink(
        namespace=f"msgbus-{tag}",
        host_device=f"mbh{tag}",
        namespace_device=f"mbn{tag}",
        host_address=host,
        namespace_address=inside,
    )
    try:
        _run(["ip", "netns", "add", link.namespace], "creating the namespace")
        _run(
            [
                "ip", "link", "add", link.host_device, "type", "veth",
                "peer", "name", link.namespace_device, "netns", link.namespace,
            ],
            "creating the veth pair",
        )  # fmt: skip
        _run(
            ["ip", "addr", "add", f"{host}/{subnet.prefixlen}", "dev", link.host_device],
            "addressing the host end",
        )
        _run(["ip", "link", "set", link.host_device, "up"], "bringing the host end up")
        inner = [
            ["ip", "addr", "add", f"{inside}/{subnet.prefixlen}", "dev", link.namespace_device],
            ["ip", "link", "set", link.namespace_device, "up"],
            ["ip", "link", "set", "lo", "up"],
        ]
        for argv in inner:
            _run(link.command(argv), "configuring the namespace")
        yield link
    finally:
        _remove(link)


def _remove(link: VethLink) -> None:
    """Kill what still runs in the namespace, delete it and the pair; never raises."""
    with contextlib.suppress(Exception):
        pids = subprocess.run(
            ["ip", "netns", "pids", link.namespace],
            capture_output=True,
            text=True,
            timeout=_IP_TIMEOUT_S,
            check=False,
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    for argv in (
        ["ip", "netns", "delete", link.namespace],
        # Normally gone with the namespace; left behind only when the namespace never held it.
        ["ip", "link", "delete", link.host_device],
    ):
        with contextlib.suppress(Exception):
            subprocess.run(argv, capture_output=True, timeout=_IP_TIMEOUT_S, check=False)


class NamespacedDaemon:
    """A msgbusd process inside a `VethLink`'s namespace, on its veth address.

    It listens on a non-loopback address, so it runs with `--allow-insecure` and
    `--allow-anyone` (it has no authorization policy). Readiness is its Health answer across
    the pair. Stdout and stderr go to files in `data_dir`.
    """

    def __init__(
        self,
        link: VethLink,
        data_dir: Path,
        *,
        node: str,
        port: int = 50051,
        storage: str = "sqlite",
        extra_args: Sequence[str] = (),
    ) -> None:
        """A daemon (not started yet) that is `node` (`tenant/bl/device`) inside `link`."""
        self.node = NodeId.from_key(node)
        self.endpoint = f"{link.namespace_address}:{port}"
        """Where the daemon listens: reached from this namespace across the pair."""
        self._data_dir = data_dir
        self._argv = link.command(
            [
                *msgbusd_command(),
                "--listen", self.endpoint,
                "--allow-insecure",
                "--allow-anyone",
                "--data", str(data_dir / f"msgbus.{storage}"),
                "--storage", storage,
                "--tenant-id", self.node.tenant_id,
                "--bl-name", self.node.bl_name,
                "--device-id", self.node.device_id,
                *extra_args,
            ]
        )  # fmt: skip
        self._stderr_path = data_dir / "msgbusd.stderr"
        self._process: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []
        self._channels: list[grpc.Channel] = []

    def start(self) -> Self:
        """Launch the daemon and wait until it answers Health SERVING across the link."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._files = [self._stderr_path.open("ab"), (self._data_dir / "msgbusd.stdout").open("ab")]
        self._process = subprocess.Popen(
            self._argv,
            stdin=subprocess.DEVNULL,
            stderr=self._files[0],
            stdout=self._files[1],
            env=clean_env(),
            cwd=self._data_dir,
        )
        stub = self.stub()

        def serving() -> bool:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(f"msgbusd exited with {code}:\n{self.stderr_text()}")
            return stub.Health(pb.HealthRequest(), timeout=2.0).status == "SERVING"

        wait_until(
            serving,
            message=f"msgbusd in the namespace to serve on {self.endpoint}",
            timeout=DEFAULT_STARTUP_TIMEOUT,
            interval=0.1,
        )
        return self

    def stub(self) -> rpc.MsgbusServiceStub:
        """A blocking stub on a new channel across the link, closed by `stop`."""
        channel = grpc.insecure_channel(self.endpoint)
        self._channels.append(channel)
        return rpc.MsgbusServiceStub(channel)

    def stderr_text(self) -> str:
        """What the daemon logged so far."""
        try:
            return self._stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; close the channels and files."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for handle in self._files:
            handle.close()
        self._files.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the delay and cut proxy ------------------------------------------------------------------

_CHUNK = 64 * 1024
_QUEUED_CHUNKS = 64
"""Chunks one direction holds while they wait out the delay: reading stops beyond it, so a
fast sender is held back by TCP, not by this process's memory."""
_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: closing sends a RST, as a broken path does, not a FIN."""


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    forwarded: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        for writer in (self.client, self.upstream):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class DelayCutProxy:
    """A TCP proxy on a free loopback port to `target` that delays and cuts, on its own loop.

    Every chunk read from either side is written to the other `delay_s` later, in order (the
    forwarding is delayed, not the reading, so the delay adds to latency and not to the
    transfer time). `cut()` resets every open connection; with `cut_every_bytes`, each
    connection is reset once it has forwarded that many bytes (both directions together).
    """

    def __init__(
        self, target: str, *, delay_s: float = 0.15, cut_every_bytes: int | None = None
    ) -> None:
        """A proxy (not started yet: use it as a context manager) to `target` (`host:port`)."""
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._delay_s = delay_s
        self._cut_every = cut_every_bytes
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.port = 0
        self.accepted = 0
        """Connections accepted so far."""
        self.cuts = 0
        """Connections reset so far, on demand or by `cut_every_bytes`."""
        self.forwarded = 0
        """Bytes forwarded towards the clients (from `target`), over all connections."""

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT`: where clients connect instead of `target`."""
        return f"127.0.0.1:{self.port}"

    def cut(self) -> int:
        """Reset every open connection now; return how many there were."""
        return self._run(self._cut_all())

    async def _cut_all(self) -> int:
        connections = list(self._open)
        for connection in connections:
            self._reset(connection)
        return len(connections)

    def _reset(self, connection: _Connection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            self.cuts += 1
            connection.reset()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def _start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        connection = _Connection(writer, up_writer)
        self._open.add(connection)
        connection.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, connection, towards_client=False)),
            asyncio.create_task(self._pipe(up_reader, writer, connection, towards_client=True)),
        ]
        await asyncio.gather(*connection.tasks, return_exceptions=True)
        if connection in self._open:
            # Both directions ended (each side closed its end, and that reached the other).
            self._open.discard(connection)
            for side in (writer, up_writer):
                side.close()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
        *,
        towards_client: bool,
    ) -> None:
        """Forward one direction, each chunk `delay_s` after it was read; an end of stream
        is forwarded the same way (a half close), a broken side resets both."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUED_CHUNKS)
        sender = asyncio.create_task(self._send_delayed(queue, writer, connection))
        try:
            while chunk := await reader.read(_CHUNK):
                await queue.put((self._loop.time() + self._delay_s, chunk))
                connection.forwarded += len(chunk)
                if towards_client:
                    self.forwarded += len(chunk)
                if self._cut_every is not None and connection.forwarded >= self._cut_every:
                    self._reset(connection)
                    return
            await queue.put(None)
            await sender
        except OSError:
            self._reset(connection)
        finally:
            sender.cancel()

    async def _send_delayed(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        connection: _Connection,
    ) -> None:
        try:
            while (item := await queue.get()) is not None:
                due, chunk = item
                await asyncio.sleep(max(0.0, due - self._loop.time()))
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            self._reset(connection)

    def __enter__(self) -> Self:
        self._thread.start()
        self.port = self._run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            await self._cut_all()
            if self._handlers:
                await asyncio.wait(self._handlers, timeout=5)
            if self._server is not None:
                await self._server.wait_closed()

        with contextlib.suppress(Exception):
            self._run(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


__all__ = [
    "DelayCutProxy",
    "NamespacedDaemon",
    "TokenBucket",
    "VethLink",
    "namespaces_unavailable",
    "require_namespaces",
    "veth_namespace",
]
