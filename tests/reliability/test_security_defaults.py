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

from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon
from msgbus_testkit.calls import status_of
from msgbus_testkit.certificates import CertificateAuthority


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
    trusted_ca = CertificateAuthority("msgbus CA")
    rogue = CertificateAuthority("rogue CA").issue_client("app")
    files = trusted_ca.write_tls_files(tmp_path)
    ca_pem = trusted_ca.cert_pem
    good = files.credentials(client=True)
    args = files.server_args(require_client_cert=True)
    with Daemon.start(tmp_path / "d", extra_args=args, credentials=good) as daemon:
        with grpc.secure_channel(daemon.endpoint, good) as channel:
            assert _health(channel) == "SERVING"  # the control: a trusted client gets in
        rogue_credentials = grpc.ssl_channel_credentials(ca_pem, rogue.key_pem, rogue.cert_pem)
        with grpc.secure_channel(daemon.endpoint, rogue_credentials) as channel:
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
