"""TLS and mTLS against a daemon serving TLS: CA, client certificate, server name override."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from msgbus_sdk import MsgbusClient, MsgbusError, TlsConfig, UnavailableError
from msgbus_server.testing import Daemon


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    name: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    sans: list[x509.GeneralName] | None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "msgbus test CA")])
    now = dt.datetime.now(dt.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    # The harness probes 127.0.0.1 without a name override, so the IP is a SAN too.
    server_cert, server_key = _issue(
        "msgbusd.test",
        ca_key,
        ca_name,
        [x509.DNSName("msgbusd.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_cert, client_key = _issue("app", ca_key, ca_name, None)
    pki = Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.server_key, server_key)
    _write_key(pki.client_key, client_key)
    return pki


@pytest.fixture(scope="module")
def mtls_daemon(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    args += ["--tls-client-ca", str(pki.ca)]
    with Daemon.start(
        tmp_path_factory.mktemp("tls"), extra_args=args, credentials=credentials
    ) as daemon:
        yield daemon


def test_mtls_with_ca_client_certificate_and_server_name(mtls_daemon: Daemon, pki: Pki) -> None:
    tls = TlsConfig.from_files(
        ca=pki.ca, cert=pki.client_cert, key=pki.client_key, server_name="msgbusd.test"
    )
    with MsgbusClient.connect(mtls_daemon.endpoint, tls=tls) as bus:
        assert bus.health().status == "SERVING"
        assert bus.publish("tls.events", b"secret").head_id >= 1
    # https:// plus explicit options: the options win over the system roots.
    with MsgbusClient.connect(f"https://{mtls_daemon.endpoint}", tls=tls) as bus:
        assert bus.ready().ready


def test_a_wrong_server_name_is_refused(mtls_daemon: Daemon, pki: Pki) -> None:
    tls = TlsConfig.from_files(
        ca=pki.ca, cert=pki.client_cert, key=pki.client_key, server_name="impostor.test"
    )
    with pytest.raises(UnavailableError):
        MsgbusClient.connect(mtls_daemon.endpoint, tls=tls, timeout=5)


def test_without_a_client_certificate_the_daemon_refuses(mtls_daemon: Daemon, pki: Pki) -> None:
    with pytest.raises(MsgbusError):
        MsgbusClient.connect(mtls_daemon.endpoint, tls=TlsConfig.from_files(ca=pki.ca), timeout=5)


def test_plaintext_against_a_tls_daemon_fails_cleanly(mtls_daemon: Daemon) -> None:
    with pytest.raises(UnavailableError):
        MsgbusClient.connect(mtls_daemon.endpoint, timeout=5)


def test_cli_tls_flags(mtls_daemon: Daemon, pki: Pki) -> None:
    import subprocess
    import sys

    msgbus = str(Path(sys.executable).parent / "msgbus")
    flags = ["--endpoint", mtls_daemon.endpoint, "--tls-ca", str(pki.ca)]
    flags += ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    flags += ["--tls-server-name", "msgbusd.test"]
    result = subprocess.run([msgbus, *flags, "health"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"SERVING")
