"""Server TLS and mTLS with certificates made in the test."""

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

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: bytes
    client_key: bytes
    ca_pem: bytes
    other_ca_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
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
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
) -> tuple[bytes, bytes]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
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
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("msgbus test CA")
    other_ca, _ = _ca("someone else's CA")
    server_cert, server_key = _leaf("msgbusd", ca, ca_key, server=True)
    client_cert, client_key = _leaf("app", ca, ca_key, server=False)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    paths = {"ca.pem": ca_pem, "server.pem": server_cert, "server.key": server_key}
    for file_name, data in paths.items():
        (directory / file_name).write_bytes(data)
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=client_cert,
        client_key=client_key,
        ca_pem=ca_pem,
        other_ca_pem=other_ca.public_bytes(serialization.Encoding.PEM),
    )


def _health(channel: grpc.Channel) -> str:
    status: str = rpc.MsgbusServiceStub(channel).Health(pb.HealthRequest(), timeout=10).status
    return status


def test_tls(tmp_path: Path, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    with Daemon.start(tmp_path, extra_args=args, credentials=credentials) as daemon:
        with grpc.secure_channel(daemon.endpoint, credentials) as channel:
            assert _health(channel) == "SERVING"
            stub = rpc.MsgbusServiceStub(channel)
            reply = stub.Publish(pb.PublishRequest(topic="secure", payload=b"x"), timeout=10)
            assert reply.message.head_id == 1
        # A plaintext client cannot talk to a TLS daemon.
        with grpc.insecure_channel(daemon.endpoint) as channel, pytest.raises(grpc.RpcError):
            _health(channel)
        # Nor can a client that does not trust the server's CA.
        untrusting = grpc.ssl_channel_credentials(root_certificates=pki.other_ca_pem)
        with grpc.secure_channel(daemon.endpoint, untrusting) as channel:
            with pytest.raises(grpc.RpcError) as info:
                _health(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "tls on" in daemon.stderr_text()


def test_tls_on_all_interfaces_needs_no_allow_insecure(tmp_path: Path, pki: Pki) -> None:
    from msgbus_server.testing import free_port

    port = free_port()
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
    args = [
        "--listen",
        f"0.0.0.0:{port}",
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
    ]
    with Daemon.start(tmp_path, port=port, extra_args=args, credentials=credentials) as daemon:
        assert daemon.stop() == 0


def test_mtls_requires_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_pem,
        private_key=pki.client_key,
        certificate_chain=pki.client_cert,
    )
    args = [
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
    ]
    with Daemon.start(tmp_path, extra_args=args, credentials=with_cert) as daemon:
        with grpc.secure_channel(daemon.endpoint, with_cert) as channel:
            assert _health(channel) == "SERVING"
        without_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem)
        with grpc.secure_channel(daemon.endpoint, without_cert) as channel:
            with pytest.raises(grpc.RpcError) as info:
                _health(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "mtls" in daemon.stderr_text()
        assert daemon.stop() == 0
