"""Who is calling: the caller's identity, as the authorization policy matches it.

A caller has any of three credentials, and the policy may match each of them:

- the identity in its mTLS client certificate: a SAN URI `msgbus://tenant/bl/device` by
  default (`certificate-identity = "uri"`), or the certificate's common name
  `tenant/bl/device` (`"common-name"`); the same mapping serves peers;
- the uid and gid of the calling process, on msgbusd's Unix socket (`SO_PEERCRED`, read when
  the connection is accepted: see `listeners`);
- a bearer token, sent as gRPC metadata `authorization: Bearer NAME.SECRET` and checked against
  the token file (`tokens`).

A caller with none of them is anonymous.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from msgbus_core.errors import MsgbusError
from msgbus_core.model import NodeId

CERTIFICATE_IDENTITIES: Final = ("uri", "common-name")
"""How a client certificate names its caller: a `msgbus://` SAN URI, or its common name."""
URI_SCHEME: Final = "msgbus"
AUTHORIZATION_KEY: Final = "authorization"
"""The metadata key of a bearer token (gRPC metadata keys are lowercase)."""
_BEARER: Final = "bearer "


@dataclass(frozen=True, slots=True)
class UnixCredentials:
    """The process at the other end of a Unix socket connection, as the kernel reports it."""

    pid: int
    uid: int
    gid: int
    """The process's primary group: `SO_PEERCRED` reports no supplementary groups."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The credentials a call came with; any of them may be absent."""

    node: NodeId | None = None
    """The identity of the client certificate."""
    unix: UnixCredentials | None = None
    """The calling process, on the Unix socket."""
    token: str | None = None
    """The name of a valid bearer token."""

    @property
    def tenant(self) -> str | None:
        """The tenant of the certificate identity: what tenant isolation keeps the caller in."""
        return self.node.tenant_id if self.node is not None else None

    @property
    def is_anonymous(self) -> bool:
        """True for a caller with no credential at all."""
        return self.node is None and self.unix is None and self.token is None

    @property
    def principal(self) -> str:
        """The caller in one word, for denials and audit lines; its strongest credential."""
        if self.token is not None:
            return f"token:{self.token}"
        if self.node is not None:
            return self.node.key
        if self.unix is not None:
            return f"uid:{self.unix.uid}"
        return "anonymous"

    def fields(self) -> dict[str, str | int]:
        """Every credential, for structured (JSON) audit lines."""
        found: dict[str, str | int] = {"caller": self.principal}
        if self.node is not None:
            found["identity"] = self.node.key
        if self.unix is not None:
            found.update(uid=self.unix.uid, gid=self.unix.gid, pid=self.unix.pid)
        if self.token is not None:
            found["token"] = self.token
        return found


ANONYMOUS: Final = Caller()


def node_from_uri(uri: str) -> NodeId | None:
    """The NodeId of a `msgbus://tenant/bl/device` URI (parts percent-decoded); None otherwise."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != URI_SCHEME or parts.query or parts.fragment:
        return None
    return _node_from_key(f"{parts.netloc}{parts.path}")


def _node_from_key(key: str) -> NodeId | None:
    pieces = key.split("/")
    if len(pieces) != 3:
        return None
    try:
        return NodeId.from_key("/".join(urllib.parse.unquote(piece) for piece in pieces))
    except MsgbusError:
        return None


def certificate_node(auth_context: Mapping[str, Iterable[bytes]], source: str) -> NodeId | None:
    """The identity a verified client certificate names, or None.

    `auth_context` is gRPC's (`ServicerContext.auth_context()`): with mTLS it lists the
    certificate's URI SANs under `peer_uri` and its common name under `x509_common_name`.
    A certificate that names no identity, or several different ones, names none.
    """
    if source == "common-name":
        names = [
            value.decode("utf-8", "replace") for value in auth_context.get("x509_common_name", ())
        ]
        found = {node for node in map(_node_from_key, names) if node is not None}
    else:
        uris = [value.decode("utf-8", "replace") for value in auth_context.get("peer_uri", ())]
        found = {node for node in map(node_from_uri, uris) if node is not None}
    return found.pop() if len(found) == 1 else None


class MalformedToken(ValueError):
    """An `authorization` header that is not `Bearer TOKEN`."""


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The bearer token in a call's metadata, or None when it sends none.

    Raises `MalformedToken` for an `authorization` value that is not `Bearer TOKEN`, or for
    more than one.
    """
    found: list[str] = []
    for key, value in metadata:
        if key != AUTHORIZATION_KEY:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if not text.lower().startswith(_BEARER) or not text[len(_BEARER) :].strip():
            raise MalformedToken("the authorization metadata must be 'Bearer TOKEN'")
        found.append(text[len(_BEARER) :].strip())
    if len(found) > 1:
        raise MalformedToken("the call carries more than one authorization metadata entry")
    return found[0] if found else None
