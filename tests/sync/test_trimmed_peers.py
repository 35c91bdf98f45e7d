"""Sync across retention: real daemons whose logs are trimmed, and --retain-unsynced.

A node pulling a log that its peer holds only from head 81 on takes that copy and records where
it starts, instead of refusing a gap forever; and a device keeps what no peer has pulled yet,
whatever its retention rule says, until a peer reports holding it.
"""

from __future__ import annotations

from pathlib import Path

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.testing import free_port, wait_until
from msgbus_testkit.logs import fetch_rows, publish_many, to_pb
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import start_node, sync_states

KEEP_20 = ["--retention", "*:max-messages=20"]


def log_head(stub: rpc.MsgbusServiceStub, topic: str, origin: NodeId) -> pb.GetHeadResponse:
    """GetHead of the log of `topic` by `origin`."""
    request = pb.GetHeadRequest(topic=topic, origin=to_pb(origin))
    reply: pb.GetHeadResponse = stub.GetHead(request, timeout=10)
    return reply


def wait_extent(
    stub: rpc.MsgbusServiceStub, topic: str, origin: NodeId, *, first: int = 0, head: int = 0
) -> None:
    """Wait until the log of `topic` by `origin` starts at `first` or reaches `head`."""
    if first:
        wait_until(
            lambda: log_head(stub, topic, origin).first_head_id == first,
            message=f"{topic} of {origin.device_id} to start at {first}",
        )
    if head:
        wait_until(
            lambda: log_head(stub, topic, origin).head_id == head,
            message=f"{topic} of {origin.device_id} to reach head {head}",
        )


def sync_errors(stub: rpc.MsgbusServiceStub) -> list[str]:
    """Every failure a node's sync states record."""
    return [f"{s.peer} {s.topic}: {s.last_error}" for s in sync_states(stub) if s.last_error]


def test_a_fresh_node_catches_up_from_a_trimmed_peer(tmp_path: Path) -> None:
    a_id = node_id("a")
    with start_node(tmp_path, "a", extra=KEEP_20) as a:
        a_stub = a.stub()
        publish_many(a_stub, "t", 100)
        wait_extent(a_stub, "t", a_id, first=81)
        with start_node(tmp_path, "b", peers=[(a.endpoint, a_id.key)]) as b:
            b_stub = b.stub()
            wait_extent(b_stub, "t", a_id, head=100)
            head = log_head(b_stub, "t", a_id)
            assert head.first_head_id == 81
            held = fetch_rows(b_stub, "t", a_id)
            assert [r.head_id for r in held] == list(range(81, 101))
            assert held == fetch_rows(a_stub, "t", a_id)
            assert head.bytes == log_head(a_stub, "t", a_id).bytes
            assert not sync_errors(b_stub)

            # The copy goes on from there: later publishes reach B (which keeps everything).
            publish_many(a_stub, "t", 5, prefix="later")
            wait_extent(b_stub, "t", a_id, head=105)
            rows = fetch_rows(b_stub, "t", a_id)
            assert rows[:20] == held
            assert rows[-20:] == fetch_rows(a_stub, "t", a_id)[-20:]
            assert not sync_errors(b_stub)


def test_a_node_whose_copy_ends_below_the_peers_first_head_restarts_its_copy_there(
    tmp_path: Path,
) -> None:
    a_id = node_id("a")
    with start_node(tmp_path, "a", extra=KEEP_20) as a:
        a_stub = a.stub()
        with start_node(tmp_path, "b", peers=[(a.endpoint, a_id.key)]) as b:
            b_stub = b.stub()
            publish_many(a_stub, "t", 10)
            wait_extent(b_stub, "t", a_id, head=10)
            b.stop()
            # While B is away, A goes to 100 and keeps 81..100: B's 11..80 are gone for good.
            publish_many(a_stub, "t", 90, prefix="later")
            wait_extent(a_stub, "t", a_id, first=81)
            b.restart()
            b_stub = b.stub()
            wait_extent(b_stub, "t", a_id, head=100)
            assert log_head(b_stub, "t", a_id).first_head_id == 81
            assert fetch_rows(b_stub, "t", a_id) == fetch_rows(a_stub, "t", a_id)
            assert "starts at head 81" in b.stderr_text()
            assert not sync_errors(b_stub)


def test_retain_unsynced_keeps_what_no_peer_has_pulled(tmp_path: Path) -> None:
    hub_id, a_id = node_id("hub"), node_id("a")
    hub_port = free_port()
    hub = [(f"127.0.0.1:{hub_port}", hub_id.key)]
    # --no-recover: a daemon on a new store would first recover its own logs from the hub,
    # which is not running, and refuse writes until it answers.
    keep_5 = ["--retention", "*:max-messages=5", "--no-recover"]
    # Both devices name the hub, which is not running yet: nobody has pulled anything.
    with (
        start_node(tmp_path, "a", peers=hub, extra=keep_5) as a,
        start_node(tmp_path, "a2", peers=hub, extra=[*keep_5, "--no-retain-unsynced"]) as a2,
    ):
        a_stub, a2_stub = a.stub(), a2.stub()
        a2_id = node_id("a2")
        publish_many(a_stub, "t", 30)
        publish_many(a2_stub, "t", 30)
        wait_extent(a2_stub, "t", a2_id, first=26)
        # Two more trims on A2, each after its own publish, so that A has had passes too
        # (every second, as A2's) since all of its messages were published.
        for head in (35, 40):
            publish_many(a_stub, "t", 5, prefix=f"to{head}")
            publish_many(a2_stub, "t", 5, prefix=f"to{head}")
            wait_extent(a2_stub, "t", a2_id, first=head - 4)
        assert log_head(a_stub, "t", a_id).first_head_id == 1
        assert len(fetch_rows(a_stub, "t", a_id)) == 40

        with start_node(tmp_path, "hub", port=hub_port, peers=[(a.endpoint, a_id.key)]) as hub_node:
            hub_stub = hub_node.stub()
            wait_extent(hub_stub, "t", a_id, head=40)
            assert log_head(hub_stub, "t", a_id).first_head_id == 1
            # A's own sync pass lists the hub's heads, sees A's log held to 40, and may trim.
            wait_extent(a_stub, "t", a_id, first=36)
            assert fetch_rows(a_stub, "t", a_id) == fetch_rows(hub_stub, "t", a_id)[-5:]
