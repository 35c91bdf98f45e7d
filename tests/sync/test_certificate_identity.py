"""A pinned peer over TLS must present a server certificate naming the pinned identity.

Real daemons over real TLS, with a CA and one certificate per node made in the test: the
certificate's `msgbus://tenant/bl/device` SAN URI decides who the peer is, not its Health.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from msgbus_server.testing import wait_until
from msgbus_testkit.certificates import CertificateAuthority
from msgbus_testkit.logs import fetch_rows, heads, publish_many
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import failed_peer_state, start_node


def node_files(ca: CertificateAuthority, directory: Path, identity: str) -> tuple[Path, Path]:
    """Write `identity`'s node certificate and key (serves 127.0.0.1; also a client cert)."""
    return ca.issue_node(identity).write(directory, identity.replace("/", "-"))


def node_tls_args(ca_file: Path, cert: Path, key: Path) -> list[str]:
    """Serve mTLS with a node certificate, and present it to peers, trusting the CA."""
    files = [str(ca_file), str(cert), str(key)]
    return [
        *("--tls-cert", files[1], "--tls-key", files[2], "--tls-client-ca", files[0]),
        *("--peer-tls-ca", files[0], "--peer-tls-cert", files[1], "--peer-tls-key", files[2]),
    ]


@pytest.fixture
def ca(tmp_path: Path) -> tuple[CertificateAuthority, Path]:
    authority = CertificateAuthority()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(authority.cert_pem)
    return authority, ca_file


def test_a_pinned_peer_naming_its_identity_syncs_and_one_naming_another_is_refused(
    tmp_path: Path, ca: tuple[CertificateAuthority, Path]
) -> None:
    """A pins B and C. B's certificate names B: A pulls it. C's names D (a valid certificate
    from the same CA, and C's Health reports C): A takes nothing from C and records why."""
    authority, ca_file = ca
    b_id, c_id, a_id = node_id("b"), node_id("c"), node_id("a")
    b_files = node_files(authority, tmp_path, b_id.key)
    c_files = node_files(authority, tmp_path, node_id("d").key)  # C presents D's certificate
    a_files = node_files(authority, tmp_path, a_id.key)
    client = authority.issue_node(a_id.key)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=authority.cert_pem,
        private_key=client.key_pem,
        certificate_chain=client.cert_pem,
    )
    with (
        start_node(
            tmp_path, "b", extra=node_tls_args(ca_file, *b_files), credentials=credentials
        ) as b,
        start_node(
            tmp_path, "c", extra=node_tls_args(ca_file, *c_files), credentials=credentials
        ) as c,
    ):
        publish_many(b.stub(), "fleet.b", 5)
        publish_many(c.stub(), "fleet.c", 5)
        with start_node(
            tmp_path,
            "a",
            peers=[(b.endpoint, b_id.key), (c.endpoint, c_id.key)],
            extra=node_tls_args(ca_file, *a_files),
            credentials=credentials,
        ) as a:
            stub = a.stub()
            wait_until(
                lambda: len(fetch_rows(stub, "fleet.b", b_id)) == 5,
                message="B's log over mTLS with B's certificate",
            )
            refused = wait_until(
                lambda: failed_peer_state(stub, c.endpoint),
                message="C's certificate refusal recorded",
            )
            assert f"names msgbus://{node_id('d').key}" in refused.last_error
            assert f"not the pinned identity {c_id.key}" in refused.last_error
            assert refused.consecutive_failures >= 1
            # Several passes later C is still refused and nothing of it is held.
            wait_until(
                lambda: (s := failed_peer_state(stub, c.endpoint)) and s.consecutive_failures >= 3,
                message="more refused passes",
            )
            assert ("fleet.c", c_id.key) not in heads(stub)
            assert ("fleet.b", b_id.key) in heads(stub)
            assert "not the pinned identity" in a.stderr_text()
