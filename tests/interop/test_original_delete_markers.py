"""An original redb node's "delete everything" marker, replicated into a real msgbusd.

Original redb nodes write to_head_id = u64::MAX for "delete everything". msgbusd used to refuse
that marker as malformed, and since a marker log syncs in order, every later delete from that
node was blocked behind it. Here a peer written in the test serves such a marker followed by an
ordinary one; the daemon must apply both, and keep applying the first to later messages, as the
original does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from msgbus_core import NodeId, TombstoneRange
from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon

DELETE = "$msgbus.delete"
REDB = NodeId("tenant", "default", "redb-node")
DELETE_EVERYTHING = (
    b'{"topic":"events","origin":{"tenant_id":"tenant","bl_name":"default",'
    b'"device_id":"redb-node"},"from_head_id":1,"to_head_id":18446744073709551615,'
    b'"created_at_ms":1700000000000}'
)


def _pb_node(node: NodeId) -> pb.NodeId:
    return pb.NodeId(tenant_id=node.tenant_id, bl_name=node.bl_name, device_id=node.device_id)


def _envelope(topic: str, head_id: int, payload: bytes) -> pb.MessageEnvelope:
    return pb.MessageEnvelope(
        id=f"{topic}-{head_id}",
        topic=topic,
        origin=_pb_node(REDB),
        head_id=head_id,
        payload=payload,
        created_at_ms=1_700_000_000_000 + head_id,
    )


class OriginalPeer(rpc.MsgbusServiceServicer):
    """Serves the logs of an original redb node: Health, ListHeads and Fetch."""

    def __init__(self) -> None:
        self.logs: dict[str, list[pb.MessageEnvelope]] = {}

    def put(self, topic: str, payloads: list[bytes]) -> None:
        # Replace the whole list: the server reads it from its own threads.
        self.logs[topic] = [_envelope(topic, i, p) for i, p in enumerate(payloads, start=1)]

    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> pb.HealthResponse:
        return pb.HealthResponse(status="SERVING", node=_pb_node(REDB))

    def ListHeads(
        self, request: pb.ListHeadsRequest, context: grpc.ServicerContext
    ) -> pb.ListHeadsResponse:
        heads = [
            pb.TopicHead(topic=topic, origin=_pb_node(REDB), head_id=len(messages))
            for topic, messages in sorted(self.logs.items())
        ]
        return pb.ListHeadsResponse(heads=heads)

    def Fetch(
        self, request: pb.FetchRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.FetchResponse]:
        messages = self.logs.get(request.topic, [])
        page = [m for m in messages if m.head_id >= request.from_head_id][: request.limit or 100]
        for message in page:
            yield pb.FetchResponse(message=message)


@pytest.fixture
def original_peer() -> Iterator[tuple[OriginalPeer, str]]:
    """The fake original node on a free loopback port."""
    peer = OriginalPeer()  # type: ignore[abstract]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_MsgbusServiceServicer_to_server(peer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield peer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def _rows(stub: rpc.MsgbusServiceStub, topic: str) -> list[tuple[int, bool]]:
    request = pb.FetchRequest(topic=topic, origin=_pb_node(REDB), from_head_id=1, limit=100)
    return [(r.message.head_id, r.message.deleted) for r in stub.Fetch(request, timeout=10)]


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except grpc.RpcError:
            pass  # the daemon may be between sync passes or restarting
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite", "duckdb"])
def test_delete_everything_marker_applies_and_later_deletes_from_that_node_still_do(
    backend: str, original_peer: tuple[OriginalPeer, str], tmp_path: Path
) -> None:
    peer, endpoint = original_peer
    later_delete = TombstoneRange("other", REDB, 1, 1, 1_700_000_000_500).to_marker_payload()
    peer.put("events", [b"e1", b"e2", b"e3"])
    peer.put("other", [b"o1", b"o2"])
    peer.put(DELETE, [DELETE_EVERYTHING, later_delete])
    args = ["--peer", f"{endpoint}={REDB.key}", "--sync-interval-ms", "100"]
    with Daemon.start(
        tmp_path, storage=backend, node="tenant/default/local", extra_args=args
    ) as daemon:
        stub = daemon.stub()
        _wait(
            lambda: _rows(stub, "events") == [(1, True), (2, True), (3, True)], "delete-everything"
        )
        # The marker behind it is no longer blocked.
        _wait(lambda: _rows(stub, "other") == [(1, True), (2, False)], "the later delete")
        assert _rows(stub, DELETE) == [(1, False), (2, False)]
        states = stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=10).states
        assert [s.last_error for s in states if s.topic == DELETE] == [""]

        # Like the original's, the tombstone also covers what the node publishes afterwards.
        peer.put("events", [b"e1", b"e2", b"e3", b"e4"])
        _wait(lambda: len(_rows(stub, "events")) == 4, "a later message")
        assert _rows(stub, "events")[-1] == (4, True)

        # And it survives a restart (markers are replayed at startup).
        daemon.restart()
        stub = daemon.stub()
        assert _rows(stub, "events") == [(h, True) for h in (1, 2, 3, 4)]
        assert "Traceback" not in daemon.stderr_text()
