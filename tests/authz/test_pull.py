"""A peer pulls only what `pull` gives it: sync sees the logs the policy shows its certificate."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.authz import Pki, audit_lines, first_response

SOURCE = "tenant/site/a"
PULLER = "tenant/site/b"
POLICY = f"""
[policy]
[[policy.rule]]
name = "b pulls the shared logs"
callers = ["{PULLER}"]
allow = ["pull"]
topics = ["shared.*", "$msgbus.delete"]

[[policy.rule]]
name = "operator"
callers = ["uid:0"]
allow = ["publish", "delete"]
"""


def test_a_peer_pulls_only_the_logs_its_pull_rule_names(
    tmp_path: Path, pki: Pki, socket_dir: Path
) -> None:
    config = tmp_path / "a.toml"
    config.write_text(POLICY)
    local = f"unix://{socket_dir / 'pull-a.sock'}"
    # B pins A: A's server certificate must name A.
    tls = pki.node_server_args(SOURCE)
    args = [*tls, "--config", str(config), "--listen", local, "--log-format", "json"]
    with Daemon.start(
        tmp_path / "a", node=SOURCE, extra_args=args, credentials=pki.client(PULLER)
    ) as source:
        with grpc.insecure_channel(local) as channel:
            stub = rpc.MsgbusServiceStub(channel)
            for topic in ("shared.config", "shared.news", "private.notes"):
                stub.Publish(pb.PublishRequest(topic=topic, payload=b"x"), timeout=10)
                stub.Publish(pb.PublishRequest(topic=topic, payload=b"y"), timeout=10)
            stub.DeleteRange(
                pb.DeleteRangeRequest(topic="shared.news", from_head_id=1, to_head_id=1),
                timeout=10,
            )

        peer_tls = pki.peer_args(PULLER)
        with Daemon.start(
            tmp_path / "b",
            node=PULLER,
            extra_args=[
                *peer_tls,
                "--peer",
                f"{source.endpoint}={SOURCE}",
                "--sync-interval-ms",
                "100",
            ],
        ) as puller:
            stub = puller.stub()

            def pulled() -> set[str]:
                heads = stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads
                return {head.topic for head in heads if head.head_id >= 1}

            wait_until(
                lambda: {"shared.config", "shared.news", "$msgbus.delete"} <= pulled(),
                message="B holding A's shared logs and its delete markers",
            )
            origin = pb.NodeId(tenant_id="tenant", bl_name="site", device_id="a")
            news = pb.FetchRequest(topic="shared.news", origin=origin, from_head_id=1)
            wait_until(
                lambda: [f.message.deleted for f in stub.Fetch(news, timeout=10)] == [True, False],
                message="A's delete reaching B with its marker",
            )
            # A message published now arrives in a later pass, so the pass that listed the
            # shared logs is over, and the private one, published with them, never came.
            with grpc.insecure_channel(local) as channel:
                rpc.MsgbusServiceStub(channel).Publish(
                    pb.PublishRequest(topic="shared.config", payload=b"z"), timeout=10
                )
            config_head = pb.GetHeadRequest(topic="shared.config", origin=origin)
            wait_until(
                lambda: stub.GetHead(config_head, timeout=10).head_id == 3,
                message="B pulling a message published later",
            )
            assert "private.notes" not in pulled()

        # Pull is not read: B's certificate may fetch, but not subscribe.
        with grpc.secure_channel(source.endpoint, pki.client(PULLER)) as channel:
            as_b = rpc.MsgbusServiceStub(channel)
            request = pb.SubscribeRequest(topic="shared.config", from_head_id=1)
            with pytest.raises(grpc.RpcError) as info:
                first_response(as_b.Subscribe(request, timeout=10))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        lines = audit_lines(source.stderr_text())
        assert any(line["rpc"] == "Subscribe" and line["identity"] == PULLER for line in lines), (
            lines
        )
