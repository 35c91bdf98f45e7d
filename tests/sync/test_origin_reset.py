"""Origin resets (issue 15): a node that lost its store recovers its own logs, and a history that
diverged (a reset with --no-recover, or a clone) is a recorded conflict, never a splice."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, free_port, wait_until
from msgbus_testkit.logs import fetch_rows, heads, publish, publish_many
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import SYNC_ARGS, failed_peer_state, log_state, peer_arg, start_node

DELETE = "$msgbus.delete"
DIVERGED = "history diverged"


def delete_store(daemon: Daemon) -> None:
    """Remove the database of a stopped daemon, with its journal files."""
    for path in daemon.data_path.parent.glob(f"{daemon.data_path.name}*"):
        path.unlink()


def ready(stub: rpc.MsgbusServiceStub) -> pb.ReadyResponse:
    response: pb.ReadyResponse = stub.Ready(pb.ReadyRequest(), timeout=10)
    return response


def not_ready(stub: rpc.MsgbusServiceStub) -> pb.ReadyResponse | None:
    """Ready's answer once it gives a reason not to be ready, else None."""
    response = ready(stub)
    return response if response.error else None


def conflict_of(
    stub: rpc.MsgbusServiceStub, peer: str, topic: str, origin_name: str
) -> pb.PeerSyncState | None:
    """The log's sync state from `peer` once it records a diverged history, else None."""
    state = log_state(stub, peer, topic, node_id(origin_name))
    return state if state is not None and DIVERGED in state.last_error else None


def two_way_pair(tmp_path: Path) -> tuple[Daemon, Daemon, int]:
    """A and B pulling from each other (A's port is returned to restart A on it)."""
    port_a, port_b = free_port(), free_port()
    a = start_node(tmp_path, "a", port=port_a, peers=[(f"127.0.0.1:{port_b}", node_id("b").key)])
    b = start_node(tmp_path, "b", port=port_b, peers=[(a.endpoint, node_id("a").key)])
    return a, b, port_a


def test_a_node_whose_store_was_deleted_recovers_its_logs_and_markers_and_continues_after_them(
    tmp_path: Path,
) -> None:
    a, b, _ = two_way_pair(tmp_path)
    a_id = node_id("a")
    with a, b:
        a_stub, b_stub = a.stub(), b.stub()
        publish_many(a_stub, "orders", 100, "a")
        a_stub.DeleteRange(
            pb.DeleteRangeRequest(topic="orders", from_head_id=5, to_head_id=7), timeout=10
        )
        wait_until(
            lambda: (
                heads(b_stub).get(("orders", a_id.key)) == 100
                and heads(b_stub).get((DELETE, a_id.key)) == 1
                and [r.deleted for r in fetch_rows(b_stub, "orders", a_id)].count(True) == 3
            ),
            message="B to hold A's 100 messages and its delete",
        )
        before = fetch_rows(b_stub, "orders", a_id)

        a.stop()
        delete_store(a)
        a.restart()
        a_stub = a.stub()
        answer = wait_until(
            lambda: (r := ready(a_stub)).ready and r, message="A to recover and be ready"
        )
        assert answer.status == "READY"
        assert fetch_rows(a_stub, "orders", a_id) == before  # deleted rows stay deleted
        assert heads(a_stub)[(DELETE, a_id.key)] == 1
        assert "recovered 2 logs (101 messages) of this node from 1 peers" in a.stderr_text()

        assert publish(a_stub, "orders", b"after the reset").head_id == 101
        marker = a_stub.DeleteRange(
            pb.DeleteRangeRequest(topic="orders", from_head_id=1, to_head_id=1), timeout=10
        )
        assert marker.deleted_count == 1
        assert heads(a_stub)[(DELETE, a_id.key)] == 2  # after the recovered marker
        wait_until(
            lambda: (
                heads(b_stub).get(("orders", a_id.key)) == 101
                and heads(b_stub).get((DELETE, a_id.key)) == 2
            ),
            message="B to pull A's messages after the reset",
        )
        after = fetch_rows(b_stub, "orders", a_id)
        assert after[1:100] == before[1:100]  # head 1 is deleted now; the rest is untouched
        assert after[0].id == before[0].id
        assert after[0].deleted
        assert after[100].payload == b"after the reset"
        state = log_state(b_stub, a.endpoint, "orders", a_id)
        assert state is not None
        assert state.last_error == ""
        assert DIVERGED not in b.stderr_text()


def test_a_reset_node_with_no_recover_republishes_and_its_peer_records_a_conflict(
    tmp_path: Path,
) -> None:
    a, b, port_a = two_way_pair(tmp_path)
    a_id = node_id("a")
    with b:
        with a:
            publish_many(a.stub(), "orders", 100, "old")
            b_stub = b.stub()
            wait_until(
                lambda: heads(b_stub).get(("orders", a_id.key)) == 100,
                message="B to hold A's 100 messages",
            )
            before = fetch_rows(b_stub, "orders", a_id)
        delete_store(a)
        reset = start_node(
            tmp_path, "a", port=port_a, peers=[(b.endpoint, None)], extra=["--no-recover"]
        )
        with reset:
            reset_stub = reset.stub()
            # Longer than what B holds: a pull would splice heads 101..120 after the old 100.
            publish_many(reset_stub, "orders", 120, "new")
            state = wait_until(
                lambda: (
                    (s := conflict_of(b_stub, reset.endpoint, "orders", "a"))
                    and s.remote_head == 120
                    and s
                ),
                message="B to record A's new history as a conflict",
            )
            assert state.local_head == 100
            assert fetch_rows(b_stub, "orders", a_id) == before  # nothing spliced
            assert DIVERGED in b.stderr_text()
            # A sees it too: B holds another history of A's own log.
            wait_until(
                lambda: conflict_of(reset_stub, b.endpoint, "orders", "a"),
                message="A to record B's copy of its log as a conflict",
            )
            assert len(fetch_rows(reset_stub, "orders", a_id)) == 120
            assert DIVERGED in reset.stderr_text()


def test_two_live_clones_of_one_node_show_a_conflict_on_both_sides(tmp_path: Path) -> None:
    """A copied database makes two nodes with one identity: their histories diverge at head 4."""
    a_id = node_id("a")
    port_c = free_port()
    endpoint_c = f"127.0.0.1:{port_c}"
    original = start_node(tmp_path, "a")
    with original:
        publish_many(original.stub(), "t", 3, "shared")
    clone_dir = tmp_path / "clone"
    clone_dir.mkdir()
    for path in original.data_path.parent.glob(f"{original.data_path.name}*"):
        shutil.copy(path, clone_dir / path.name)

    args = [*SYNC_ARGS, *peer_arg(endpoint_c, node_id("c"))]
    first = Daemon.start(tmp_path / "a", node=a_id.key, extra_args=args)
    second = Daemon.start(clone_dir, node=a_id.key, extra_args=args)
    with first, second:
        clones = {first.endpoint: first, second.endpoint: second}
        for clone in clones.values():
            publish_many(clone.stub(), "t", 2, clone.endpoint)
        c = start_node(
            tmp_path,
            "c",
            port=port_c,
            peers=[(first.endpoint, a_id.key), (second.endpoint, a_id.key)],
        )
        with c:
            c_stub = c.stub()
            conflict = wait_until(
                lambda: next(
                    (e for e in clones if conflict_of(c_stub, e, "t", "a") is not None), None
                ),
                message="C to record a conflict with one of the clones",
            )
            taken, refused = clones[next(e for e in clones if e != conflict)], clones[conflict]
            held = fetch_rows(c_stub, "t", a_id)
            assert held == fetch_rows(taken.stub(), "t", a_id)  # one history, nothing spliced
            assert len(held) == 5
            wait_until(
                lambda: conflict_of(refused.stub(), c.endpoint, "t", "a"),
                message="the other clone to record C's copy as a conflict",
            )
            state = log_state(taken.stub(), c.endpoint, "t", a_id)
            assert state is None or state.last_error == ""
            assert DIVERGED in c.stderr_text()
            assert DIVERGED in refused.stderr_text()


def test_a_new_node_refuses_writes_until_an_unreachable_peer_answers(tmp_path: Path) -> None:
    port_b = free_port()
    endpoint_b = f"127.0.0.1:{port_b}"
    with start_node(tmp_path, "a", peers=[(endpoint_b, node_id("b").key)]) as a:
        stub = a.stub()
        answer = wait_until(lambda: not_ready(stub), message="Ready to give its reason")
        assert (answer.ready, answer.status) == (False, "NOT_READY")
        assert "recovering this node's own logs" in answer.error
        assert endpoint_b in answer.error
        health = stub.Health(pb.HealthRequest(), timeout=10)
        assert health.status == "SERVING"  # peers must still reach it

        local = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="a")
        writes: list[Callable[[], object]] = [
            lambda: stub.Publish(pb.PublishRequest(topic="t", payload=b"x"), timeout=1),
            lambda: stub.PublishBatch(
                pb.PublishBatchRequest(entries=[pb.PublishRequest(topic="t", payload=b"x")]),
                timeout=1,
            ),
            lambda: stub.DeleteRange(
                pb.DeleteRangeRequest(topic="t", from_head_id=1, to_head_id=1), timeout=1
            ),
            lambda: stub.EnqueueFifo(
                pb.EnqueueFifoRequest(queue="q", topic="t", target=local, payload=b"x"),
                timeout=1,
            ),
        ]
        for write in writes:
            with pytest.raises(grpc.RpcError) as refused:
                write()
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "--no-recover" in (refused.value.details() or "")
        waiting = wait_until(
            lambda: failed_peer_state(stub, endpoint_b),
            message="the unreachable peer in ListPeerSyncStates",
        )
        assert "UNAVAILABLE" in waiting.last_error
        assert "recovery: waiting for peer" in a.stderr_text()
        assert heads(stub) == {}

        with start_node(tmp_path, "b", port=port_b):
            wait_until(lambda: ready(stub).ready, message="A ready once B answered")
            assert publish(stub, "t").head_id == 1
            assert "recovered 0 logs (0 messages) of this node from 1 peers" in a.stderr_text()
