"""Sync state stays bounded: pruned peers, no rows for logs simply in sync, paged listings."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from msgbus_core import NodeId, PeerSyncState, RecordSyncStateOp
from msgbus_proto import pb, rpc
from msgbus_sdk import ConfigurationError, MsgbusClient
from msgbus_server.testing import free_port, wait_until
from msgbus_store_sqlite import SqliteStore
from msgbus_testkit.logs import fetch_rows, publish_many
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import log_state, peer_state, start_node, sync_states

StateKey = tuple[str, str, str]


def _key(state: pb.PeerSyncState) -> StateKey:
    origin = state.origin
    return (state.peer, state.topic, NodeId(origin.tenant_id, origin.bl_name, origin.device_id).key)


def _page(
    stub: rpc.MsgbusServiceStub, page_size: int = 0, page_token: str = ""
) -> pb.ListPeerSyncStatesResponse:
    request = pb.ListPeerSyncStatesRequest(page_size=page_size, page_token=page_token)
    response: pb.ListPeerSyncStatesResponse = stub.ListPeerSyncStates(request, timeout=30)
    return response


def _all_pages(stub: rpc.MsgbusServiceStub, page_size: int) -> list[list[pb.PeerSyncState]]:
    pages: list[list[pb.PeerSyncState]] = []
    token = ""
    while True:
        response = _page(stub, page_size, token)
        pages.append(list(response.states))
        token = response.next_page_token
        if not token:
            return pages


def _publish_logs(stub: rpc.MsgbusServiceStub, topics: list[str]) -> None:
    """One message on each topic, in PublishBatch calls of 500."""
    for start in range(0, len(topics), 500):
        entries = [pb.PublishRequest(topic=t, payload=b"x") for t in topics[start : start + 500]]
        stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)


def test_rows_of_a_peer_no_longer_configured_are_pruned_at_startup(tmp_path: Path) -> None:
    b_id, c_id = node_id("b"), node_id("c")
    with start_node(tmp_path, "b") as b, start_node(tmp_path, "c") as c:
        for stub in (b.stub(), c.stub()):
            publish_many(stub, "one", 2)
            publish_many(stub, "two", 3)
        peers = [(b.endpoint, b_id.key), (c.endpoint, c_id.key)]
        with start_node(tmp_path, "a", peers=peers) as a:
            a_stub = a.stub()
            for endpoint, origin in ((b.endpoint, b_id), (c.endpoint, c_id)):
                for topic, head in (("one", 2), ("two", 3)):
                    wait_until(
                        lambda: (
                            (s := log_state(a_stub, endpoint, topic, origin))  # noqa: B023
                            and s.last_synced_head == head  # noqa: B023
                        ),
                        message=f"A's state of {topic} from {endpoint}",
                    )
            before = {_key(s) for s in sync_states(a_stub)}
        assert {peer for peer, _, _ in before} == {b.endpoint, c.endpoint}

        # C is removed from the configuration: its three rows go, B's stay.
        with start_node(tmp_path, "a", peers=[(b.endpoint, b_id.key)]) as a:
            after = {_key(s) for s in sync_states(a.stub())}
            assert after == {key for key in before if key[0] == b.endpoint}
            assert f"pruned 3 sync state rows of peers no longer configured: {c.endpoint} (3)" in (
                a.stderr_text()
            )
            # The pruned peer's logs are kept: only its sync state went.
            assert len(fetch_rows(a.stub(), "two", c_id)) == 3

        # No peer at all: every row goes, and a start with nothing to prune says nothing.
        with start_node(tmp_path, "a") as a:
            assert sync_states(a.stub()) == []
            assert f"pruned 3 sync state rows of peers no longer configured: {b.endpoint} (3)" in (
                a.stderr_text()
            )
        with start_node(tmp_path, "a") as a:
            assert sync_states(a.stub()) == []
            assert "pruned" not in a.stderr_text()


def test_logs_simply_in_sync_write_no_row(tmp_path: Path) -> None:
    """Two nodes pulling from each other: each one's own logs are in sync on the other side."""
    a_id, b_id = node_id("a"), node_id("b")
    port_a, port_b = free_port(), free_port()
    ep_a, ep_b = f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"
    with (
        start_node(tmp_path, "a", port=port_a, peers=[(ep_b, b_id.key)]) as a,
        start_node(tmp_path, "b", port=port_b, peers=[(ep_a, a_id.key)]) as b,
    ):
        a_stub, b_stub = a.stub(), b.stub()
        publish_many(a_stub, "mine", 4)
        publish_many(b_stub, "theirs", 5)
        wait_until(lambda: len(fetch_rows(a_stub, "theirs", b_id)) == 5, message="theirs on A")
        wait_until(lambda: len(fetch_rows(b_stub, "mine", a_id)) == 4, message="mine on B")
        pulled = wait_until(
            lambda: (
                (s := log_state(a_stub, ep_b, "theirs", b_id)) and s.last_synced_head == 5 and s
            ),
            message="A's state of the log it pulled",
        )
        assert (pulled.local_head, pulled.remote_head, pulled.last_error) == (5, 5, "")
        snapshot = sync_states(a_stub)
        # Passes go on while B moves another log that A pulls; then A has run full passes on
        # which B listed A's own log "mine" at A's head: simply in sync, so no row.
        for round_ in range(3):
            publish_many(b_stub, "busy", 1, f"r{round_}")
            wait_until(
                lambda: len(fetch_rows(a_stub, "busy", b_id)) == round_ + 1,  # noqa: B023
                message="busy on A",
            )
        states = sync_states(a_stub)
        assert log_state(a_stub, ep_b, "mine", a_id) is None
        assert {(s.topic, s.origin.device_id) for s in states} == {
            ("", ""),
            ("theirs", "b"),
            ("busy", "b"),
        }
        # The row of the log that did not move was not rewritten (timestamps included). The
        # peer-level row is, on every pass that stored data.
        assert [s for s in states if s.topic == "theirs"] == [
            s for s in snapshot if s.topic == "theirs"
        ]
        # And B, symmetrically, has a row for what it pulled and none for its own logs.
        assert {(s.topic, s.origin.device_id) for s in sync_states(b_stub)} == {
            ("", ""),
            ("mine", "a"),
        }


def test_list_peer_sync_states_pages_over_thousands_of_logs(tmp_path: Path) -> None:
    b_id = node_id("b")
    topics = [f"log.{n:04d}" for n in range(2500)]
    with start_node(tmp_path, "b") as b:
        _publish_logs(b.stub(), topics)
        with start_node(tmp_path, "a", peers=[(b.endpoint, b_id.key)], batch_limit=100) as a:
            stub = a.stub()
            wait_until(
                lambda: len(_page(stub).states) == 2501,
                message="a row for every log pulled and one for the peer",
                timeout=240,
                interval=0.5,
            )
            # Settled: idle passes write nothing, so the listing no longer changes.
            unpaged = list(_page(stub).states)
            assert _page(stub).next_page_token == ""
            assert [_key(s) for s in unpaged] == sorted(_key(s) for s in unpaged)
            for size in (1, 7, 1000):
                pages = _all_pages(stub, size)
                assert all(len(page) == size for page in pages[:-1]), size
                assert 1 <= len(pages[-1]) <= size
                assert [s for page in pages for s in page] == unpaged

            # The SDK follows the pages, whichever their size.
            expected = [(s.peer, s.topic, s.last_synced_head) for s in unpaged]
            with MsgbusClient.connect(a.endpoint) as bus:
                listed = bus.list_peer_sync_states()
                assert [(s.peer, s.topic, s.last_synced_head) for s in listed] == expected
                iterated = bus.iter_peer_sync_states(page_size=7)
                assert [(s.peer, s.topic, s.last_synced_head) for s in iterated] == expected
                with pytest.raises(ConfigurationError, match="page_size"):
                    list(bus.iter_peer_sync_states(page_size=0))

            with pytest.raises(grpc.RpcError) as refused:
                _page(stub, 5, "not a token")
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "page_token" in str(refused.value.details())


def test_page_size_zero_and_above_the_maximum(tmp_path: Path) -> None:
    """10,050 rows of one peer: one response unpaged, pages of 1,000 by default, 10,000 at most."""
    port = free_port()
    peer = f"127.0.0.1:{port}"  # configured, so its rows are kept, but nobody listens there
    data_dir = tmp_path / "a"
    data_dir.mkdir()
    store = SqliteStore.open(str(data_dir / "msgbus.sqlite"))
    origin = NodeId("tenant", "default", "b")
    rows = [
        PeerSyncState(peer, f"log.{n:05d}", origin, n, n, n, 1, 1, 0, "") for n in range(1, 10_051)
    ]
    store.write([RecordSyncStateOp(state) for state in rows])
    store.close()
    with start_node(tmp_path, "a", peers=[(peer, "tenant/default/b")]) as a:
        stub = a.stub()
        # The peer-level row appears with the first failed pass; after that only its values move.
        wait_until(lambda: peer_state(stub, peer), message="the unreachable peer's row")
        unpaged = _page(stub)
        assert unpaged.next_page_token == ""
        logs = [s for s in unpaged.states if s.topic]
        assert len(logs) == 10_050
        assert [s.topic for s in logs] == [r.topic for r in rows]

        first = _page(stub, 50_000)
        assert len(first.states) == 10_000  # clamped to the maximum
        rest = _page(stub, 50_000, first.next_page_token)
        assert rest.next_page_token == ""
        assert [_key(s) for s in [*first.states, *rest.states]] == [_key(s) for s in unpaged.states]

        # page_size 0 with a token: the default page of 1,000.
        default = _page(stub, 0, _page(stub, 1).next_page_token)
        assert len(default.states) == 1000
        assert [_key(s) for s in default.states] == [_key(s) for s in unpaged.states[1:1001]]
        assert default.next_page_token
