"""Where msgbusd listens: TCP addresses, and Unix domain sockets for local applications.

`--listen` is repeatable: `IP:port` as before, or `unix:PATH` / `unix:///absolute/path`.

gRPC serves TCP itself. It cannot serve the Unix socket itself, because it never tells a
handler who is at the other end of a Unix connection (no `SO_PEERCRED`), and the uid is what
the policy matches. So msgbusd accepts on the socket itself: it reads the caller's pid, uid and
gid from the kernel, then relays the connection's bytes to gRPC over an internal abstract
socket, from a client address it names at random for that one connection. gRPC reports that
address as the call's peer, and `UnixSockets.lookup` maps it back to the credentials. A
connection to the internal socket that did not come through the relay has an unknown peer
address, and the authorization layer refuses every call on it.

The socket file is created with `--socket-mode` (default 0660) and, with `--socket-group`,
that group, before it accepts connections: a socket that is bound but not listening refuses
connections, so nobody connects while the mode is still the umask's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import ipaddress
import logging
import os
import secrets
import socket
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import grpc

from msgbus_server.config import ConfigError, ServerTls
from msgbus_server.identity import UnixCredentials
from msgbus_server.tls import server_credentials

logger = logging.getLogger("msgbus_server.listeners")

UNIX_PREFIX: Final = "unix:"
DEFAULT_SOCKET_MODE: Final = 0o660
MAX_UNIX_PATH_BYTES: Final = 107
"""sun_path holds 108 bytes, the last one a NUL."""
_PEERCRED: Final = struct.Struct("3i")
_RELAY_PEER: Final = "unix-abstract:"
"""How gRPC names a peer whose address is in the abstract namespace."""
_BACKLOG: Final = 512


@dataclass(frozen=True, slots=True)
class TcpListener:
    """An `IP:port` listener; gRPC serves it (with TLS when configured)."""

    host: str
    port: int

    @property
    def address(self) -> str:
        """`host:port` as gRPC binds it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """True for 127.0.0.0/8 and ::1: only this machine can connect."""
        return ipaddress.ip_address(self.host).is_loopback

    @property
    def is_wildcard(self) -> bool:
        """True for 0.0.0.0 and ::, which serve every address of their family."""
        return ipaddress.ip_address(self.host).is_unspecified

    def covers(self, other: TcpListener) -> bool:
        """True when binding this serves `other` already (0.0.0.0:P serves 127.0.0.1:P)."""
        if self == other:
            return True
        same_family = (":" in self.host) == (":" in other.host)
        return self.is_wildcard and same_family and self.port == other.port and self.port != 0


@dataclass(frozen=True, slots=True)
class UnixListener:
    """A Unix socket at `path`, created with `mode` and, unless None, group `gid`."""

    path: str
    mode: int = DEFAULT_SOCKET_MODE
    gid: int | None = None

    @property
    def address(self) -> str:
        """`unix:PATH`, the form gRPC clients (and the SDK) dial."""
        return f"{UNIX_PREFIX}{self.path}"


Listener = TcpListener | UnixListener


def parse_unix_listener(value: str, mode: int, gid: int | None) -> UnixListener:
    """Parse `unix:PATH` or `unix:///absolute/path` (relative paths resolve against the cwd).

    Raises `ConfigError` naming --listen for an empty or too long path.
    """
    rest = value[len(UNIX_PREFIX) :]
    if rest.startswith("//"):
        rest = rest[2:]
        if not rest.startswith("/"):
            raise ConfigError(
                f"--listen: {value!r}: unix:// takes an absolute path (unix:///run/msgbus/"
                "msgbusd.sock); write unix:relative/path for a relative one"
            )
    if not rest:
        raise ConfigError(f"--listen: {value!r} names no socket path")
    path = os.path.abspath(rest)
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        raise ConfigError(
            f"--listen: the socket path {path!r} is {len(os.fsencode(path))} bytes; a Unix "
            f"socket path holds at most {MAX_UNIX_PATH_BYTES}"
        )
    return UnixListener(path, mode, gid)


def parse_socket_mode(text: str) -> int:
    """`--socket-mode`: octal permission bits such as 0660; `ConfigError` otherwise."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise ConfigError(
            f"--socket-mode: expected octal bits such as 0660, got {text!r}"
        ) from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"--socket-mode: expected 0000 to 0777, got {text!r}")
    return mode


def parse_socket_group(text: str) -> int:
    """`--socket-group`: a group name or number, as a gid; `ConfigError` for an unknown one."""
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ConfigError(f"--socket-group: there is no group named {text!r}") from None


def without_covered(listeners: Sequence[Listener]) -> tuple[Listener, ...]:
    """`listeners` without those another one already serves, in order.

    `--listen 127.0.0.1:P --listen 0.0.0.0:P` is one listener on every IPv4 address: gRPC
    could not bind both, and the wildcard serves the loopback address anyway.
    """
    kept: list[Listener] = []
    for index, listener in enumerate(listeners):
        if isinstance(listener, UnixListener):
            if any(isinstance(k, UnixListener) and k.path == listener.path for k in kept):
                raise ConfigError(f"--listen: {listener.address} is given twice")
            kept.append(listener)
            continue
        others = [o for i, o in enumerate(listeners) if i != index and isinstance(o, TcpListener)]
        covered = any(o.covers(listener) and o != listener for o in others)
        if not covered and listener not in kept:
            kept.append(listener)
    return tuple(kept)


def exposed_listeners(listeners: Sequence[Listener]) -> list[TcpListener]:
    """The listeners other hosts can reach: TCP on an address that is not loopback.

    Without a policy, msgbusd serves these only with `--allow-anyone` (and in plaintext only
    with `--allow-insecure`); loopback and Unix sockets are this machine's alone.
    """
    return [x for x in listeners if isinstance(x, TcpListener) and not x.is_loopback]


def add_tcp_ports(
    server: grpc.aio.Server, listeners: Sequence[Listener], tls: ServerTls | None
) -> list[str]:
    """Bind every TCP listener on `server`; return each as `host:port`, with the bound port."""
    bound = []
    for listener in listeners:
        if not isinstance(listener, TcpListener):
            continue
        try:
            if tls is not None:
                port = server.add_secure_port(listener.address, server_credentials(tls))
            else:
                port = server.add_insecure_port(listener.address)
        except RuntimeError:
            raise ConfigError(
                f"cannot listen on {listener.address}: address in use or not available"
            ) from None
        bound.append(TcpListener(listener.host, port).address)
    return bound


def check_unix_listener(listener: UnixListener) -> None:
    """Check that the socket can be created: its directory exists and nobody serves the path.

    A socket file left by a daemon that died is stale (connecting is refused) and will be
    replaced. Raises `ConfigError`: msgbusd checks this before it opens the store.
    """
    path = listener.path
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigError(f"cannot listen on {listener.address}: no directory {directory}")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise ConfigError(
            f"cannot listen on {listener.address}: {error.strerror or error}"
        ) from None
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"cannot listen on {listener.address}: {path} exists and is not a socket")
    if _is_served(path):
        raise ConfigError(f"cannot listen on {listener.address}: address in use")


def _is_served(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as error:
            if error.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            raise ConfigError(f"cannot listen on unix:{path}: {error.strerror or error}") from None
        return True


class _Side(asyncio.Protocol):
    """One socket of a relayed connection: what it reads is written to the other side."""

    def __init__(self, connection: _Relayed) -> None:
        self.connection = connection
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self._backlog: list[bytes] = []
        """Bytes for this side that arrived before its transport existed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        for chunk in self._backlog:
            transport.write(chunk)
        self._backlog.clear()
        if self is self.connection.client:
            self.connection.accepted(transport)

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self._backlog.append(data)
        else:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        assert self.other is not None
        self.other.write(data)

    def eof_received(self) -> bool:
        other = self.other
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()
        return True  # the other direction may still be talking

    # Flow control: while this side cannot write as fast as the other reads, stop reading
    # there, so a client that does not read holds no more than the transports' buffers, and
    # gRPC's own flow control does the rest.
    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.close()


class _Relayed:
    """One client connection on the Unix socket and its connection to gRPC."""

    def __init__(self, sockets: UnixSockets) -> None:
        self.sockets = sockets
        self.name = f"msgbusd-peer-{secrets.token_hex(16)}"
        """The abstract address of the upstream side, random so nobody else can take it."""
        self.peer = f"{_RELAY_PEER}{self.name}"
        """How gRPC names the upstream side: the key of the credentials."""
        self.client = _Side(self)
        self.upstream = _Side(self)
        self.client.other, self.upstream.other = self.upstream, self.client
        self.closed = False
        self._connecting: asyncio.Task[None] | None = None

    def accepted(self, client: asyncio.Transport) -> None:
        """Read who connected, then connect to gRPC (the client is not read meanwhile)."""
        client.pause_reading()
        sock = client.get_extra_info("socket")
        try:
            pid, uid, gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except OSError as error:
            logger.warning("unix socket: cannot read the caller's credentials: %s", error)
            self.close()
            return
        self.sockets.remember(self, UnixCredentials(pid, uid, gid))
        self._connecting = asyncio.get_running_loop().create_task(
            self._connect(client), name="unix-relay"
        )

    async def _connect(self, client: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.setblocking(False)
        try:
            upstream.bind(f"\0{self.name}")
            await loop.sock_connect(upstream, f"\0{self.sockets.internal}")
            await loop.create_unix_connection(lambda: self.upstream, sock=upstream)
        except OSError as error:
            logger.warning("unix socket: cannot reach the gRPC server: %s", error)
            upstream.close()
            self.close()
            return
        except asyncio.CancelledError:
            upstream.close()  # the client went away first
            raise
        if not self.closed:
            client.resume_reading()

    def close(self) -> None:
        """Close both sides: either one ending ends the connection."""
        if self.closed:
            return
        self.closed = True
        # Forget the address first: once the socket is closed another one could take it.
        self.sockets.forget(self)
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.close()


class UnixSockets:
    """Every Unix socket listener of a daemon, the relay behind them, and who is calling."""

    def __init__(self, listeners: Sequence[Listener]) -> None:
        self.listeners = [listener for listener in listeners if isinstance(listener, UnixListener)]
        self.internal = f"msgbusd-{os.getpid()}-{secrets.token_hex(8)}"
        """The abstract name gRPC listens on for relayed connections."""
        self._peers: dict[str, UnixCredentials] = {}
        self._connections: set[_Relayed] = set()
        self._servers: list[asyncio.Server] = []
        self._bound: list[tuple[str, int]] = []
        """(path, inode) of each socket file created, to remove it (and only it) at the end."""

    def lookup(self, peer: str) -> UnixCredentials | None:
        """The credentials of the relayed connection gRPC names `peer`; None when unknown."""
        return self._peers.get(peer)

    def add_internal_port(self, server: grpc.aio.Server) -> None:
        """Have gRPC listen on the internal socket the relay connects to (when there is one)."""
        if self.listeners:
            server.add_insecure_port(f"unix-abstract:{self.internal}")

    async def start(self) -> list[str]:
        """Create and serve every socket; return their addresses. `ConfigError` on failure."""
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            sock = self._bind(listener)
            server = await loop.create_unix_server(lambda: _Relayed(self).client, sock=sock)
            self._servers.append(server)
        return [listener.address for listener in self.listeners]

    def _bind(self, listener: UnixListener) -> socket.socket:
        check_unix_listener(listener)
        path = listener.path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: check_unix_listener found nobody serving it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            # Not listening yet, so every connect is refused until mode and group are set.
            os.chmod(path, listener.mode)
            if listener.gid is not None:
                os.chown(path, -1, listener.gid)
            self._bound.append((path, os.stat(path).st_ino))
            sock.listen(_BACKLOG)
        except OSError as error:
            sock.close()
            raise ConfigError(
                f"cannot listen on {listener.address}: {error.strerror or error}"
            ) from None
        sock.setblocking(False)
        return sock

    def remember(self, connection: _Relayed, credentials: UnixCredentials) -> None:
        """Record who is behind `connection`, before gRPC can see a call on it."""
        self._peers[connection.peer] = credentials
        self._connections.add(connection)

    def forget(self, connection: _Relayed) -> None:
        """Drop a closed connection."""
        self._peers.pop(connection.peer, None)
        self._connections.discard(connection)

    async def stop(self) -> None:
        """Stop accepting and remove the socket files; relayed connections end with gRPC's."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        for path, inode in self._bound:
            # Only our own file: another daemon may have taken the path over meanwhile.
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
        self._bound.clear()

    def close_all(self) -> None:
        """End every relayed connection (after gRPC stopped)."""
        for connection in list(self._connections):
            connection.close()
