"""TLS and mTLS options for the connection to a daemon."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from ._errors import ConfigurationError

__all__ = ["TlsConfig"]

_PathLike = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """How to secure the connection to a daemon.

    All certificates and keys are PEM bytes; :meth:`from_files` reads them from disk.
    An empty ``TlsConfig()`` means TLS verified against the system's root certificates.

    Attributes:
        ca_cert: the CA bundle that signed the daemon's certificate (``None``: system roots).
        client_cert: the client certificate chain for mTLS (requires ``client_key``).
        client_key: the client private key for mTLS (requires ``client_cert``).
        server_name: the name to verify the daemon's certificate against, when it differs
            from the host in the target (e.g. connecting to ``127.0.0.1`` with a certificate
            issued for ``msgbusd.local``).
    """

    ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigurationError("mTLS needs both a client certificate and its key")

    @classmethod
    def from_files(
        cls,
        *,
        ca: _PathLike | None = None,
        cert: _PathLike | None = None,
        key: _PathLike | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Read the PEM files and build a :class:`TlsConfig`.

        Raises:
            ConfigurationError: a file cannot be read, or only one of ``cert``/``key`` is given.
        """
        return cls(
            ca_cert=_read(ca, "CA certificate"),
            client_cert=_read(cert, "client certificate"),
            client_key=_read(key, "client key"),
            server_name=server_name,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The grpc credentials for this configuration (used by the clients)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_cert,
            private_key=self.client_key,
            certificate_chain=self.client_cert,
        )

    def channel_options(self) -> list[tuple[str, str]]:
        """Channel options: the server name override, when one is set."""
        if not self.server_name:
            return []
        # The override changes both the name the certificate is checked against and the
        # :authority the daemon sees, exactly like connecting by that name would.
        return [
            ("grpc.ssl_target_name_override", self.server_name),
            ("grpc.default_authority", self.server_name),
        ]


def _read(path: _PathLike | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {what} {os.fspath(path)!r}: {exc.strerror}") from exc
