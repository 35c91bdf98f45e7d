"""Helpers for the peer sync tests: real msgbusd processes, real files, real gRPC.

Nothing here sleeps for a fixed time: every wait polls a condition until a deadline and fails
with a description of what was still missing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon

T = TypeVar("T")

WAIT_S = 60.0
"""How long a convergence may take before a test fails (generous: the CI box is shared)."""

SYNC_ARGS = ("--sync-interval-ms", "100")
"""Fast passes, so that tests converge quickly; the backoff cap follows the interval."""


def wait_for(
    condition: Callable[[], T | bool | None],
    what: str,
    timeout: float = WAIT_S,
    poll: float = 0.05,
) -> T:
    """Poll `condition` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                # A bare `True` only comes from conditions whose callers ignore the result.
                return cast(T, result)
        except grpc.RpcError as error:  # a daemon restarting answers UNAVAILABLE for a moment
            last_error = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last_error})")
        time.sleep(poll)


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


def node_id(name: str) -> NodeId:
    """The NodeId `start_node` gives a daemon named `name`."""
    return NodeId("tenant", "default", name)


def to_pb(node: NodeId) -> pb.NodeId:
    """A NodeId as the wire sees it."""
    return pb.NodeId(tenant_id=node.tenant_id, bl_name=node.bl_name, device_id=node.device_id)


@dataclass(frozen=True)
class Row:
    """What a converged log must agree on, message by message."""

    id: str
    head_id: int
    payload: bytes
    headers: tuple[tuple[str, str], ...]
    created_at_ms: int
    deleted: bool


LogDump = dict[tuple[str, str], list[Row]]


def publish(stub: rpc.MsgbusServiceStub, topic: str, count: int, prefix: str = "m") -> None:
    """Publish `count` messages, up to 64 in flight (concurrent publishes share a commit)."""
    pending: list[grpc.Future] = []  # type: ignore[type-arg]
    for i in range(count):
        request = pb.PublishRequest(
            topic=topic, payload=f"{prefix}-{i}".encode(), headers={"n": str(i)}
        )
        pending.append(stub.Publish.future(request, timeout=30))
        if len(pending) >= 64:
            for future in pending:
                future.result()
            pending.clear()
    for future in pending:
        future.result()


def heads(stub: rpc.MsgbusServiceStub) -> dict[tuple[str, str], int]:
    """Every log's head: (topic, origin key) -> head_id."""
    reply = stub.ListHeads(pb.ListHeadsRequest(), timeout=10)
    return {
        (h.topic, f"{h.origin.tenant_id}/{h.origin.bl_name}/{h.origin.device_id}"): h.head_id
        for h in reply.heads
    }


def fetch_all(stub: rpc.MsgbusServiceStub, topic: str, origin: NodeId) -> list[Row]:
    """Every message of one log, page by page."""
    rows: list[Row] = []
    next_head = 1
    while True:
        page = [
            r.message
            for r in stub.Fetch(
                pb.FetchRequest(
                    topic=topic, origin=to_pb(origin), from_head_id=next_head, limit=10_000
                ),
                timeout=30,
            )
            if r.HasField("message")
        ]
        for m in page:
            rows.append(
                Row(
                    m.id,
                    m.head_id,
                    m.payload,
                    tuple(sorted(m.headers.items())),
                    m.created_at_ms,
                    m.deleted,
                )
            )
        if not page:
            return rows
        next_head = page[-1].head_id + 1


def dump(stub: rpc.MsgbusServiceStub) -> LogDump:
    """Every log of a daemon, in full."""
    return {
        (topic, key): fetch_all(stub, topic, NodeId.from_key(key))
        for (topic, key) in sorted(heads(stub))
    }


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
        if (
            state.peer == peer
            and state.topic == topic
            and state.origin.device_id == origin.device_id
            and state.origin.tenant_id == origin.tenant_id
            and state.origin.bl_name == origin.bl_name
        ):
            return state
    return None


def check_log_shape(rows: list[Row], what: str) -> None:
    """A log has heads 1..n with no gap and no duplicate, and unique ids."""
    assert [r.head_id for r in rows] == list(range(1, len(rows) + 1)), f"gap or duplicate: {what}"
    assert len({r.id for r in rows}) == len(rows), f"duplicate id in {what}"
    for r in rows:
        if r.deleted:
            assert r.payload == b"", f"deleted row keeps its payload in {what}"
            assert r.headers == (), f"deleted row keeps its headers in {what}"


def converged(stubs: Sequence[rpc.MsgbusServiceStub], expect_logs: int) -> LogDump | None:
    """The common dump when every daemon holds identical logs (and at least `expect_logs`)."""
    dumps = [dump(s) for s in stubs]
    first = dumps[0]
    if len(first) < expect_logs:
        return None
    if all(d == first for d in dumps[1:]):
        return first
    return None


class FakePeer:
    """A grpc.aio server written in the test, run on its own event loop in a thread.

    The test body stays synchronous (it polls daemons with blocking stubs), while the fake peer
    keeps answering the daemon under test from its own loop.
    """

    def __init__(self, servicer: rpc.MsgbusServiceServicer) -> None:
        self._servicer = servicer
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

    async def _start(self, port: int) -> int:
        self._server = grpc.aio.server()
        rpc.add_MsgbusServiceServicer_to_server(self._servicer, self._server)
        bound = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()
        return bound

    def __enter__(self) -> FakePeer:
        self._thread.start()
        self.port = self.run(self._start(0))
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
