"""Certificates made in the test: a CA, and the server and client certificates it issues.

    ca = CertificateAuthority("msgbus test CA")
    files = ca.write_tls_files(tmp_path, server_hosts=["msgbusd.test", "127.0.0.1"])
    Daemon.start(..., extra_args=files.server_args(), credentials=files.credentials(client=True))

Keys are EC P-256 and certificates are valid from a day ago to a day from now, so clock skew on a
CI box never matters. Server certificates name their hosts as subject alternative names (an IP
address becomes an IP SAN): the harness probes `127.0.0.1`, so that is one of the defaults.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1")
_VALIDITY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.pem` and `<stem>.key` into `directory`; return both paths."""
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return cert, key


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate, a server and a client certificate with keys, written to files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_args(self, *, require_client_cert: bool = False) -> list[str]:
        """msgbusd flags that serve TLS with these files (and mTLS, when asked)."""
        args = ["--tls-cert", str(self.server_cert), "--tls-key", str(self.server_key)]
        if require_client_cert:
            args += ["--tls-client-ca", str(self.ca)]
        return args

    def credentials(self, *, client: bool) -> grpc.ChannelCredentials:
        """Channel credentials that trust the CA and, with `client`, present the client cert."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.client_key.read_bytes() if client else None,
            certificate_chain=self.client_cert.read_bytes() if client else None,
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, common_name: str = "msgbus test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = _name(common_name)
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=True,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        self.certificate = (
            self._builder(self._name, self._key.public_key(), ca=True)
            .add_extension(usage, critical=True)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM: what a client or a server trusts."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue_server(
        self, common_name: str = "msgbusd", *, hosts: Sequence[str] = DEFAULT_SERVER_HOSTS
    ) -> IssuedCertificate:
        """A server certificate valid for `hosts` (DNS names or IP addresses)."""
        return self._issue(
            common_name, [ExtendedKeyUsageOID.SERVER_AUTH], [_san(host) for host in hosts]
        )

    def issue_client(
        self, common_name: str = "app", *, uris: Sequence[str] = ()
    ) -> IssuedCertificate:
        """A client certificate, for mTLS.

        `uris` become URI SANs: `msgbus://tenant/bl/device` names the caller's identity.
        """
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
        return self._issue(common_name, [ExtendedKeyUsageOID.CLIENT_AUTH], sans)

    def issue_node(
        self, identity: str, *, hosts: Sequence[str] = DEFAULT_SERVER_HOSTS
    ) -> IssuedCertificate:
        """A node's certificate, naming `identity` (`tenant/bl/device`) in a `msgbus://` SAN URI.

        Valid for serving `hosts` and as a client certificate, so one file serves a daemon's
        listener (`--tls-cert`) and its peer and upstream connections (`--peer-tls-cert`).
        """
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"msgbus://{identity}")]
        sans += [_san(host) for host in hosts]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        return self._issue(identity.replace("/", "-"), usages, sans)

    def write_tls_files(
        self, directory: Path, *, server_hosts: Sequence[str] = DEFAULT_SERVER_HOSTS
    ) -> TlsFiles:
        """Write `ca.pem`, a server and a client certificate with keys into `directory`."""
        ca = directory / "ca.pem"
        ca.write_bytes(self.cert_pem)
        server_cert, server_key = self.issue_server(hosts=server_hosts).write(directory, "server")
        client_cert, client_key = self.issue_client().write(directory, "client")
        return TlsFiles(ca, server_cert, server_key, client_cert, client_key)

    def _issue(
        self,
        common_name: str,
        usages: Sequence[x509.ObjectIdentifier],
        sans: list[x509.GeneralName],
    ) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(_name(common_name), key.public_key(), ca=False).add_extension(
            x509.ExtendedKeyUsage(list(usages)), critical=False
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return IssuedCertificate(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, *, ca: bool
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _VALIDITY)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
