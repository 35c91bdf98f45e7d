"""Sync batches that adapt to the link (no --sync-batch-limit), from a local peer over real gRPC.

The peer serves 256-byte messages packed as asked; `delay_s` makes each of its Fetches slow, as
a slow link would. The fetcher must grow its batches while fetches are fast, up to its byte
ceiling and never above it (plus the one message that crosses it), and shrink them when a fetch
is slow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from msgbus_core import NodeId
from msgbus_core.limits import MAX_FETCH_LIMIT
from msgbus_proto import pb, rpc
from msgbus_server.sync_fetch import (
    ADAPTIVE_MIN_BYTES,
    ADAPTIVE_START_BYTES,
    SLOW_FETCH_S,
    AdaptiveBudget,
    BatchFetcher,
)
from msgbus_server.sync_peer import SyncSettings
from msgbus_testkit.peers import in_process_peer

ORIGIN = NodeId("t", "b", "remote")
SIZE = 256
HEADS = 200_000


class PackingPeer(rpc.MsgbusServiceServicer):
    """Serves heads 1..HEADS of SIZE bytes, `max_messages_per_response` to a response."""

    def __init__(self) -> None:
        self.limits: list[int] = []
        self.delay_s = 0.0

    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchResponse]:
        self.limits.append(request.limit)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        last = min(request.from_head_id + request.limit - 1, HEADS)
        pack = max(request.max_messages_per_response, 1)
        origin = pb.NodeId(tenant_id="t", bl_name="b", device_id="remote")
        for start in range(request.from_head_id, last + 1, pack):
            response = pb.FetchResponse()
            for head in range(start, min(start + pack, last + 1)):
                response.messages.add(
                    id=f"m{head}",
                    topic="t",
                    head_id=head,
                    payload=b"p" * SIZE,
                    created_at_ms=1,
                    origin=origin,
                )
            yield response


@pytest.fixture
async def peer() -> AsyncIterator[tuple[PackingPeer, rpc.MsgbusServiceAsyncStub]]:
    servicer = PackingPeer()  # type: ignore[abstract]  # serves Fetch only
    async with in_process_peer(servicer) as stub:
        yield servicer, stub


def adaptive_fetcher(
    stub: rpc.MsgbusServiceAsyncStub, budget: AdaptiveBudget, *, max_bytes: int
) -> BatchFetcher:
    return BatchFetcher(
        stub,
        "peer:1",
        ("t", ORIGIN),
        limit=MAX_FETCH_LIMIT,
        packing=MAX_FETCH_LIMIT,
        timeout_s=30,
        max_bytes=max_bytes,
        adaptive=budget,
    )


def test_the_default_settings_adapt_and_an_explicit_limit_fixes_the_batch() -> None:
    default = SyncSettings.of(interval_s=1.0, batch_limit=None)
    assert default.adaptive
    assert default.batch_limit == MAX_FETCH_LIMIT
    fixed = SyncSettings.of(interval_s=1.0, batch_limit=20)
    assert not fixed.adaptive
    assert (fixed.batch_limit, fixed.fetch_packing) == (20, 20)


async def test_fast_fetches_grow_the_batch_to_its_byte_ceiling_and_never_above_it(
    peer: tuple[PackingPeer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    ceiling = 1024 * 1024  # 4,096 messages of 256 bytes: below the count ceiling
    budget = AdaptiveBudget(ceiling)
    batches = adaptive_fetcher(stub, budget, max_bytes=ceiling)
    head, sizes = 1, []
    for _ in range(12):
        served = await batches.batch(head)
        assert served.problem is None
        sizes.append(len(served.messages))
        head = served.messages[-1].head_id + 1
    # Starts small, with the first batch guessed at 16 KiB a message ...
    assert sizes[0] == ADAPTIVE_START_BYTES // (16 * 1024)
    # ... and grows while fetches stay fast (an in-process peer answers in milliseconds) ...
    assert budget.bytes == ceiling
    assert max(sizes) == ceiling // SIZE
    # ... but no batch ever holds more than the ceiling, whatever the peer would send.
    assert all(size * SIZE <= ceiling for size in sizes), sizes
    assert max(servicer.limits) <= ceiling // SIZE


async def test_a_slow_fetch_halves_the_batch(
    peer: tuple[PackingPeer, rpc.MsgbusServiceAsyncStub],
) -> None:
    servicer, stub = peer
    budget = AdaptiveBudget(bytes=4 * ADAPTIVE_START_BYTES)
    batches = adaptive_fetcher(stub, budget, max_bytes=8 * 1024 * 1024)
    first = await batches.batch(1)
    assert budget.bytes == 8 * ADAPTIVE_START_BYTES  # a fast, full batch doubled it
    servicer.delay_s = SLOW_FETCH_S + 0.2
    slow = await batches.batch(first.messages[-1].head_id + 1)
    assert slow.problem is None
    assert budget.bytes == 4 * ADAPTIVE_START_BYTES
    servicer.delay_s = 0.0
    after = await batches.batch(slow.messages[-1].head_id + 1)
    assert len(after.messages) == 4 * ADAPTIVE_START_BYTES // SIZE
    assert servicer.limits[-1] == 4 * ADAPTIVE_START_BYTES // SIZE


def test_the_budget_stays_within_its_bounds_however_the_link_behaves() -> None:
    budget = AdaptiveBudget(ceiling=ADAPTIVE_START_BYTES * 4)
    for _ in range(50):
        budget.note(0.001, full=True)
    assert budget.bytes == ADAPTIVE_START_BYTES * 4
    for _ in range(50):
        budget.note(SLOW_FETCH_S * 10, full=True)
    assert budget.bytes == ADAPTIVE_MIN_BYTES
    # A batch that was not full (the log's end) says nothing about the link: no growth.
    budget.note(0.001, full=False)
    assert budget.bytes == ADAPTIVE_MIN_BYTES
