"""Sync batches within a byte budget, and payloads above the local limit, from a local peer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from msgbus_core import NodeId
from msgbus_core.limits import DEFAULT_MAX_PAYLOAD_BYTES, READ_BUDGET_BYTES
from msgbus_proto import pb, rpc
from msgbus_server.sync_fetch import BatchFetcher
from msgbus_testkit.peers import in_process_peer

ORIGIN = NodeId("t", "b", "remote")


class SizedPeer(rpc.MsgbusServiceServicer):
    """Serves messages of the sizes in `sizes`, one per response, ignoring nothing."""

    def __init__(self) -> None:
        self.sizes = [100_000] * 10
        self.limits: list[int] = []

    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchResponse]:
        self.limits.append(request.limit)
        for head, size in enumerate(self.sizes, 1):
            if head >= request.from_head_id:
                message = pb.MessageEnvelope(
                    id=f"m{head}", topic="t", head_id=head, payload=b"p" * size, created_at_ms=1
                )
                message.origin.CopyFrom(pb.NodeId(tenant_id="t", bl_name="b", device_id="remote"))
                yield pb.FetchResponse(message=message)


@pytest.fixture
async def peer() -> AsyncIterator[tuple[SizedPeer, rpc.MsgbusServiceAsyncStub]]:
    servicer = SizedPeer()  # type: ignore[abstract]  # serves Fetch only
    options = [("grpc.max_receive_message_length", 300_000)]
    async with in_process_peer(servicer, options) as stub:
        yield servicer, stub


def fetcher(
    stub: rpc.MsgbusServiceAsyncStub,
    *,
    max_bytes: int = READ_BUDGET_BYTES,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    receive_limit: int | None = None,
) -> BatchFetcher:
    return BatchFetcher(
        stub,
        "peer:1",
        ("t", ORIGIN),
        limit=10,
        packing=0,
        timeout_s=10,
        max_bytes=max_bytes,
        max_payload_bytes=max_payload_bytes,
        receive_limit=receive_limit,
    )


async def test_a_batch_ends_once_it_reaches_its_byte_budget_and_asks_for_less_next(
    peer: tuple[SizedPeer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    batches = fetcher(stub, max_bytes=250_000)
    first = await batches.batch(1)
    assert [m.head_id for m in first.messages] == [1, 2, 3]  # the one crossing it is kept
    assert first.problem is None
    second = await batches.batch(4)
    assert [m.head_id for m in second.messages] == [4, 5]
    assert servicer.limits == [10, 2]  # asked for what fits the budget at the sizes seen


async def test_a_message_larger_than_the_budget_is_a_batch_alone(
    peer: tuple[SizedPeer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    servicer.sizes = [200_000, 10, 10]
    served = await fetcher(stub, max_bytes=1_000).batch(1)
    assert [m.head_id for m in served.messages] == [1]


async def test_a_payload_above_the_local_limit_ends_the_batch_refused_by_name(
    peer: tuple[SizedPeer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    servicer.sizes = [10, 10, 5_000, 10]
    served = await fetcher(stub, max_payload_bytes=4_096).batch(1)
    assert [m.head_id for m in served.messages] == [1, 2]
    assert served.problem == (
        "refused from peer peer:1: topic=t origin=t/b/remote head_id 3 has a payload of 5000 "
        "bytes, above --max-payload-bytes 4096"
    )


async def test_a_response_above_the_receive_limit_keeps_what_came_before_it(
    peer: tuple[SizedPeer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    servicer.sizes = [10, 400_000, 10]
    served = await fetcher(stub, max_payload_bytes=1 << 20, receive_limit=300_000).batch(1)
    assert [m.head_id for m in served.messages] == [1]
    assert served.problem is not None
    assert "after head_id 1" in served.problem
    assert "receive limit of 300000 bytes (--max-payload-bytes 1048576)" in served.problem
