"""The batch fetcher against a real in-process gRPC peer, and the one failure classification."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from msgbus_core import NodeId
from msgbus_core.errors import StorageError
from msgbus_proto import pb, rpc
from msgbus_server.sync_fetch import BatchFetcher, FailureKind, SyncFailure, envelopes
from msgbus_server.testing import wait_until
from msgbus_testkit.peers import in_process_peer

ORIGIN = NodeId("t", "b", "remote")
OTHER = NodeId("t", "b", "other")
TOPIC = "events"


def envelope(head_id: int, topic: str = TOPIC, origin: NodeId = ORIGIN) -> pb.MessageEnvelope:
    return pb.MessageEnvelope(
        id=f"m{head_id}",
        topic=topic,
        origin=pb.NodeId(
            tenant_id=origin.tenant_id, bl_name=origin.bl_name, device_id=origin.device_id
        ),
        head_id=head_id,
        payload=b"x",
        created_at_ms=1,
    )


class Peer(rpc.MsgbusServiceServicer):
    """Serves `served` from the requested head: packed when asked, and ignoring the limit."""

    def __init__(self) -> None:
        self.served: list[pb.MessageEnvelope] = [envelope(h) for h in range(1, 11)]
        self.requests: list[pb.FetchRequest] = []
        self.hang = False
        self.cancelled = asyncio.Event()

    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchResponse]:
        self.requests.append(request)
        if self.hang:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        rest = [e for e in self.served if e.head_id >= request.from_head_id]
        if request.max_messages_per_response:
            size = request.max_messages_per_response
            for start in range(0, len(rest), size):
                yield pb.FetchResponse(messages=rest[start : start + size])
        else:
            for one in rest:
                yield pb.FetchResponse(message=one)


@pytest.fixture
async def peer() -> AsyncIterator[tuple[Peer, rpc.MsgbusServiceAsyncStub]]:
    servicer = Peer()  # type: ignore[abstract]  # serves Fetch only
    async with in_process_peer(servicer) as stub:
        yield servicer, stub


def fetcher(stub: rpc.MsgbusServiceAsyncStub, *, limit: int = 4, packing: int = 4) -> BatchFetcher:
    return BatchFetcher(
        stub, "peer:1", (TOPIC, ORIGIN), limit=limit, packing=packing, timeout_s=10.0
    )


async def test_packed_and_one_per_response_forms_give_the_same_batch(
    peer: tuple[Peer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    packed = await fetcher(stub, packing=3).batch(2)
    single = await fetcher(stub, packing=0).batch(2)
    assert [m.head_id for m in packed.messages] == [2, 3, 4, 5]
    assert [m.head_id for m in single.messages] == [2, 3, 4, 5]
    assert packed.problem is None
    assert [r.max_messages_per_response for r in servicer.requests] == [3, 0]
    assert all(r.limit == 4 for r in servicer.requests)


async def test_a_peer_that_ignores_the_limit_cannot_hand_over_more(
    peer: tuple[Peer, rpc.MsgbusServiceAsyncStub],
) -> None:
    _, stub = peer
    served = await fetcher(stub, limit=3, packing=10).batch(1)
    assert [m.head_id for m in served.messages] == [1, 2, 3]


async def test_another_logs_message_ends_the_batch_with_a_problem(
    peer: tuple[Peer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    servicer.served = [envelope(1), envelope(2), envelope(3, origin=OTHER), envelope(4)]
    served = await fetcher(stub).batch(1)
    assert [m.head_id for m in served.messages] == [1, 2]
    assert served.problem is not None
    assert "mismatched message" in served.problem
    assert "origin=t/b/other" in served.problem


async def test_repeated_heads_end_the_batch_with_a_problem(
    peer: tuple[Peer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    servicer.served = [envelope(1), envelope(2), envelope(2), envelope(3)]
    served = await fetcher(stub).batch(1)
    assert [m.head_id for m in served.messages] == [1, 2]
    assert served.problem is not None
    assert "out of order: head_id 2 after 2" in served.problem


async def test_a_message_without_origin_fails_the_log(
    peer: tuple[Peer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    servicer.served = [pb.MessageEnvelope(id="m1", topic=TOPIC, head_id=1)]
    with pytest.raises(SyncFailure) as info:
        await fetcher(stub).batch(1)
    assert info.value.kind is FailureKind.LOG
    assert str(info.value) == "message origin is required"


async def test_the_prefetched_batch_is_used_when_it_starts_where_asked(
    peer: tuple[Peer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    batches = fetcher(stub)
    first = await batches.batch(1)
    batches.prefetch(5)
    second = await batches.batch(5)
    batches.prefetch(9)
    third = await batches.batch(7)  # not where the prefetch started: fetched anew
    batches.close()
    assert [m.head_id for m in first.messages + second.messages] == list(range(1, 9))
    assert [m.head_id for m in third.messages] == [7, 8, 9, 10]
    # The unwanted prefetch from 9 is cancelled before it is sent.
    assert [r.from_head_id for r in servicer.requests] == [1, 5, 7]


async def test_close_cancels_a_prefetch_that_is_still_in_flight(
    peer: tuple[Peer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    servicer.hang = True
    batches = fetcher(stub)
    batches.prefetch(1)
    # The peer answers on this loop; the condition only reads what it records, so it is polled
    # from a worker thread and the loop stays free.
    await asyncio.to_thread(
        wait_until,
        lambda: servicer.requests,
        message="the prefetch to reach the peer",
        timeout=10,
        interval=0.01,
    )
    batches.close()
    await asyncio.wait_for(servicer.cancelled.wait(), 10)


async def test_a_peer_that_goes_down_mid_fetch_is_a_peer_failure(
    peer: tuple[Peer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    servicer.hang = True
    short = BatchFetcher(stub, "peer:1", (TOPIC, ORIGIN), limit=4, packing=4, timeout_s=0.2)
    with pytest.raises(SyncFailure) as info:
        await short.batch(1)
    assert info.value.kind is FailureKind.PEER
    assert str(info.value).startswith("peer peer:1 Fetch failed: DEADLINE_EXCEEDED")


def rpc_error(code: grpc.StatusCode, details: str) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details, None)


def test_failures_are_classified_in_one_place() -> None:
    down = rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused")
    refused = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad topic")
    assert SyncFailure.from_rpc("p:1", "Fetch", down).kind is FailureKind.PEER
    log_failure = SyncFailure.from_rpc("p:1", "Fetch", refused)
    assert log_failure.kind is FailureKind.LOG
    assert str(log_failure) == "peer p:1 Fetch failed: INVALID_ARGUMENT bad topic"
    # Health and ListHeads failing means the whole peer is unusable, whatever the code.
    assert SyncFailure.from_rpc("p:1", "ListHeads", refused, whole_peer=True).kind is (
        FailureKind.PEER
    )
    store = SyncFailure.of(StorageError("disk full"))
    assert (store.kind, str(store)) == (FailureKind.STORE, "local store: disk full")
    bug = SyncFailure.of(KeyError("x"))
    assert (bug.kind, str(bug)) == (FailureKind.BUG, "internal error: KeyError('x')")
    assert SyncFailure.of(log_failure) is log_failure


def test_envelopes_reads_both_response_forms() -> None:
    assert [e.head_id for e in envelopes(pb.FetchResponse(message=envelope(1)))] == [1]
    packed = pb.FetchResponse(messages=[envelope(2), envelope(3)])
    assert [e.head_id for e in envelopes(packed)] == [2, 3]
    assert list(envelopes(pb.FetchResponse())) == []
