"""Daemons converge: two and three real msgbusd processes replicating over loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from msgbus_proto import pb
from msgbus_server.testing import free_port, free_ports, wait_until
from msgbus_testkit.backends import backend_unavailable
from msgbus_testkit.logs import check_log_shape, converged, dump, fetch_rows, heads, publish_many
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import failed_peer_state, log_state, peer_state, start_node, sync_states

DELETE = "$msgbus.delete"


def test_original_sync_scenario_messages_then_delete_marker(tmp_path: Path) -> None:
    """Reference section 8: a message replicates, then its delete replicates."""
    remote = node_id("remote")
    with start_node(tmp_path, "remote") as b:
        b_stub = b.stub()
        b_stub.Publish(pb.PublishRequest(topic="events", payload=b"one"), timeout=10)
        with start_node(tmp_path, "local", peers=[(b.endpoint, remote.key)], batch_limit=10) as a:
            a_stub = a.stub()
            rows = wait_until(
                lambda: fetch_rows(a_stub, "events", remote), message="events/remote on A"
            )
            assert len(rows) == 1
            assert rows[0].payload == b"one"
            assert not rows[0].deleted

            b_stub.DeleteRange(
                pb.DeleteRangeRequest(topic="events", from_head_id=1, to_head_id=1), timeout=10
            )
            rows = wait_until(
                lambda: [r for r in fetch_rows(a_stub, "events", remote) if r.deleted],
                message="the delete to reach A",
            )
            assert len(rows) == 1
            assert rows[0].payload == b""  # delete erases, on the replica too
            # The marker log itself replicated, so A can pass the delete on.
            assert heads(a_stub)[(DELETE, remote.key)] == 1
            assert dump(a_stub) == dump(b_stub)


def test_three_nodes_in_a_line_converge_and_relay(tmp_path: Path) -> None:
    """A <-> B <-> C: each publishes, A deletes a range; all three end identical."""
    port_a, port_b, port_c = free_ports(3)
    ep = {name: f"127.0.0.1:{port}" for name, port in (("a", port_a), ("b", port_b), ("c", port_c))}
    a_id, b_id, c_id = node_id("a"), node_id("b"), node_id("c")
    with (
        start_node(tmp_path, "a", port=port_a, peers=[(ep["b"], b_id.key)], batch_limit=7) as a,
        start_node(
            tmp_path,
            "b",
            port=port_b,
            peers=[(ep["a"], a_id.key), (ep["c"], c_id.key)],
            batch_limit=7,
        ) as b,
        start_node(tmp_path, "c", port=port_c, peers=[(ep["b"], b_id.key)], batch_limit=7) as c,
    ):
        stubs = [a.stub(), b.stub(), c.stub()]
        publish_many(stubs[0], "orders", 40, "a")
        publish_many(stubs[0], "audit", 5, "a")
        publish_many(stubs[1], "orders", 25, "b")
        publish_many(stubs[2], "metrics", 30, "c")
        reply = stubs[0].DeleteRange(
            pb.DeleteRangeRequest(topic="orders", from_head_id=10, to_head_id=19), timeout=10
        )
        assert reply.deleted_count == 10
        # Logs: orders/a, audit/a, orders/b, metrics/c and A's marker log.
        final = wait_until(lambda: converged(stubs, 5), message="three identical nodes", timeout=90)
        assert set(final) == {
            ("orders", a_id.key),
            ("audit", a_id.key),
            (DELETE, a_id.key),
            ("orders", b_id.key),
            ("metrics", c_id.key),
        }
        for key, rows in final.items():
            check_log_shape(rows, f"{key}")
        orders_a = final[("orders", a_id.key)]
        assert len(orders_a) == 40
        assert [r.head_id for r in orders_a if r.deleted] == list(range(10, 20))
        # Publishes ran concurrently, so heads are in commit order, not in publish order.
        assert {r.payload for r in orders_a if not r.deleted} <= {
            f"a-{i}".encode() for i in range(40)
        }
        assert len(final[("metrics", c_id.key)]) == 30
        # C has no link to A: A's data reached it through B, and C's reached A the same way.
        assert final == dump(stubs[2])

        # State names each log and peer, without errors.
        c_states = sync_states(stubs[2])
        # State is written right after the data, so it may trail the data by a moment.
        relayed = wait_until(
            lambda: (
                (s := log_state(stubs[2], ep["b"], "orders", a_id))
                and s.last_synced_head == 40
                and s
            ),
            message="C's state for orders/a",
        )
        assert relayed.last_error == ""
        assert relayed.remote_head == relayed.local_head == 40
        assert {s.peer for s in c_states} == {ep["b"]}
        peer = peer_state(stubs[2], ep["b"])
        assert peer is not None
        assert (peer.consecutive_failures, peer.last_error) == (0, "")


def test_sync_state_is_written_only_when_it_changes(tmp_path: Path) -> None:
    """Idle passes write nothing: records of logs that did not move stay byte-identical."""
    b_id = node_id("b")
    with start_node(tmp_path, "b") as b:
        b_stub = b.stub()
        publish_many(b_stub, "quiet", 3)
        with start_node(tmp_path, "a", peers=[(b.endpoint, b_id.key)]) as a:
            a_stub = a.stub()
            wait_until(lambda: len(fetch_rows(a_stub, "quiet", b_id)) == 3, message="quiet/b on A")
            before = wait_until(
                lambda: log_state(a_stub, b.endpoint, "quiet", b_id),
                message="the quiet log's state",
            )
            # Another log moves; once A has it, A has run at least one more full pass.
            for round_ in range(3):
                publish_many(b_stub, "busy", 1, f"r{round_}")
                expected = round_ + 1
                wait_until(
                    lambda: len(fetch_rows(a_stub, "busy", b_id)) == expected,  # noqa: B023
                    message="busy/b on A",
                )
            after = log_state(a_stub, b.endpoint, "quiet", b_id)
            assert after == before  # timestamps included: not rewritten by the idle passes
            busy = wait_until(
                lambda: (
                    (s := log_state(a_stub, b.endpoint, "busy", b_id))
                    and s.last_synced_head == 3
                    and s
                ),
                message="the busy log's state",
            )
            assert (busy.local_head, busy.remote_head) == (3, 3)


def test_peer_killed_mid_sync_converges_without_gap_or_duplicate(tmp_path: Path) -> None:
    """B is SIGKILLed while it pulls A's backlog, restarted, and catches up exactly."""
    a_id = node_id("a")
    total = 3000
    with start_node(tmp_path, "a") as a:
        a_stub = a.stub()
        publish_many(a_stub, "bulk", total)
        # B pulls in small batches, so that the kill lands in the middle of the backlog.
        b = start_node(tmp_path, "b", peers=[(a.endpoint, a_id.key)], batch_limit=5)
        try:
            b_stub = b.stub()
            at_kill = wait_until(
                lambda: (h := heads(b_stub).get(("bulk", a_id.key), 0)) >= total // 5 and h,
                message="B to be well into the backlog",
                interval=0.01,
            )
            b.kill()
            print(f"B was killed after {at_kill} of {total} messages")
            b.restart()
            b_stub = b.stub()
            rows = wait_until(
                lambda: (r := fetch_rows(b_stub, "bulk", a_id)) and len(r) >= total and r,
                message="B to catch up after the crash",
                timeout=120,
            )
            check_log_shape(rows, "bulk on B")
            assert rows == fetch_rows(a_stub, "bulk", a_id)
            state = wait_until(
                lambda: (
                    (s := log_state(b_stub, a.endpoint, "bulk", a_id))
                    and s.last_synced_head == total
                    and s
                ),
                message="B's state to show the catch-up",
            )
            assert state.last_error == ""
        finally:
            b.kill()


def test_peer_down_at_startup_catches_up_later(tmp_path: Path) -> None:
    """A starts with its peer down, records the failure, and catches up when B appears."""
    b_id = node_id("b")
    port_b = free_port()
    endpoint_b = f"127.0.0.1:{port_b}"
    with start_node(tmp_path, "a", peers=[(endpoint_b, b_id.key)]) as a:
        a_stub = a.stub()
        failing = wait_until(
            lambda: (s := peer_state(a_stub, endpoint_b)) and s.consecutive_failures >= 1 and s,
            message="A to record that B is down",
        )
        assert "UNAVAILABLE" in failing.last_error
        assert failing.last_success_at_ms == 0
        with start_node(tmp_path, "b", port=port_b) as b:
            publish_many(b.stub(), "late", 50)
            rows = wait_until(
                lambda: (r := fetch_rows(a_stub, "late", b_id)) and len(r) == 50 and r,
                message="A to catch up with B",
            )
            check_log_shape(rows, "late on A")
            healthy = wait_until(
                lambda: (s := peer_state(a_stub, endpoint_b)) and s.consecutive_failures == 0 and s,
                message="A's peer state to recover",
            )
            assert healthy.last_error == ""
            assert healthy.last_success_at_ms > 0


def test_pinned_identity_mismatch_replicates_nothing(tmp_path: Path) -> None:
    """A peer that is not who --peer says is refused on every pass, and the error is visible."""
    with start_node(tmp_path, "b") as b:
        publish_many(b.stub(), "secret", 5)
        with start_node(tmp_path, "a", peers=[(b.endpoint, "tenant/default/someone-else")]) as a:
            a_stub = a.stub()
            state = wait_until(
                lambda: failed_peer_state(a_stub, b.endpoint),
                message="the identity error in ListPeerSyncStates",
            )
            assert "identity mismatch" in state.last_error
            assert "tenant/default/someone-else" in state.last_error
            assert "tenant/default/b" in state.last_error
            assert state.consecutive_failures >= 1
            # The identity is checked before anything else, so nothing came over.
            assert heads(a_stub) == {}
            assert [s for s in sync_states(a_stub) if s.topic] == []


def test_a_peer_naming_the_local_node_is_refused(tmp_path: Path) -> None:
    """An unpinned peer that reports our own identity (a loop back to ourselves) is refused."""
    port = free_port()
    with start_node(tmp_path, "a", port=port, peers=[(f"127.0.0.1:{port}", None)]) as a:
        a_stub = a.stub()
        publish_many(a_stub, "mine", 2)
        state = wait_until(
            lambda: failed_peer_state(a_stub, a.endpoint),
            message="the self-peer error",
        )
        assert "local node identity" in state.last_error
        assert "identity is not pinned" in a.stderr_text() + a.stdout_text()


@pytest.mark.skipif(
    backend_unavailable("duckdb") is not None, reason=str(backend_unavailable("duckdb"))
)
def test_sqlite_and_duckdb_nodes_converge(tmp_path: Path) -> None:
    """Backend-neutral: a SQLite node and a DuckDB node end with identical logs."""
    port_s, port_d = free_ports(2)
    s_id, d_id = node_id("s"), node_id("d")
    with (
        start_node(
            tmp_path, "s", port=port_s, peers=[(f"127.0.0.1:{port_d}", d_id.key)], batch_limit=9
        ) as s,
        start_node(
            tmp_path,
            "d",
            storage="duckdb",
            port=port_d,
            peers=[(f"127.0.0.1:{port_s}", s_id.key)],
            batch_limit=9,
        ) as d,
    ):
        stubs = [s.stub(), d.stub()]
        publish_many(stubs[0], "t", 30, "s")
        publish_many(stubs[1], "t", 20, "d")
        stubs[0].DeleteRange(
            pb.DeleteRangeRequest(topic="t", from_head_id=5, to_head_id=8), timeout=10
        )
        stubs[1].DeleteRange(
            pb.DeleteRangeRequest(topic="t", from_head_id=1, to_head_id=2), timeout=10
        )
        final = wait_until(lambda: converged(stubs, 4), message="SQLite and DuckDB to converge")
        for key, rows in final.items():
            check_log_shape(rows, f"{key}")
        assert [r.head_id for r in final[("t", s_id.key)] if r.deleted] == [5, 6, 7, 8]
        assert [r.head_id for r in final[("t", d_id.key)] if r.deleted] == [1, 2]


def test_two_way_peers_record_no_error_for_their_own_logs(tmp_path: Path) -> None:
    """A peer echoing back this daemon's own log (every two-way setup) is in sync, not refused.

    Only a peer claiming *more* of a local log than this daemon holds is refused (see
    test_hostile_peers); one holding the same or less is the normal state of two-way peering.
    """
    port_a, port_b = free_ports(2)
    ep_a, ep_b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"
    a_id, b_id = node_id("a"), node_id("b")
    with (
        start_node(tmp_path, "a", port=port_a, peers=[(ep_b, b_id.key)]) as a,
        start_node(tmp_path, "b", port=port_b, peers=[(ep_a, a_id.key)]) as b,
    ):
        a_stub, b_stub = a.stub(), b.stub()
        publish_many(a_stub, "events", 3, "a")
        wait_until(lambda: len(fetch_rows(b_stub, "events", a_id)) == 3, message="a's log on b")
        # b now lists a's own log at head 3. Once a has pulled a log that b published after
        # that, a has run a pass that saw it: simply in sync, so the log has no row at all (no
        # error, no failure count), and the peer's row records no error either.
        publish_many(b_stub, "later", 1, "b")
        wait_until(lambda: len(fetch_rows(a_stub, "later", b_id)) == 1, message="b's later log")
        assert log_state(a_stub, ep_b, "events", a_id) is None
        wait_until(
            lambda: (
                (s := peer_state(a_stub, ep_b))
                and (s.consecutive_failures, s.last_error) == (0, "")
            ),
            message="a's clean record of b",
        )
        assert fetch_rows(a_stub, "events", a_id) == fetch_rows(b_stub, "events", a_id)
