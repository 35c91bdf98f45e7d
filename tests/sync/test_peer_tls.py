"""Peer sync over TLS and mTLS, with certificates made in the test."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from msgbus_server.testing import wait_until
from msgbus_testkit.certificates import CertificateAuthority, TlsFiles
from msgbus_testkit.logs import fetch_rows, heads, publish_many
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import failed_peer_state, start_node

SERVER_NAME = "msgbus-b.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """The CA's files; B's server certificate names B (`msgbus://`), as A pins B."""
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority()
    files = ca.write_tls_files(directory, server_hosts=[SERVER_NAME, "127.0.0.1"])
    cert, key = ca.issue_node(node_id("b").key, hosts=[SERVER_NAME, "127.0.0.1"]).write(
        directory, "server"
    )
    return dataclasses.replace(files, server_cert=cert, server_key=key)


def test_sync_over_tls(tmp_path: Path, pki: TlsFiles) -> None:
    """B serves TLS; A trusts the test CA and pulls through an https:// endpoint."""
    b_id = node_id("b")
    with start_node(
        tmp_path, "b", extra=pki.server_args(), credentials=pki.credentials(client=False)
    ) as b:
        publish_many(b.stub(), "secure", 10)
        with start_node(
            tmp_path,
            "a",
            peers=[(f"https://{b.endpoint}", b_id.key)],
            extra=["--peer-tls-ca", str(pki.ca)],
        ) as a:
            stub = a.stub()
            rows = wait_until(
                lambda: (r := fetch_rows(stub, "secure", b_id)) and len(r) == 10 and r,
                message="data over TLS",
            )
            assert {r.payload for r in rows} == {f"m-{i}".encode() for i in range(10)}


def test_sync_over_mtls_and_a_peer_without_client_cert_is_refused(
    tmp_path: Path, pki: TlsFiles
) -> None:
    """B requires client certificates: A presents one and syncs, C has none and gets nothing."""
    b_id = node_id("b")
    server_args = pki.server_args(require_client_cert=True)
    with start_node(
        tmp_path, "b", extra=server_args, credentials=pki.credentials(client=True)
    ) as b:
        publish_many(b.stub(), "secure", 10)
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
            wait_until(
                lambda: len(fetch_rows(a_stub, "secure", b_id)) == 10, message="data over mTLS"
            )
            refused = wait_until(
                lambda: failed_peer_state(c_stub, b.endpoint),
                message="C's handshake failure to be recorded",
            )
            assert refused.consecutive_failures >= 1
            assert "UNAVAILABLE" in refused.last_error
            assert heads(c_stub) == {}
