"""Peer sync over TLS and mTLS, with certificates made in the test."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sync_helpers import (
    failed_peer_state,
    fetch_all,
    heads,
    node_id,
    publish,
    start_node,
    wait_for,
)

SERVER_NAME = "msgbus-b.test"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def credentials(self, *, client: bool) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.client_key.read_bytes() if client else None,
            certificate_chain=self.client_cert.read_bytes() if client else None,
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    directory: Path,
    stem: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    *,
    server: bool,
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(f"msgbus {stem}"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(SERVER_NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("msgbus test CA")
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = _issue(directory, "server", ca_key, ca_name, server=True)
    client_cert, client_key = _issue(directory, "client", ca_key, ca_name, server=False)
    return Pki(ca_path, server_cert, server_key, client_cert, client_key)


def test_sync_over_tls(tmp_path: Path, pki: Pki) -> None:
    """B serves TLS; A trusts the test CA and pulls through an https:// endpoint."""
    b_id = node_id("b")
    server_args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    with start_node(
        tmp_path, "b", extra=server_args, credentials=pki.credentials(client=False)
    ) as b:
        publish(b.stub(), "secure", 10)
        with start_node(
            tmp_path,
            "a",
            peers=[(f"https://{b.endpoint}", b_id.key)],
            extra=["--peer-tls-ca", str(pki.ca)],
        ) as a:
            stub = a.stub()
            rows = wait_for(
                lambda: (r := fetch_all(stub, "secure", b_id)) and len(r) == 10 and r,
                "data over TLS",
            )
            assert {r.payload for r in rows} == {f"m-{i}".encode() for i in range(10)}


def test_sync_over_mtls_and_a_peer_without_client_cert_is_refused(tmp_path: Path, pki: Pki) -> None:
    """B requires client certificates: A presents one and syncs, C has none and gets nothing."""
    b_id = node_id("b")
    server_args = [
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
    ]
    with start_node(
        tmp_path, "b", extra=server_args, credentials=pki.credentials(client=True)
    ) as b:
        publish(b.stub(), "secure", 10)
        client_args = [
            "--peer-tls-ca",
            str(pki.ca),
            "--peer-tls-cert",
            str(pki.client_cert),
            "--peer-tls-key",
            str(pki.client_key),
            # The certificate is also valid for this name; the override is what A checks.
            "--peer-tls-domain",
            SERVER_NAME,
        ]
        with (
            start_node(tmp_path, "a", peers=[(b.endpoint, b_id.key)], extra=client_args) as a,
            start_node(
                tmp_path,
                "c",
                peers=[(b.endpoint, b_id.key)],
                extra=["--peer-tls-ca", str(pki.ca)],
            ) as c,
        ):
            a_stub, c_stub = a.stub(), c.stub()
            wait_for(lambda: len(fetch_all(a_stub, "secure", b_id)) == 10, "data over mTLS")
            refused = wait_for(
                lambda: failed_peer_state(c_stub, b.endpoint),
                "C's handshake failure to be recorded",
            )
            assert refused.consecutive_failures >= 1
            assert "UNAVAILABLE" in refused.last_error
            assert heads(c_stub) == {}
