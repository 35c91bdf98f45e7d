"""Server TLS: certificates from PEM files, and mTLS when a client CA is given.

The gRPC server takes them as credentials (`server_credentials`), the metrics and status
listener as an `ssl` context (`server_ssl_context`).
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from msgbus_server.config import ConfigError, ServerTls

if TYPE_CHECKING:
    import grpc


def read_pem(path: str, flag: str) -> bytes:
    """Read a PEM file; a missing, unreadable or non-PEM file is a `ConfigError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{flag}: cannot read {path}: {error.strerror or error}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{flag}: {path} is not a PEM file")
    return data


def load_server_tls(cert: str | None, key: str | None, client_ca: str | None) -> ServerTls | None:
    """Build the server TLS settings from the --tls-* flags (None: plaintext)."""
    if bool(cert) != bool(key):
        raise ConfigError("server TLS cert and key must be configured together")
    if client_ca and not cert:
        raise ConfigError("MSGBUS_TLS_CLIENT_CA requires MSGBUS_TLS_CERT and MSGBUS_TLS_KEY")
    if not cert or not key:
        return None
    return ServerTls(
        cert_chain=read_pem(cert, "--tls-cert"),
        private_key=read_pem(key, "--tls-key"),
        client_ca=read_pem(client_ca, "--tls-client-ca") if client_ca else None,
    )


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """The server credentials; with a client CA, a client certificate is required (mTLS)."""
    import grpc

    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )


def server_ssl_context(tls: ServerTls) -> ssl.SSLContext:
    """An `ssl` server context with the same certificate (and client CA) as the gRPC server.

    For the metrics and status listener, so that it follows the main listener's TLS and mTLS.
    The PEM material is handed to OpenSSL through anonymous memory files: `ssl` loads a
    certificate chain only from a path, and the key must not be written to disk for it.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with _memory_file(tls.cert_chain) as cert, _memory_file(tls.private_key) as key:
        context.load_cert_chain(cert, key)
    if tls.client_ca is not None:
        context.load_verify_locations(cadata=tls.client_ca.decode("ascii", errors="replace"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to a file in memory holding `data` (Linux `memfd_create`), closed on exit."""
    fd = os.memfd_create("msgbus-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
