"""Peers that lie, hang or break the rules: a real msgbusd against fake peers written here."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from msgbus_core import NodeId, TombstoneRange
from msgbus_proto import pb, rpc
from msgbus_server.testing import wait_until
from msgbus_testkit.logs import fetch_rows, heads, publish_many, to_pb
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import FakePeer, envelope, log_state, peer_state, start_node, sync_states

DELETE = "$msgbus.delete"
LogKey = tuple[str, str]


class ScriptedPeer(rpc.MsgbusServiceServicer):
    """Serves whatever the test puts in `logs`, honestly or not."""

    def __init__(self, node: NodeId) -> None:
        self.node = node
        self.logs: dict[LogKey, list[pb.MessageEnvelope]] = {}
        self.listed: dict[LogKey, int] = {}
        """Heads to announce instead of the last served one."""
        self.from_start: set[LogKey] = set()
        """Logs whose Fetch ignores from_head_id and starts at head 1."""
        self.health_hangs = False
        self.fetch_hangs = False
        self.fetch_started = threading.Event()

    def put(self, topic: str, origin: NodeId, messages: list[pb.MessageEnvelope]) -> None:
        # Replace the whole list: the server loop runs in another thread.
        self.logs[(topic, origin.key)] = list(messages)

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HealthResponse:
        if self.health_hangs:
            await asyncio.Event().wait()
        return pb.HealthResponse(status="SERVING", node=to_pb(self.node))

    async def ListHeads(
        self, request: pb.ListHeadsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListHeadsResponse:
        result = []
        for (topic, key), messages in sorted(self.logs.items()):
            head = self.listed.get((topic, key), max((m.head_id for m in messages), default=0))
            result.append(
                pb.TopicHead(topic=topic, origin=to_pb(NodeId.from_key(key)), head_id=head)
            )
        return pb.ListHeadsResponse(heads=result)

    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchResponse]:
        origin = request.origin
        key = (request.topic, f"{origin.tenant_id}/{origin.bl_name}/{origin.device_id}")
        self.fetch_started.set()
        start = 1 if key in self.from_start else request.from_head_id
        limit = request.limit or 100
        sent = 0
        for message in self.logs.get(key, []):
            if message.head_id >= start and sent < limit:
                yield pb.FetchResponse(message=message)
                sent += 1
        if self.fetch_hangs:
            await asyncio.Event().wait()


def _error_of(stub: rpc.MsgbusServiceStub, peer: str, topic: str, origin: NodeId) -> str:
    state = log_state(stub, peer, topic, origin)
    return state.last_error if state else ""


def test_malicious_peer_is_refused_log_by_log_and_the_daemon_restarts(tmp_path: Path) -> None:
    a_id, m_id, zed = node_id("a"), node_id("mallory"), node_id("zed")
    peer = ScriptedPeer(m_id)  # type: ignore[abstract]
    # Forged messages "from" the daemon under test.
    peer.put("events", a_id, [envelope("events", a_id, h, b"forged") for h in (1, 2, 3)])
    # A marker that is not JSON.
    peer.put(DELETE, m_id, [envelope(DELETE, m_id, 1, b"{not json")])
    # A well-formed marker from zed that deletes a's log: a node may only delete its own.
    forged_delete = TombstoneRange("events", a_id, 1, 3, 1_700_000_000_000).to_marker_payload()
    peer.put(DELETE, zed, [envelope(DELETE, zed, 1, forged_delete)])
    # A log with a hole at head 3.
    peer.put("gappy", m_id, [envelope("gappy", m_id, h, b"g") for h in (1, 2, 4, 5)])
    # A log that will later be rewritten under the daemon's feet.
    original = envelope("conflict", m_id, 1, b"first version")
    peer.put("conflict", m_id, [original])
    # And an honest log, which must keep flowing whatever the others do.
    peer.put("good", m_id, [envelope("good", m_id, h, b"ok") for h in (1, 2, 3)])

    with FakePeer(peer) as fake:
        # A new store would first recover its own logs from the peer, forged ones included
        # (recovery trusts its peers, SECURITY.md); this test is about a running node.
        a = start_node(
            tmp_path, "a", peers=[(fake.endpoint, m_id.key)], batch_limit=10, extra=["--no-recover"]
        )
        try:
            stub = a.stub()
            publish_many(stub, "events", 2, "mine")
            wait_until(lambda: len(fetch_rows(stub, "good", m_id)) == 3, message="the honest log")
            wait_until(lambda: len(fetch_rows(stub, "conflict", m_id)) == 1, message="conflict #1")

            # The log rewrites its own history: a different #1 (served again, as if the peer
            # ignored from_head_id) and a #2.
            peer.from_start.add(("conflict", m_id.key))
            peer.put(
                "conflict",
                m_id,
                [
                    envelope("conflict", m_id, 1, b"second version", id="rewritten-1"),
                    envelope("conflict", m_id, 2, b"more"),
                ],
            )
            peer.put("good", m_id, [envelope("good", m_id, h, b"ok") for h in range(1, 7)])

            expected_errors = {
                ("events", a_id): "never accepted from a peer",
                (DELETE, m_id): "invalid tombstone payload",
                (DELETE, zed): "must match its tombstone origin",
                ("gappy", m_id): "gap",
                ("conflict", m_id): "conflict",
            }
            wait_until(
                lambda: all(
                    text in _error_of(stub, fake.endpoint, topic, origin)
                    for (topic, origin), text in expected_errors.items()
                ),
                message="every rejection to be recorded",
            )
            wait_until(
                lambda: len(fetch_rows(stub, "good", m_id)) == 6, message="the honest log to go on"
            )

            def check_store() -> None:
                local = heads(stub)
                # Nothing forged was stored: a's own log is a's, no marker from the peer got in.
                mine = fetch_rows(stub, "events", a_id)
                assert sorted(r.payload for r in mine) == [b"mine-0", b"mine-1"]
                assert not any(r.deleted for r in mine)
                assert (DELETE, m_id.key) not in local
                assert (DELETE, zed.key) not in local
                # The gap stopped the log before the hole; the conflict kept the first version.
                assert local[("gappy", m_id.key)] == 2
                conflict = fetch_rows(stub, "conflict", m_id)
                assert [r.payload for r in conflict] == [b"first version"]

            check_store()
            gap_state = log_state(stub, fake.endpoint, "gappy", m_id)
            assert gap_state is not None
            assert (gap_state.local_head, gap_state.remote_head) == (2, 5)
            assert gap_state.last_synced_head == 2
            assert gap_state.consecutive_failures >= 1
            refused = log_state(stub, fake.endpoint, "events", a_id)
            assert refused is not None
            # A refusal is not retried, so it is not counted; once a's own publishes move its
            # head, the peer's forged copy also shows as a diverged history, counted once.
            assert refused.consecutive_failures in (1, 2)
            peer_level = wait_until(
                lambda: peer_state(stub, fake.endpoint), message="the peer record"
            )
            assert (peer_level.consecutive_failures, peer_level.last_error) == (0, "")

            # The daemon restarts cleanly: nothing bad was stored, the records are still there,
            # and the honest log still flows.
            states_before = {(s.topic, s.origin.device_id) for s in sync_states(stub)}
            a.restart()
            stub = a.stub()
            check_store()
            assert {(s.topic, s.origin.device_id) for s in sync_states(stub)} >= states_before
            peer.put("good", m_id, [envelope("good", m_id, h, b"ok") for h in range(1, 8)])
            wait_until(
                lambda: len(fetch_rows(stub, "good", m_id)) == 7, message="sync after the restart"
            )
        finally:
            a.kill()


def test_hung_peers_stall_nothing_and_shutdown_is_prompt(tmp_path: Path) -> None:
    """A peer that hangs in Health and one that hangs mid-Fetch: the third peer still syncs,
    and SIGTERM ends the daemon at once, sync task in the middle of a Fetch included."""
    b_id = node_id("b")
    stuck_health = ScriptedPeer(node_id("stuck1"))  # type: ignore[abstract]
    stuck_health.health_hangs = True
    stuck_fetch = ScriptedPeer(node_id("stuck2"))  # type: ignore[abstract]
    stuck_fetch.fetch_hangs = True
    stuck_fetch.put("slow", stuck_fetch.node, [envelope("slow", stuck_fetch.node, 1, b"x")])
    with (
        FakePeer(stuck_health) as hung1,
        FakePeer(stuck_fetch) as hung2,
        start_node(tmp_path, "b") as b,
    ):
        publish_many(b.stub(), "fine", 20)
        a = start_node(
            tmp_path,
            "a",
            peers=[
                (hung1.endpoint, stuck_health.node.key),
                (hung2.endpoint, stuck_fetch.node.key),
                (b.endpoint, b_id.key),
            ],
        )
        try:
            stub = a.stub()
            wait_until(
                lambda: len(fetch_rows(stub, "fine", b_id)) == 20, message="the healthy peer's data"
            )
            assert stuck_fetch.fetch_started.wait(30), "the daemon never fetched from stuck2"
            publish_many(b.stub(), "fine", 5, "later")
            wait_until(
                lambda: len(fetch_rows(stub, "fine", b_id)) == 25, message="more of it, still"
            )
            assert a.stop(timeout=20) == 0
            assert "did not stop in time" not in a.stderr_text() + a.stdout_text()
        finally:
            a.kill()


def test_a_peer_cannot_delete_across_origins_or_delete_this_nodes_logs(tmp_path: Path) -> None:
    """What the marker rules enforce, end to end, and what they cannot (SECURITY.md).

    Refused: a marker in zed's delete log naming yan's log (a marker deletes only its own
    origin's log), and any marker in this node's own delete log (own-origin logs never come from
    a peer). Accepted, as the control: a marker in yan's delete log naming yan's log, relayed by
    a peer that is not yan. Relaying third parties' markers is how deletes reach every node, and
    without signatures a relay that forges one cannot be told from one that forwards it.
    """
    a_id, m_id, zed, yan = node_id("a"), node_id("mallory"), node_id("zed"), node_id("yan")
    peer = ScriptedPeer(m_id)  # type: ignore[abstract]
    peer.put("events", yan, [envelope("events", yan, h, b"yan") for h in (1, 2, 3)])
    peer.put("events", zed, [envelope("events", zed, h, b"zed") for h in (1, 2, 3)])
    across = TombstoneRange("events", yan, 1, 2, 1_700_000_000_000).to_marker_payload()
    peer.put(DELETE, zed, [envelope(DELETE, zed, 1, across)])
    as_this_node = TombstoneRange("events", a_id, 1, 2, 1_700_000_000_000).to_marker_payload()
    peer.put(DELETE, a_id, [envelope(DELETE, a_id, 1, as_this_node)])
    relayed = TombstoneRange("events", yan, 3, 3, 1_700_000_000_000).to_marker_payload()
    peer.put(DELETE, yan, [envelope(DELETE, yan, 1, relayed)])

    with FakePeer(peer) as fake:
        a = start_node(tmp_path, "a", peers=[(fake.endpoint, m_id.key)], extra=["--no-recover"])
        try:
            stub = a.stub()
            publish_many(stub, "events", 2, "mine")
            expected_errors = {
                (DELETE, zed): "must match its tombstone origin",
                (DELETE, a_id): "never accepted from a peer",
            }
            wait_until(
                lambda: all(
                    text in _error_of(stub, fake.endpoint, topic, origin)
                    for (topic, origin), text in expected_errors.items()
                ),
                message="both forged markers to be refused and recorded",
            )
            wait_until(
                lambda: [r.deleted for r in fetch_rows(stub, "events", yan)] == [0, 0, 1],
                message="the relayed marker of yan to erase yan's head 3",
            )
            wait_until(lambda: len(fetch_rows(stub, "events", zed)) == 3, message="zed's log")

            def check_store() -> None:
                local = heads(stub)
                assert (DELETE, zed.key) not in local
                assert (DELETE, a_id.key) not in local
                assert local[(DELETE, yan.key)] == 1
                # Yan's heads 1-2 survive the cross-origin marker; only yan's own marker applied.
                rows = fetch_rows(stub, "events", yan)
                assert [(r.payload, r.deleted) for r in rows] == [
                    (b"yan", False),
                    (b"yan", False),
                    (b"", True),
                ]
                assert not any(r.deleted for r in fetch_rows(stub, "events", zed))
                # publish_many sends both at once, so either may take head 1.
                mine = fetch_rows(stub, "events", a_id)
                assert sorted((r.payload, r.deleted) for r in mine) == [
                    (b"mine-0", False),
                    (b"mine-1", False),
                ]

            check_store()
            a.restart()
            stub = a.stub()
            check_store()
        finally:
            a.kill()
