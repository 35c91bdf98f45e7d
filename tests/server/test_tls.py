"""Server TLS and mTLS with certificates made in the test."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, free_port
from msgbus_testkit.certificates import CertificateAuthority, TlsFiles


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return CertificateAuthority("msgbus test CA").write_tls_files(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_ca_pem() -> bytes:
    return CertificateAuthority("someone else's CA").cert_pem


def _health(channel: grpc.Channel) -> str:
    status: str = rpc.MsgbusServiceStub(channel).Health(pb.HealthRequest(), timeout=10).status
    return status


def test_tls(tmp_path: Path, pki: TlsFiles, other_ca_pem: bytes) -> None:
    credentials = pki.credentials(client=False)
    with Daemon.start(tmp_path, extra_args=pki.server_args(), credentials=credentials) as daemon:
        with grpc.secure_channel(daemon.endpoint, credentials) as channel:
            assert _health(channel) == "SERVING"
            stub = rpc.MsgbusServiceStub(channel)
            reply = stub.Publish(pb.PublishRequest(topic="secure", payload=b"x"), timeout=10)
            assert reply.message.head_id == 1
        # A plaintext client cannot talk to a TLS daemon.
        with grpc.insecure_channel(daemon.endpoint) as channel, pytest.raises(grpc.RpcError):
            _health(channel)
        # Nor can a client that does not trust the server's CA.
        untrusting = grpc.ssl_channel_credentials(root_certificates=other_ca_pem)
        with grpc.secure_channel(daemon.endpoint, untrusting) as channel:
            with pytest.raises(grpc.RpcError) as info:
                _health(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "tls on" in daemon.stderr_text()


def test_tls_on_all_interfaces_needs_no_allow_insecure(tmp_path: Path, pki: TlsFiles) -> None:
    port = free_port()
    credentials = pki.credentials(client=False)
    args = ["--listen", f"0.0.0.0:{port}", "--allow-anyone", *pki.server_args()]
    with Daemon.start(tmp_path, port=port, extra_args=args, credentials=credentials) as daemon:
        assert daemon.stop() == 0


def test_mtls_requires_a_client_certificate(tmp_path: Path, pki: TlsFiles) -> None:
    with_cert = pki.credentials(client=True)
    args = pki.server_args(require_client_cert=True)
    with Daemon.start(tmp_path, extra_args=args, credentials=with_cert) as daemon:
        with grpc.secure_channel(daemon.endpoint, with_cert) as channel:
            assert _health(channel) == "SERVING"
        without_cert = pki.credentials(client=False)
        with grpc.secure_channel(daemon.endpoint, without_cert) as channel:
            with pytest.raises(grpc.RpcError) as info:
                _health(channel)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "mtls" in daemon.stderr_text()
        assert daemon.stop() == 0
