"""A pinned peer over TLS must present a server certificate naming the pinned identity.

Real daemons over real TLS, with a CA and one certificate per node made in the test: the
certificate's `msgbus://tenant/bl/device` SAN URI decides who the peer is, not its Health.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import wait_until
from msgbus_testkit.certificates import CertificateAuthority
from msgbus_testkit.logs import fetch_rows, heads, publish, publish_many
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import failed_peer_state, start_node, sync_states


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


def upstream_args(ca_file: Path, cert: Path, key: Path, hub: str, pinned: str) -> list[str]:
    """Dial `hub` as an upstream pinned to `pinned`, presenting the node certificate."""
    return [
        *("--upstream", f"{hub}={pinned}"),
        *("--peer-tls-ca", str(ca_file), "--peer-tls-cert", str(cert), "--peer-tls-key", str(key)),
    ]


def operator(authority: CertificateAuthority) -> grpc.ChannelCredentials:
    """The test's own client certificate (the harness probes Health with it)."""
    issued = authority.issue_client("operator", uris=["msgbus://tenant/default/operator"])
    return grpc.ssl_channel_credentials(
        root_certificates=authority.cert_pem,
        private_key=issued.key_pem,
        certificate_chain=issued.cert_pem,
    )


def push_records(stub: rpc.MsgbusServiceStub) -> list[pb.PeerSyncState]:
    return [s for s in sync_states(stub) if s.direction == "push"]


def test_mtls_push_is_decided_by_the_certificate_identity(
    tmp_path: Path, ca: tuple[CertificateAuthority, Path]
) -> None:
    """Over mTLS, on loopback, the hub holds each pusher to its certificate's identity.

    D1 (certificate D1) pushes its own logs: taken, recorded under D1. D1 also holds logs of
    D4, pulled from D4: the hub refuses them (not D1's origin, no --accept-relayed) and records
    the refusal for D1. D2 presents D3's certificate and says hello as D2: its push is refused
    outright, and the hub holds nothing of D2.
    """
    authority, ca_file = ca
    hub_id = node_id("hub")
    d1, d2, d3, d4 = (node_id(name) for name in ("d1", "d2", "d3", "d4"))
    hub_files = node_files(authority, tmp_path, hub_id.key)
    credentials = operator(authority)
    with (
        start_node(
            tmp_path, "hub", extra=node_tls_args(ca_file, *hub_files), credentials=credentials
        ) as hub,
        # TLS too: a daemon's peer TLS settings serve all its peers and upstreams.
        start_node(
            tmp_path,
            "d4",
            extra=node_tls_args(ca_file, *node_files(authority, tmp_path, d4.key)),
            credentials=credentials,
        ) as relayed,
    ):
        hub_stub = hub.stub()
        publish_many(relayed.stub(), "d4.own", 3)
        d1_args = upstream_args(
            ca_file, *node_files(authority, tmp_path, d1.key), hub.endpoint, hub_id.key
        )
        d2_args = upstream_args(
            ca_file, *node_files(authority, tmp_path, d3.key), hub.endpoint, hub_id.key
        )
        with (
            # --no-recover: D1's new store would refuse writes until D4 answered once.
            start_node(
                tmp_path,
                "d1",
                peers=[(relayed.endpoint, d4.key)],
                extra=[*d1_args, "--no-recover"],
            ) as one,
            start_node(tmp_path, "d2", extra=d2_args) as two,
        ):
            publish_many(one.stub(), "telemetry", 10)
            publish_many(two.stub(), "telemetry", 10)
            wait_until(
                lambda: heads(hub_stub).get(("telemetry", d1.key)) == 10,
                message="D1's own log pushed over mTLS",
            )
            wait_until(
                lambda: heads(one.stub()).get(("d4.own", d4.key)) == 3,
                message="D1 holding D4's log",
            )
            refused = wait_until(
                lambda: next(
                    (
                        s
                        for s in sync_states(hub_stub)
                        if s.direction == "pushed"
                        and s.peer == d1.key
                        and s.topic == "d4.own"
                        and s.last_error
                    ),
                    None,
                ),
                message="the hub recording D1's relayed log as refused",
            )
            assert "refused" in refused.last_error
            assert d4.key in refused.last_error
            assert ("d4.own", d4.key) not in heads(hub_stub)
            failed = wait_until(
                lambda: next((s for s in push_records(two.stub()) if s.last_error), None),
                message="D2's refused push recorded on D2",
            )
            assert "not the identity of the client certificate" in failed.last_error
            assert d3.key in failed.last_error
            assert ("telemetry", d2.key) not in heads(hub_stub)
            assert not any(s.peer in (d2.key, d3.key) for s in sync_states(hub_stub))
            pushed = {s.peer for s in sync_states(hub_stub) if s.direction == "pushed"}
            assert pushed == {d1.key}


def test_a_pinned_upstream_with_the_wrong_certificate_is_refused(
    tmp_path: Path, ca: tuple[CertificateAuthority, Path]
) -> None:
    """The device pins its hub; the daemon answering there (reporting the hub's identity in
    Health) presents X's certificate, valid and from the same CA: nothing is pulled or pushed,
    and both records name the certificate. Restarted with its own certificate, the hub syncs
    both ways with the same device."""
    authority, ca_file = ca
    hub_id, impostor, device_id = node_id("hub"), node_id("x"), node_id("dev")
    impostor_files = node_files(authority, tmp_path, impostor.key)
    with start_node(
        tmp_path,
        "hub",
        extra=node_tls_args(ca_file, *impostor_files),
        credentials=operator(authority),
    ) as hub:
        hub_stub = hub.stub()
        publish_many(hub_stub, "config.site", 4)
        device_files = node_files(authority, tmp_path, device_id.key)
        args = upstream_args(ca_file, *device_files, hub.endpoint, hub_id.key)
        with start_node(tmp_path, "dev", extra=args) as device:
            stub = device.stub()
            publish_many(stub, "telemetry", 5)
            pull = wait_until(
                lambda: failed_peer_state(stub, hub.endpoint),
                message="the pull refusal recorded",
            )
            push = wait_until(
                lambda: next((s for s in push_records(stub) if s.last_error), None),
                message="the push refusal recorded",
            )
            for record in (pull, push):
                assert f"names msgbus://{impostor.key}" in record.last_error
                assert f"not the pinned identity {hub_id.key}" in record.last_error
            shown = subprocess.run(
                [str(Path(sys.executable).parent / "msgbus"), "--endpoint", device.endpoint,
                 "sync-state"],
                capture_output=True, text=True, timeout=60, check=True,
            ).stdout  # fmt: skip
            assert "not the pinned identity" in shown
            assert ("config.site", hub.node.key) not in heads(stub)
            assert ("telemetry", device_id.key) not in heads(hub_stub)
            assert not [s for s in sync_states(hub_stub) if s.direction == "pushed"]
    # The hub again, on the same port and data, with the certificate that names it.
    hub_files = node_files(authority, tmp_path, hub_id.key)
    with (
        start_node(
            tmp_path,
            "hub",
            port=hub.port,
            extra=node_tls_args(ca_file, *hub_files),
            credentials=operator(authority),
        ) as hub,
        start_node(tmp_path, "dev", extra=args) as device,
    ):
        hub_stub, stub = hub.stub(), device.stub()
        wait_until(
            lambda: heads(hub_stub).get(("telemetry", device_id.key)) == 5,
            message="the device's log pushed once the certificate names the pinned hub",
        )
        wait_until(
            lambda: heads(stub).get(("config.site", hub.node.key)) == 4,
            message="the hub's log pulled once the certificate names the pinned hub",
        )
        wait_until(
            lambda: (
                {s.peer for s in sync_states(hub_stub) if s.direction == "pushed"}
                == {device_id.key}
            ),
            message="the hub's sync state of the device's pushes",
        )


BIG_MESSAGES = 48
"""Messages of 1 MiB (the default payload limit, less room) pulled through the tunnel."""
RSS_LIMIT_KIB = 130 * 1024
"""What the pulling daemon may hold: it peaked at 94 MiB (about 55 MiB idle), so the relay
may not keep a copy of what it carried (48 MiB) on top of the store's and gRPC's own."""


def test_the_certificate_checked_tunnel_relays_large_transfers_within_bounds(
    tmp_path: Path, ca: tuple[CertificateAuthority, Path]
) -> None:
    """48 messages of 1 MiB pulled from a pinned TLS peer arrive whole, through the tunnel
    (64 KiB chunks, each written before the next is read), and A's RSS stays bounded."""
    authority, ca_file = ca
    a_id, b_id = node_id("a"), node_id("b")
    credentials = operator(authority)
    payload = bytes(range(256)) * (1024 * 1024 // 256 - 64)
    with start_node(
        tmp_path,
        "b",
        extra=node_tls_args(ca_file, *node_files(authority, tmp_path, b_id.key)),
        credentials=credentials,
    ) as b:
        stub_b = b.stub()
        for _ in range(BIG_MESSAGES):
            publish(stub_b, "big", payload)
        with start_node(
            tmp_path,
            "a",
            peers=[(b.endpoint, b_id.key)],
            extra=node_tls_args(ca_file, *node_files(authority, tmp_path, a_id.key)),
            credentials=credentials,
        ) as a:
            stub = a.stub()
            peak = 0

            def pulled() -> bool:
                nonlocal peak
                peak = max(peak, a.rss_kib())
                return heads(stub).get(("big", b_id.key)) == BIG_MESSAGES

            wait_until(pulled, message="48 MiB pulled through the tunnel", timeout=120)
            rows = fetch_rows(stub, "big", b_id)
            assert [row.head_id for row in rows] == list(range(1, BIG_MESSAGES + 1))
            assert all(row.payload == payload for row in rows)
            assert peak < RSS_LIMIT_KIB, f"A peaked at {peak // 1024} MiB"
