"""Catch-up's prefetch keeps memory bounded in bytes, with messages of the largest size.

A real msgbusd serves a log of 1 MB messages; the fetcher pulls it the way `PeerWorker` does,
with default (adaptive) batches: each batch is committed while the next one is prefetched. At
any moment the sync holds the batch being committed and the one prefetched, never more, and
each stays within the byte ceiling plus the one response that crosses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from msgbus_core.limits import MAX_FETCH_LIMIT, READ_BUDGET_BYTES, receive_limit_bytes
from msgbus_core.model import Message
from msgbus_proto import rpc
from msgbus_sdk import AsyncMsgbusClient
from msgbus_server.service import PACK_BUDGET_BYTES
from msgbus_server.sync_fetch import AdaptiveBudget, BatchFetcher
from msgbus_server.testing import Daemon

TOPIC = "big.events"
PAYLOAD = 1_000_000
"""Just under the default --max-payload-bytes (1 MiB)."""
COUNT = 40
"""40 MB: enough batches for the adaptive budget to reach its 8 MiB ceiling."""
ONE_BATCH_BOUND = READ_BUDGET_BYTES + max(PACK_BUDGET_BYTES, PAYLOAD)
"""A batch stops at the first response that reaches the ceiling: at most that one above it."""


@pytest.fixture
def leader(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon.start(tmp_path / "leader", node="t/b/leader")
    try:
        yield daemon
    finally:
        daemon.stop()


def payload_bytes(batch: list[Message]) -> int:
    return sum(len(message.payload) for message in batch)


async def test_the_batch_committed_and_the_one_prefetched_stay_within_two_byte_ceilings(
    leader: Daemon,
) -> None:
    async with await AsyncMsgbusClient.connect(leader.endpoint) as client:
        for _ in range(COUNT // 4):
            await client.publish_batch([(TOPIC, b"p" * PAYLOAD)] * 4)
    limit = receive_limit_bytes(PAYLOAD)
    options = [("grpc.max_receive_message_length", limit)]
    async with grpc.aio.insecure_channel(leader.endpoint, options=options) as channel:
        budget = AdaptiveBudget()
        fetcher = BatchFetcher(
            rpc.MsgbusServiceStub(channel),
            leader.endpoint,
            (TOPIC, leader.node),
            limit=MAX_FETCH_LIMIT,
            packing=MAX_FETCH_LIMIT,
            adaptive=budget,
        )
        try:
            committing: list[Message] = []
            received = 0
            largest_batch = largest_held = 0
            head = 1
            while head <= COUNT:
                # As `PeerWorker._pull_batches`: take the (prefetched) batch, prefetch the next,
                # then commit this one. What is held now is this batch and the previous one,
                # which was still being committed while this one was fetched.
                served = await fetcher.batch(head)
                assert served.problem is None
                batch = served.messages
                assert batch, f"the leader served nothing from head {head}"
                largest_batch = max(largest_batch, payload_bytes(batch))
                largest_held = max(largest_held, payload_bytes(batch) + payload_bytes(committing))
                received += len(batch)
                head = batch[-1].head_id + 1
                if head <= COUNT:
                    fetcher.prefetch(head)
                committing = batch
        finally:
            fetcher.close()
    assert received == COUNT
    assert budget.bytes == READ_BUDGET_BYTES  # the ceiling was reached, so it was exercised
    assert largest_batch <= ONE_BATCH_BOUND
    assert largest_held <= 2 * ONE_BATCH_BOUND
