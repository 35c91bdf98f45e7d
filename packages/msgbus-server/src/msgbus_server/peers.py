"""Peer configuration: the `--peer` spec and the peer client's TLS settings.

A peer is another msgbusd this daemon pulls from. `--peer` takes `endpoint` or
`endpoint=tenant/bl/device`; the second form pins the identity the peer must report in Health.
Everything here is checked at startup, so a typo is a clear startup error instead of a sync
failure that only shows up in the logs later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc
from grpc import aio

from msgbus_core import MsgbusError, NodeId
from msgbus_server.peer_certificates import PinnedTunnel, TunnelledChannel, client_context
from msgbus_server.topic_filter import EVERY_TOPIC, TopicFilter, parse_topic_globs

__all__ = [
    "PeerSpec",
    "PeerTlsConfig",
    "open_peer_channel",
    "parse_peer_spec",
    "peer_target",
]

# host:port, where host is a name, an IPv4 address or a bracketed IPv6 address. No path, no
# user info: a peer endpoint names a gRPC server, nothing else.
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})$")
_SCHEMES = ("http://", "https://")


@dataclass(frozen=True)
class PeerSpec:
    """One `--peer` value: where the peer listens and, optionally, who it must be.

    `endpoint` is `host:port`, `http://host:port` or `https://host:port`. It is also the `peer`
    key of the sync state records. `pinned` is the identity the peer's Health must report; with
    None any identity but the local node's is accepted (a warning says so at startup).
    `push_topics` and `pull_topics` are the logs exchanged with it (`topic_filter`): from
    `;push=GLOBS` and `;pull=GLOBS` after the spec, else `--push-topics` / `--pull-topics`.
    """

    endpoint: str
    pinned: NodeId | None
    push_topics: TopicFilter = EVERY_TOPIC
    pull_topics: TopicFilter = EVERY_TOPIC


def _validate_endpoint(endpoint: str) -> None:
    rest = endpoint
    for scheme in _SCHEMES:
        if rest.startswith(scheme):
            rest = rest[len(scheme) :]
            break
    else:
        if "://" in rest:
            raise ValueError(
                f"peer endpoint {endpoint!r} has an unsupported scheme; "
                "use host:port, http://host:port or https://host:port"
            )
    # A trailing slash is harmless and common in URLs copied from a browser.
    rest = rest.removesuffix("/")
    match = _HOST_PORT.match(rest)
    if match is None:
        raise ValueError(
            f"peer endpoint {endpoint!r} is not of the form host:port, "
            "http://host:port or https://host:port"
        )
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"peer endpoint {endpoint!r} has port {port}; ports are 1-65535")


_TOPIC_OPTIONS = ("push", "pull")
"""The options a spec may carry after `;`: `push=GLOBS` and `pull=GLOBS`."""


def parse_peer_spec(
    value: str, *, push: TopicFilter = EVERY_TOPIC, pull: TopicFilter = EVERY_TOPIC
) -> PeerSpec:
    """Parse `endpoint[=tenant/bl/device][;push=GLOBS][;pull=GLOBS]`; `ValueError` if malformed.

    The split of the identity is on the last `=` before the first `;`, as in the original.
    Surrounding whitespace is trimmed from every part (a comma-separated `MSGBUS_PEERS` often
    has spaces after the commas). The globs of one option are separated by `|`, since commas
    separate specs. `push` and `pull` are the filters of a spec that names none.
    """
    if not value.strip():
        raise ValueError("peer is empty")
    value, *options = value.split(";")
    for option in options:
        name, sep, globs = option.partition("=")
        name = name.strip()
        if not sep or name not in _TOPIC_OPTIONS:
            raise ValueError(
                f"peer option {option.strip()!r} is not push=GLOBS or pull=GLOBS "
                f"(in {value.strip()!r})"
            )
        parsed = parse_topic_globs(globs.replace("|", ","), f"{name}=")
        if name == "push":
            push = parsed
        else:
            pull = parsed
    if not value.strip():
        raise ValueError("peer is empty")
    endpoint, sep, key = value.rpartition("=")
    if not sep:
        endpoint, key = value, ""
    endpoint = endpoint.strip()
    if not endpoint:
        raise ValueError(f"peer endpoint is empty in {value!r}")
    _validate_endpoint(endpoint)
    pinned: NodeId | None = None
    if sep:
        key = key.strip()
        if not key:
            raise ValueError(
                f"peer {value!r} has '=' but no node key; use endpoint=tenant/bl/device"
            )
        try:
            pinned = NodeId.from_key(key, "peer node")
        except MsgbusError as error:
            raise ValueError(f"invalid peer {value!r}: {error}") from None
    return PeerSpec(endpoint=endpoint, pinned=pinned, push_topics=push, pull_topics=pull)


def peer_target(endpoint: str) -> tuple[str, bool]:
    """The gRPC target for an endpoint, and whether its scheme asks for TLS (`https://`)."""
    if endpoint.startswith("https://"):
        return endpoint[len("https://") :].removesuffix("/"), True
    if endpoint.startswith("http://"):
        return endpoint[len("http://") :].removesuffix("/"), False
    return endpoint.removesuffix("/"), False


def _read_pem(what: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise ValueError(f"cannot read {what} {path!r}: {error.strerror or error}") from None


@dataclass(frozen=True)
class PeerTlsConfig:
    """TLS for the peer client, one setting for all peers (as in the original).

    `ca_path` adds a CA (PEM) to trust instead of the system roots; `cert_path` and `key_path`
    are the client identity for mTLS and come together; `domain` overrides the name the peer's
    certificate is checked against (for peers reached by IP address).
    """

    ca_path: str | None
    cert_path: str | None
    key_path: str | None
    domain: str | None
    certificate_identity: str = "uri"
    """How a pinned peer's server certificate names its node (`identity.certificate_node`):
    the policy's `certificate-identity`, "uri" without a policy."""

    @classmethod
    def from_paths(
        cls, ca: str | None, cert: str | None, key: str | None, domain: str | None
    ) -> PeerTlsConfig | None:
        """Build and check the configuration; None when no option is set.

        Raises `ValueError` when only one of cert and key is given, or when a file cannot be
        read, naming the file.
        """
        ca, cert, key, domain = (v if v and v.strip() else None for v in (ca, cert, key, domain))
        if ca is None and cert is None and key is None and domain is None:
            return None
        if (cert is None) != (key is None):
            raise ValueError("peer TLS cert and key must be configured together")
        config = cls(ca_path=ca, cert_path=cert, key_path=key, domain=domain)
        config.credentials()  # reads every file, so an unreadable one fails at startup
        return config

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files, read now."""
        root = _read_pem("peer TLS CA file", self.ca_path) if self.ca_path else None
        cert = _read_pem("peer TLS cert file", self.cert_path) if self.cert_path else None
        key = _read_pem("peer TLS key file", self.key_path) if self.key_path else None
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=cert
        )


def open_peer_channel(
    endpoint: str,
    tls: PeerTlsConfig | None,
    options: list[tuple[str, str | int]] | None = None,
    *,
    pinned: NodeId | None = None,
) -> aio.Channel:
    """Open the one long-lived channel to a peer.

    TLS is used when a `PeerTlsConfig` is given (for every peer, as in the original) or when the
    endpoint says `https://` (then with the system roots). The channel connects lazily and
    reconnects by itself, so it is created once and kept. Over TLS, a `pinned` peer's every
    connection must present a certificate naming that node (`peer_certificates`); call this
    from the event loop then, which serves the tunnel.
    """
    target, wants_tls = peer_target(endpoint)
    opts = list(options or [])
    if pinned is not None and (tls is not None or wants_tls):
        tunnel = PinnedTunnel(
            target=target,
            pinned=pinned,
            context=client_context(
                *((tls.ca_path, tls.cert_path, tls.key_path) if tls else (None, None, None))
            ),
            server_name=tls.domain if tls is not None else None,
            certificate_identity=tls.certificate_identity if tls is not None else "uri",
        )
        return TunnelledChannel(tunnel, opts)
    if tls is not None and tls.domain:
        opts.append(("grpc.ssl_target_name_override", tls.domain))
    if tls is not None:
        return aio.secure_channel(target, tls.credentials(), options=opts)
    if wants_tls:
        return aio.secure_channel(target, grpc.ssl_channel_credentials(), options=opts)
    return aio.insecure_channel(target, options=opts)
