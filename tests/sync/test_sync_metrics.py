"""Sync metrics of real syncing daemons (issue 21): lags, refusals, failures, pull counts.

Two lags are exported per peer: `msgbus_sync_lag_messages`, what the peer has that this node has
not pulled yet, and `msgbus_sync_unsynced_messages`, what this node has that the peer has not
listed as held. The second is how a node sees a follower that pulls from it: a follower that is
stopped lags by exactly what was published meanwhile, and by nothing once it caught up again.
"""

from __future__ import annotations

from pathlib import Path

from workloads.logs import to_pb

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.testing import free_port, wait_until
from msgbus_testkit.metrics import Scrape, metrics_args, scrape_until, status_json
from msgbus_testkit.peers import start_node

LEADER = NodeId.from_key("tenant/default/leader")


def head(stub: rpc.MsgbusServiceStub, topic: str, origin: NodeId) -> int:
    request = pb.GetHeadRequest(topic=topic, origin=to_pb(origin))
    return stub.GetHead(request, timeout=10).head_id


def test_a_stopped_followers_lag_is_what_was_published_meanwhile(tmp_path: Path) -> None:
    args, port = metrics_args()
    follower_port = free_port()
    follower_endpoint = f"127.0.0.1:{follower_port}"
    # The leader pulls from its follower too, so the follower's listing tells it what it holds.
    with (
        start_node(tmp_path, "leader", peers=[(follower_endpoint, None)], extra=args) as leader,
        start_node(
            tmp_path, "follower", peers=[(leader.endpoint, None)], port=follower_port
        ) as follower,
    ):
        publisher = leader.stub()
        for _ in range(10):
            publisher.Publish(pb.PublishRequest(topic="orders", payload=b"o"))

        def unsynced() -> float | None:
            return Scrape.of(port).maybe("msgbus_sync_unsynced_messages", peer=follower_endpoint)

        wait_until(
            lambda: head(follower.stub(), "orders", LEADER) == 10 and unsynced() == 0,
            message="the follower holds the leader's 10 messages and the leader knows it",
        )
        follower.kill()
        for _ in range(7):
            publisher.Publish(pb.PublishRequest(topic="orders", payload=b"o"))
        down = scrape_until(
            port,
            lambda s: (
                s.value("msgbus_sync_unsynced_messages", peer=follower_endpoint) == 7
                and s.value("msgbus_sync_peer_up", peer=follower_endpoint) == 0
            ),
            message="the leader sees the stopped follower 7 messages behind",
        )
        assert down.value("msgbus_sync_failures_total", peer=follower_endpoint, reason="peer") >= 1
        assert down.value("msgbus_sync_passes_total", peer=follower_endpoint, result="failed") >= 1
        assert down.value("msgbus_sync_lag_messages", peer=follower_endpoint) == 0
        peer = next(p for p in status_json(port)["peers"] if p["endpoint"] == follower_endpoint)
        assert peer["unsynced_messages"] == 7
        assert peer["up"] is False
        assert follower_endpoint in peer["last_error"]

        follower.restart()
        wait_until(
            lambda: unsynced() == 0,
            message="the restarted follower caught up, as the leader sees it",
        )
        assert head(follower.stub(), "orders", LEADER) == 17
        back = Scrape.of(port)
        assert back.value("msgbus_sync_peer_up", peer=follower_endpoint) == 1
        assert back.value("msgbus_sync_last_success_timestamp_seconds", peer=follower_endpoint) > 0


def test_a_refused_rule_violation_is_counted_and_the_log_lags(tmp_path: Path) -> None:
    args, port = metrics_args()
    with (
        start_node(tmp_path, "leader") as leader,
        start_node(
            tmp_path,
            "follower",
            peers=[(leader.endpoint, None)],
            extra=[*args, "--max-payload-bytes", "1000"],
        ) as follower,
    ):
        publisher = leader.stub()
        publisher.Publish(pb.PublishRequest(topic="big", payload=b"s" * 10))
        # Above the follower's --max-payload-bytes: refused by name, with what came before kept.
        publisher.Publish(pb.PublishRequest(topic="big", payload=b"L" * 2000))
        for _ in range(4):
            publisher.Publish(pb.PublishRequest(topic="big", payload=b"s" * 10))
        for _ in range(3):
            publisher.Publish(pb.PublishRequest(topic="fine", payload=b"f" * 20))
        peer = leader.endpoint
        scrape = scrape_until(
            port,
            lambda s: (
                s.value("msgbus_sync_refused_total", peer=peer) >= 1
                and s.value("msgbus_sync_pulled_messages_total", peer=peer) == 4
            ),
            message="the follower refused the oversized message and pulled the rest",
        )
        assert head(follower.stub(), "big", LEADER) == 1
        assert head(follower.stub(), "fine", LEADER) == 3
        # Heads 2..6 of "big" are still to pull.
        assert scrape.value("msgbus_sync_lag_messages", peer=peer) == 5
        assert scrape.value("msgbus_sync_failing_logs", peer=peer) == 1
        assert scrape.value("msgbus_sync_failures_total", peer=peer, reason="log") >= 1
        assert scrape.value("msgbus_sync_pulled_bytes_total", peer=peer) == 10 + 3 * 20
        assert scrape.value("msgbus_sync_peer_up", peer=peer) == 1  # the peer itself is fine
        assert scrape.value("msgbus_sync_pass_seconds_count", peer=peer) >= 1
        status = status_json(port)["peers"][0]
        assert status["lag_messages"] == 5
        assert "above --max-payload-bytes 1000" in status["log_error"]
