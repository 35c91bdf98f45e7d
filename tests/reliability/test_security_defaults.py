"""Security defaults that tests/server and tests/sync do not already pin down: an mTLS daemon
refuses a client whose certificate comes from another CA (and, on the same daemon, a client
with no certificate and a plaintext client).

Already covered elsewhere, not repeated here: plaintext on a non-loopback address needs
--allow-insecure (tests/server/test_cli.py); TLS, and mTLS without a client certificate
(tests/server/test_tls.py, packages/msgbus-sdk/tests/test_tls.py); a pinned peer identity
mismatch replicates nothing, a peer's copy of the local node's logs and forged delete markers
are refused (tests/sync/test_convergence.py, tests/sync/test_hostile_peers.py).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from reliability_helpers import status_of

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon

Issued = tuple[bytes, bytes]
"""(certificate PEM, private key PEM)"""


def _issue(
    common: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *, ca: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()), key


def _pem(pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> Issued:
    cert, key = pair
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _health(channel: grpc.Channel) -> str:
    status: str = rpc.MsgbusServiceStub(channel).Health(pb.HealthRequest(), timeout=10).status
    return status


def _refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        rpc.MsgbusServiceStub(channel).Publish(
            pb.PublishRequest(topic="intruder", payload=b"x"), timeout=10
        )
    return status_of(info.value)


def test_mtls_refuses_certificates_of_another_ca_and_plaintext(tmp_path: Path) -> None:
    trusted_ca = _issue("msgbus CA", None, ca=True)
    rogue_ca = _issue("rogue CA", None, ca=True)
    server_cert, server_key = _pem(_issue("msgbusd", trusted_ca, ca=False))
    good_cert, good_key = _pem(_issue("app", trusted_ca, ca=False))
    rogue_cert, rogue_key = _pem(_issue("app", rogue_ca, ca=False))
    ca_pem = _pem(trusted_ca)[0]
    for name, data in {"ca.pem": ca_pem, "s.pem": server_cert, "s.key": server_key}.items():
        (tmp_path / name).write_bytes(data)
    args = ["--tls-cert", str(tmp_path / "s.pem"), "--tls-key", str(tmp_path / "s.key")]
    args += ["--tls-client-ca", str(tmp_path / "ca.pem")]
    good = grpc.ssl_channel_credentials(ca_pem, good_key, good_cert)
    with Daemon.start(tmp_path / "d", extra_args=args, credentials=good) as daemon:
        with grpc.secure_channel(daemon.endpoint, good) as channel:
            assert _health(channel) == "SERVING"  # the control: a trusted client gets in
        rogue = grpc.ssl_channel_credentials(ca_pem, rogue_key, rogue_cert)
        with grpc.secure_channel(daemon.endpoint, rogue) as channel:
            assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
        anonymous = grpc.ssl_channel_credentials(ca_pem)
        with grpc.secure_channel(daemon.endpoint, anonymous) as channel:
            assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(daemon.endpoint) as channel:
            assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
        # Nothing any of them sent was stored.
        with grpc.secure_channel(daemon.endpoint, good) as channel:
            heads = rpc.MsgbusServiceStub(channel).ListHeads(pb.ListHeadsRequest(), timeout=10)
            assert list(heads.heads) == []
        assert daemon.stop() == 0
