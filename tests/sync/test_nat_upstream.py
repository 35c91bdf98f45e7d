"""A device behind NAT syncs with its hub both ways over the one connection it dials.

The device runs in a network namespace joined to the test's by a veth pair. In the device's
namespace an nftables table drops every new inbound connection (what a NAT router in front of
it does) and masquerades what leaves it. The hub, in the test's namespace, has no --peer for the
device and could not dial it anyway: the test proves a connection attempt fails. Then device
logs reach the hub (Push) and hub `config.*` logs reach the device (pulled over the device's
channel), over mTLS with one certificate per node from a CA made in the test: the device pins
the hub's identity, which the hub's server certificate must name, and the hub holds the device
to the identity its client certificate names.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from msgbus_server.testing import Daemon, free_port, wait_until
from msgbus_testkit.certificates import CertificateAuthority
from msgbus_testkit.logs import heads, publish_many
from msgbus_testkit.netns import NamespacedDaemon, VethLink, require_namespaces, veth_namespace
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import sync_states

# Run inside the device's namespace (the test's own process is outside, where the device does
# not accept connections): publish `count` messages to `topic`, or with count 0 list the heads.
_INSIDE = """
import json, sys
import grpc
from msgbus_proto import pb, rpc
endpoint, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
stub = rpc.MsgbusServiceStub(grpc.insecure_channel(endpoint))
for i in range(count):
    stub.Publish(pb.PublishRequest(topic=topic, payload=f"m-{i}".encode()), timeout=10)
reply = stub.ListHeads(pb.ListHeadsRequest(), timeout=10)
print(json.dumps({f"{h.topic} {h.origin.tenant_id}/{h.origin.bl_name}/{h.origin.device_id}":
                  h.head_id for h in reply.heads}))
"""

_NAT_RULES = """
table ip msgbus_nat {{
    chain input {{
        type filter hook input priority 0; policy drop;
        iif "lo" accept
        ct state established,related accept
    }}
    chain postrouting {{
        type nat hook postrouting priority 100;
        oifname "{device}" masquerade
    }}
}}
"""


def require_nft() -> None:
    """Skip without `nft`; fail instead under CI=true, where .ci/run installs it."""
    if shutil.which("nft") is not None:
        return
    reason = "`nft` is not installed (Debian: apt-get install nftables)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the NAT test must run)")
    pytest.skip(reason)


def inside(link: VethLink, endpoint: str, topic: str = "-", count: int = 0) -> dict[str, int]:
    """Run `_INSIDE` in the device's namespace; the heads the device holds afterwards."""
    result = subprocess.run(
        link.command([sys.executable, "-c", _INSIDE, endpoint, topic, str(count)]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    heads_by_log: dict[str, int] = json.loads(result.stdout)
    return heads_by_log


def put_behind_nat(link: VethLink) -> None:
    """Drop new inbound connections in the device's namespace and masquerade its egress."""
    subprocess.run(
        link.command(["nft", "-f", "-"]),
        input=_NAT_RULES.format(device=link.namespace_device),
        text=True,
        capture_output=True,
        timeout=30,
        check=True,
    )


def can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def test_a_device_behind_nat_and_its_hub_converge_both_ways(tmp_path: Path) -> None:
    require_namespaces()
    require_nft()
    hub_id, device_id = node_id("hub"), node_id("nat-device")
    ca = CertificateAuthority()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    operator = ca.issue_client("operator", uris=["msgbus://tenant/default/operator"])
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem,
        private_key=operator.key_pem,
        certificate_chain=operator.cert_pem,
    )
    with veth_namespace() as link:
        hub_cert, hub_key = ca.issue_node(hub_id.key, hosts=["127.0.0.1", link.host_address]).write(
            tmp_path, "hub"
        )
        device_cert, device_key = ca.issue_node(device_id.key).write(tmp_path, "device")
        hub_port = free_port()
        hub_address = f"{link.host_address}:{hub_port}"
        hub_args = [
            *("--listen", hub_address, "--allow-anyone"),
            *("--tls-cert", str(hub_cert), "--tls-key", str(hub_key)),
            *("--tls-client-ca", str(ca_file)),
        ]
        with Daemon.start(
            tmp_path / "hub", node=hub_id.key, extra_args=hub_args, credentials=credentials
        ) as hub:
            hub_stub = hub.stub()
            publish_many(hub_stub, "config.fleet", 5, "cfg")
            publish_many(hub_stub, "hub.private", 3, "p")
            device = NamespacedDaemon(
                link,
                tmp_path / "device",
                node=device_id.key,
                extra_args=[
                    *("--upstream", f"{hub_address}={hub_id.key}", "--pull-topics", "config.*"),
                    *("--peer-tls-ca", str(ca_file)),
                    *("--peer-tls-cert", str(device_cert), "--peer-tls-key", str(device_key)),
                    *("--sync-interval-ms", "200"),
                ],
            )
            with device:
                # Before the NAT rules the hub could reach the device (start() proved it).
                put_behind_nat(link)
                device_host, device_port = device.endpoint.rsplit(":", 1)
                assert not can_connect(device_host, int(device_port)), (
                    "the hub's namespace must not be able to dial the device"
                )
                # The device dials again under the rules: the hub restarts.
                hub.restart()
                hub_stub = hub.stub()
                inside(link, device.endpoint, "telemetry.temp", 20)
                wait_until(
                    lambda: heads(hub_stub).get(("telemetry.temp", device_id.key)) == 20,
                    message="the device's log pushed to the hub through the NAT",
                    timeout=90,
                )
                publish_many(hub_stub, "config.fleet", 2, "later")
                held = wait_until(
                    lambda: (
                        (h := inside(link, device.endpoint))
                        and h.get(f"config.fleet {hub_id.key}") == 7
                        and h
                    ),
                    message="the hub's config.* on the device, pulled over its connection",
                    timeout=90,
                )
                assert f"hub.private {hub_id.key}" not in held, "--pull-topics config.* only"
                # The hub writes push records behind the acks (at most once a second).
                pushed = wait_until(
                    lambda: [s for s in sync_states(hub_stub) if s.direction == "pushed"],
                    message="the hub's sync state records the device's push",
                )
                assert {s.peer for s in pushed} == {device_id.key}
                assert all(not s.last_error for s in pushed if not s.topic)
                assert not can_connect(device_host, int(device_port))
