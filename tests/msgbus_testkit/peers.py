"""Peers for sync tests: daemons that pull from each other, and fake peers written in the test."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from workloads.logs import to_pb

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon

T = TypeVar("T")

SYNC_ARGS = ("--sync-interval-ms", "100")
"""Fast passes, so that tests converge quickly; the backoff cap follows the interval."""


@contextlib.asynccontextmanager
async def in_process_server(servicer: rpc.MsgbusServiceServicer) -> AsyncIterator[str]:
    """Serve `servicer` on a free loopback port in this event loop; yield its endpoint.

    For hand-written daemons and peers (an original daemon's subset of RPCs, a peer that
    misbehaves) that a test drives from the same loop.
    """
    server = grpc.aio.server()
    rpc.add_MsgbusServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def in_process_peer(
    servicer: rpc.MsgbusServiceServicer, channel_options: Sequence[tuple[str, Any]] = ()
) -> AsyncIterator[rpc.MsgbusServiceAsyncStub]:
    """`in_process_server`, and a stub of a channel to it (with `channel_options`), for tests
    that drive sync's client side directly."""
    async with in_process_server(servicer) as endpoint:
        channel = grpc.aio.insecure_channel(endpoint, options=list(channel_options))
        try:
            yield rpc.MsgbusServiceStub(channel)
        finally:
            await channel.close(grace=None)


def peer_arg(daemon_endpoint: str, node: str | NodeId | None = None) -> list[str]:
    """`--peer endpoint[=node]` arguments."""
    key = node.key if isinstance(node, NodeId) else node
    return ["--peer", f"{daemon_endpoint}={key}" if key else daemon_endpoint]


def start_node(
    data_dir: Path,
    node: str,
    *,
    peers: Sequence[tuple[str, str | None]] = (),
    storage: str = "sqlite",
    port: int | None = None,
    batch_limit: int | None = None,
    extra: Sequence[str] = (),
    credentials: grpc.ChannelCredentials | None = None,
) -> Daemon:
    """Start a daemon named `node` (tenant/default/<node>) pulling from `peers`."""
    args: list[str] = [*SYNC_ARGS]
    for endpoint, key in peers:
        args += peer_arg(endpoint, key)
    if batch_limit is not None:
        args += ["--sync-batch-limit", str(batch_limit)]
    args += list(extra)
    return Daemon.start(
        data_dir / node,
        storage=storage,
        node=f"tenant/default/{node}",
        extra_args=args,
        port=port,
        credentials=credentials,
    )


def sync_states(stub: rpc.MsgbusServiceStub) -> list[pb.PeerSyncState]:
    """ListPeerSyncStates."""
    return list(stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=10).states)


def peer_state(stub: rpc.MsgbusServiceStub, peer: str) -> pb.PeerSyncState | None:
    """The peer-level sync state record of `peer`, if any."""
    for state in sync_states(stub):
        if state.peer == peer and not state.topic:
            return state
    return None


def failed_peer_state(stub: rpc.MsgbusServiceStub, peer: str) -> pb.PeerSyncState | None:
    """The peer-level sync state of `peer` once it records an error, else None."""
    state = peer_state(stub, peer)
    return state if state is not None and state.last_error else None


def log_state(
    stub: rpc.MsgbusServiceStub, peer: str, topic: str, origin: NodeId
) -> pb.PeerSyncState | None:
    """The sync state record of one log from `peer`, if any."""
    for state in sync_states(stub):
        if state.peer == peer and state.topic == topic and state.origin == to_pb(origin):
            return state
    return None


class FakePeer:
    """A servicer written in the test, served by grpc.aio on its own event loop in a thread.

    The test body stays synchronous (it polls daemons with blocking stubs), while the fake peer
    keeps answering the daemon under test from its own loop.
    """

    def __init__(self, servicer: rpc.MsgbusServiceServicer) -> None:
        self.servicer = servicer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT`."""
        return f"127.0.0.1:{self.port}"

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the fake peer's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    async def _start(self) -> int:
        self._server = grpc.aio.server()
        rpc.add_MsgbusServiceServicer_to_server(self.servicer, self._server)
        bound = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return bound

    def __enter__(self) -> FakePeer:
        self._thread.start()
        self.port = self.run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self.run(self._server.stop(None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def envelope(
    topic: str,
    origin: NodeId,
    head_id: int,
    payload: bytes,
    *,
    id: str | None = None,
    deleted: bool = False,
) -> pb.MessageEnvelope:
    """A message as a peer would serve it."""
    return pb.MessageEnvelope(
        id=id or f"{topic}-{origin.device_id}-{head_id}-{payload.hex()[:16]}",
        topic=topic,
        origin=to_pb(origin),
        head_id=head_id,
        payload=payload,
        created_at_ms=1_700_000_000_000 + head_id,
        deleted=deleted,
    )


class TransferPeer(rpc.MsgbusServiceServicer):
    """A peer whose Fetch of a log stalls or breaks mid-stream, as over a slow or flaky link.

    It serves `logs` honestly (from the requested head, at most `limit`, one message per
    response, no paging), except that a Fetch of a log in `stall_at` sends the heads below that
    head and then hangs until the client gives up, and a Fetch of a log in `break_after` aborts
    with UNAVAILABLE (as a reset connection does) after that many messages. `fetches` records
    every Fetch as it arrives. Serve it with `FakePeer`; the test thread may replace the dicts'
    entries at any time.
    """

    def __init__(self, node: NodeId) -> None:
        self.node = node
        self.logs: dict[tuple[str, str], list[pb.MessageEnvelope]] = {}
        self.stall_at: dict[tuple[str, str], int] = {}
        self.break_after: dict[tuple[str, str], int] = {}
        self.fetches: list[pb.FetchRequest] = []

    def put(self, topic: str, count: int, payload: bytes = b"x") -> None:
        """Make `topic` of this peer's own origin hold heads 1..`count`."""
        self.logs[(topic, self.node.key)] = [
            envelope(topic, self.node, head_id, payload) for head_id in range(1, count + 1)
        ]

    def fetches_of(self, topic: str) -> list[tuple[int, int]]:
        """(from_head_id, limit) of every Fetch of `topic`, in arrival order."""
        return [(f.from_head_id, f.limit) for f in list(self.fetches) if f.topic == topic]

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HealthResponse:
        return pb.HealthResponse(status="SERVING", node=to_pb(self.node))

    async def ListHeads(
        self, request: pb.ListHeadsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListHeadsResponse:
        return pb.ListHeadsResponse(
            heads=[
                pb.TopicHead(
                    topic=topic, origin=to_pb(NodeId.from_key(key)), head_id=messages[-1].head_id
                )
                for (topic, key), messages in sorted(self.logs.items())
                if messages
            ]
        )

    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchResponse]:
        self.fetches.append(request)
        origin = request.origin
        key = (request.topic, f"{origin.tenant_id}/{origin.bl_name}/{origin.device_id}")
        stall_at = self.stall_at.get(key)
        break_after = self.break_after.get(key)
        wanted = [m for m in self.logs.get(key, []) if m.head_id >= request.from_head_id]
        for sent, message in enumerate(wanted[: request.limit or 100]):
            if stall_at is not None and message.head_id >= stall_at:
                await asyncio.Event().wait()  # until the client cancels the call
            if break_after is not None and sent >= break_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset (test peer)")
            yield pb.FetchResponse(message=message)
