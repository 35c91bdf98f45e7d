"""A pinned peer's server certificate must name the pinned identity.

`--peer URL=tenant/bl/device` and `--upstream URL=tenant/bl/device` pin who the other daemon
must be. Over TLS that is decided by its server certificate, read with the rule that names
callers (`identity.certificate_node`: the `msgbus://tenant/bl/device` SAN URI by default, or the
common name with the policy's `certificate-identity = "common-name"`), not by what its Health
reports.

gRPC Python verifies a server certificate against the CA and the host name but never shows it
to the client, so it cannot tell which node a certificate names. Checking the certificate on a
second connection made beside gRPC's would prove nothing about the connection gRPC then uses (a
certificate holder on the path could let the check through to the real peer and answer gRPC
itself). So for a pinned peer over TLS the TLS session is made here, with Python's `ssl`:
`PinnedTunnel` listens on a private abstract Unix socket, the peer's gRPC channel connects to it
in plaintext, and for each connection gRPC opens the tunnel dials the peer over TLS (the same CA,
client certificate and `--peer-tls-domain` name check as gRPC's own TLS, ALPN `h2`), reads the
certificate the peer presented on THAT session, and relays gRPC's bytes only when it names the
pinned identity. A session whose certificate names another node (or none) is closed before one
byte of gRPC crosses it: nothing is asked, nothing is replicated, and the refusal is what the
failed call records in sync state (`PinnedTunnel.refusal`) and logs.

Plaintext peers have no certificate: their pin is still checked against Health (`sync_peer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Final

from grpc import aio

from msgbus_core.model import NodeId
from msgbus_server.identity import URI_SCHEME, certificate_node

__all__ = ["PinnedTunnel", "TunnelledChannel", "certificate_refusal", "named_node"]

log = logging.getLogger("msgbus_server.sync")

CONNECT_TIMEOUT_S: Final = 10.0
"""How long the TCP connect and the TLS handshake to the peer may take together."""
CHUNK_BYTES: Final = 64 * 1024
"""The most bytes relayed at once in each direction; `drain` holds the next read until the
other side took them, so a connection buffers at most this plus the transports' own buffers."""
_BACKLOG: Final = 16


def _auth_context(certificate: Mapping[str, Any]) -> dict[str, list[bytes]]:
    """What gRPC's auth context would hold for `certificate` (an `ssl` `getpeercert()` dict)."""
    uris = [value for kind, value in certificate.get("subjectAltName", ()) if kind == "URI"]
    names = [
        value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    return {
        "peer_uri": [uri.encode() for uri in uris],
        "x509_common_name": [name.encode() for name in names],
    }


def named_node(certificate: Mapping[str, Any], source: str) -> NodeId | None:
    """The identity a verified certificate names (`identity.certificate_node`'s rule), or None."""
    return certificate_node(_auth_context(certificate), source)


def _named(certificate: Mapping[str, Any], source: str) -> str:
    """What a certificate names, for a refusal: its msgbus URIs or common names, or 'nothing'."""
    found = _auth_context(certificate)["peer_uri" if source == "uri" else "x509_common_name"]
    shown = [value.decode() for value in found]
    if source == "uri":
        shown = [value for value in shown if value.startswith(f"{URI_SCHEME}://")]
    return ", ".join(shown) if shown else "no identity"


def _split_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


class PinnedTunnel:
    """Carries one peer channel's connections inside TLS sessions checked against the pin."""

    def __init__(
        self,
        *,
        target: str,
        pinned: NodeId,
        context: ssl.SSLContext,
        server_name: str | None,
        certificate_identity: str,
    ) -> None:
        self.host, self.port = _split_target(target)
        self.pinned = pinned
        self._context = context
        self._server_name = server_name or self.host
        self._source = certificate_identity
        self.name = f"msgbusd-pinned-{secrets.token_hex(12)}"
        """The abstract socket gRPC connects to, random so no other process guesses it."""
        self.refusal: str | None = None
        """Why the last TLS session to the peer was refused; None after one was accepted."""
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(f"\0{self.name}")
        self._listener.listen(_BACKLOG)
        self._listener.setblocking(False)
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self._starting = asyncio.get_running_loop().create_task(self._serve())

    @property
    def target(self) -> str:
        """The gRPC target of the tunnel."""
        return f"unix-abstract:{self.name}"

    async def _serve(self) -> None:
        self._server = await asyncio.start_unix_server(self._accepted, sock=self._listener)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        try:
            peer = await self._open_checked()
            if peer is not None:
                await _relay(reader, writer, *peer)
        finally:
            self._relays.discard(task)
            writer.close()

    async def _open_checked(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A TLS session to the peer whose certificate names the pinned node, or None."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host, self.port, ssl=self._context, server_hostname=self._server_name
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError, ssl.SSLError) as error:
            # Not an identity problem: gRPC reports the failed connection itself.
            log.debug("pinned peer %s:%d: cannot connect: %s", self.host, self.port, error)
            self.refusal = None
            return None
        certificate = writer.get_extra_info("peercert") or {}
        named = named_node(certificate, self._source)
        if named == self.pinned:
            self.refusal = None
            return reader, writer
        refusal = (
            f"refused: its TLS certificate names {_named(certificate, self._source)}, "
            f"not the pinned identity {self.pinned.key}; nothing was sent or replicated"
        )
        if refusal != self.refusal:
            log.warning("pinned peer %s:%d: %s", self.host, self.port, refusal)
        self.refusal = refusal
        writer.close()
        return None

    async def close(self) -> None:
        """Stop listening and end every relayed connection."""
        self._starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._starting
        if self._server is not None:
            self._server.close()
        self._listener.close()
        relays = list(self._relays)
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK_BYTES):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _relay(
    local_reader: asyncio.StreamReader,
    local_writer: asyncio.StreamWriter,
    peer_reader: asyncio.StreamReader,
    peer_writer: asyncio.StreamWriter,
) -> None:
    """Relay both ways until either side ends or fails; then close both."""
    pumps = [
        asyncio.ensure_future(_pump(local_reader, peer_writer)),
        asyncio.ensure_future(_pump(peer_reader, local_writer)),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        # One direction ended cleanly: the other may still be talking (HTTP/2 goaway).
        await asyncio.gather(*pumps, return_exceptions=True)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        peer_writer.close()
        local_writer.close()


def client_context(
    ca_path: str | None, cert_path: str | None, key_path: str | None
) -> ssl.SSLContext:
    """An `ssl` client context like gRPC's own TLS for peers.

    The CA (else the system roots), the client certificate when given, the host name
    checked, HTTP/2 offered by ALPN as gRPC servers expect.
    """
    context = ssl.create_default_context(cafile=ca_path)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_path is not None and key_path is not None:
        context.load_cert_chain(cert_path, key_path)
    context.set_alpn_protocols(["h2"])
    return context


class TunnelledChannel(aio.Channel):
    """A gRPC channel whose connections go through a `PinnedTunnel`; closing it closes both."""

    def __init__(self, tunnel: PinnedTunnel, options: Sequence[tuple[str, str | int]]) -> None:
        self.tunnel = tunnel
        opts = [*options, ("grpc.default_authority", f"{tunnel.host}:{tunnel.port}")]
        self._inner = aio.insecure_channel(tunnel.target, options=opts)

    async def __aenter__(self) -> TunnelledChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Close the gRPC channel, then the tunnel."""
        try:
            await self._inner.close(grace)
        finally:
            await self.tunnel.close()

    def get_state(self, try_to_connect: bool = False) -> Any:
        """The inner channel's connectivity."""
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: Any) -> None:
        """Wait for the inner channel's connectivity to change."""
        await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        """Wait until the inner channel is ready."""
        await self._inner.channel_ready()

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        """A unary-unary call on the inner channel."""
        return self._inner.unary_unary(*args, **kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        """A unary-stream call on the inner channel."""
        return self._inner.unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        """A stream-unary call on the inner channel."""
        return self._inner.stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        """A stream-stream call on the inner channel."""
        return self._inner.stream_stream(*args, **kwargs)


def certificate_refusal(channel: aio.Channel) -> str | None:
    """Why a pinned peer's last TLS session was refused over its certificate, if it was."""
    return channel.tunnel.refusal if isinstance(channel, TunnelledChannel) else None
