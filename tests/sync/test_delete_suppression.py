"""A relay cannot suppress an origin's delete, nor delete an origin's messages by itself.

Origin a -> relay -> downstream d. A lying relay (a servicer written here, relaying a's real
data) flags a's real delete marker deleted, so that d would store it without its tombstone and
later take the genuine marker as an unchanged copy, and it serves copies of a's messages
deleted that a never deleted. d refuses both, records them, and applies the delete once it can
pull from an honest peer. An honest relay (a real daemon) carries the delete to d.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.logs import fetch_rows, publish, to_pb
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import FakePeer, log_state, start_node

DELETE = "$msgbus.delete"


class SuppressingRelay(rpc.MsgbusServiceServicer):
    """Relays the upstream daemon's logs under its own identity, with two lies.

    Every message of a `$msgbus.delete` log is served deleted (a deleted row's envelope: no
    payload), and the messages of `forged_topic` after head 1 are served deleted although the
    origin never deleted them.
    """

    def __init__(self, upstream: str, node: NodeId, forged_topic: str) -> None:
        self.upstream = upstream
        self.node = node
        self.forged_topic = forged_topic
        self._stub: Any = None

    def _peer(self) -> Any:
        # Made on first use, on the fake peer's own event loop.
        if self._stub is None:
            self._stub = rpc.MsgbusServiceStub(grpc.aio.insecure_channel(self.upstream))
        return self._stub

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HealthResponse:
        response: pb.HealthResponse = await self._peer().Health(request, timeout=10)
        response.node.CopyFrom(to_pb(self.node))
        return response

    async def ListHeads(
        self, request: pb.ListHeadsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListHeadsResponse:
        response: pb.ListHeadsResponse = await self._peer().ListHeads(request, timeout=10)
        return response

    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchResponse]:
        response: pb.FetchResponse
        async for response in self._peer().Fetch(request, timeout=60):
            messages = [response.message] if response.HasField("message") else response.messages
            for message in messages:
                forged = message.topic == self.forged_topic and message.head_id > 1
                if message.topic == DELETE or forged:
                    message.deleted = True
                    message.payload = b""
                    message.headers.clear()
            yield response


def _rows(daemon: Daemon, topic: str, origin: NodeId) -> list[tuple[int, bool]]:
    return [(r.head_id, r.deleted) for r in fetch_rows(daemon.stub(), topic, origin)]


def _delete(daemon: Daemon, topic: str, head_id: int) -> None:
    request = pb.DeleteRangeRequest(topic=topic, from_head_id=head_id, to_head_id=head_id)
    daemon.stub().DeleteRange(request, timeout=30)


def test_a_relay_can_neither_suppress_a_delete_nor_forge_one(tmp_path: Path) -> None:
    a_id, relay_id = node_id("a"), node_id("relay")
    with start_node(tmp_path, "a") as a:
        for n in (1, 2, 3):
            publish(a.stub(), "events", b"e%d" % n)
        relay = SuppressingRelay(a.endpoint, relay_id, forged_topic="other")  # type: ignore[abstract]
        with FakePeer(relay) as fake:
            d = start_node(tmp_path, "d", peers=[(fake.endpoint, relay_id.key)])
            try:
                wait_until(
                    lambda: _rows(d, "events", a_id) == [(1, False), (2, False), (3, False)],
                    message="d to hold a's events through the relay",
                )
                # a deletes events 2 (a marker in its delete log) and publishes a log that the
                # relay serves deleted from head 2 on.
                _delete(a, "events", 2)
                for n in (1, 2, 3):
                    publish(a.stub(), "other", b"o%d" % n)

                def refusals() -> tuple[str, str] | None:
                    marker = log_state(d.stub(), fake.endpoint, DELETE, a_id)
                    other = log_state(d.stub(), fake.endpoint, "other", a_id)
                    if marker and marker.last_error and other and other.last_error:
                        return marker.last_error, other.last_error
                    return None

                marker_error, other_error = wait_until(
                    refusals, message="d to record both refusals"
                )
                assert "deleted copy of a delete marker refused" in marker_error
                assert f"origin={a_id.key} head_id=1" in marker_error
                assert (
                    f"deleted copy without a covering delete marker from origin {a_id.key}"
                ) in other_error
                assert "topic=other" in other_error
                assert "head_id=2" in other_error
                # Nothing of either lie was stored: no marker without its tombstone, no delete
                # a never made; the messages before the forged one were kept.
                assert _rows(d, DELETE, a_id) == []
                assert _rows(d, "events", a_id) == [(1, False), (2, False), (3, False)]
                assert _rows(d, "other", a_id) == [(1, False)]
                other_state = log_state(d.stub(), fake.endpoint, "other", a_id)
                assert other_state is not None
                assert other_state.last_synced_head == 1

                # Once d also pulls from an honest peer (a itself), a's delete applies on d,
                # and a's messages arrive live.
                d.stop()
                d = start_node(
                    tmp_path, "d", peers=[(fake.endpoint, relay_id.key), (a.endpoint, a_id.key)]
                )
                wait_until(
                    lambda: _rows(d, "events", a_id) == [(1, False), (2, True), (3, False)],
                    message="a's delete to apply on d",
                )
                wait_until(
                    lambda: _rows(d, "other", a_id) == [(1, False), (2, False), (3, False)],
                    message="a's other log to arrive live",
                )
                assert _rows(d, DELETE, a_id) == [(1, False)]
                assert "Traceback" not in d.stderr_text()
            finally:
                d.kill()


def test_an_honest_relay_carries_the_delete_downstream(tmp_path: Path) -> None:
    a_id, relay_id = node_id("a"), node_id("relay")
    with (
        start_node(tmp_path, "a") as a,
        start_node(tmp_path, "relay", peers=[(a.endpoint, a_id.key)]) as relay,
        start_node(tmp_path, "d", peers=[(relay.endpoint, relay_id.key)]) as d,
    ):
        for n in (1, 2, 3):
            publish(a.stub(), "events", b"e%d" % n)
        wait_until(
            lambda: _rows(d, "events", a_id) == [(1, False), (2, False), (3, False)],
            message="d to hold a's events through the relay",
        )
        # A delete of messages d holds live, and one of messages d has not seen yet: those
        # reach d as deleted copies, taken with the marker pulled first in the same pass.
        _delete(a, "events", 2)
        publish(a.stub(), "late", b"l1")
        publish(a.stub(), "late", b"l2")
        _delete(a, "late", 1)
        wait_until(
            lambda: _rows(d, "events", a_id) == [(1, False), (2, True), (3, False)],
            message="the delete of events 2 to reach d",
        )
        wait_until(
            lambda: _rows(d, "late", a_id) == [(1, True), (2, False)],
            message="the deleted copy of late 1 to reach d",
        )
        assert _rows(d, DELETE, a_id) == [(1, False), (2, False)]
        errors = [
            s.last_error
            for s in d.stub().ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=10).states
        ]
        assert not any(errors), errors
