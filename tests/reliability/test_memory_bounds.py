"""Memory bounds of a real daemon: slow subscribers on large messages, peers that serve payloads
above the limit, and the per-connection stream cap.

RSS is read from /proc (`Daemon.rss_kib`). Each test would fail on a daemon that buffered by
message count: 40 subscribers whose first read took 128 messages of 1 MiB held about 5 GiB.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from msgbus_core import NodeId
from msgbus_core.limits import DEFAULT_MAX_PAYLOAD_BYTES
from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.logs import fetch_rows, to_pb
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import FakePeer, envelope, log_state, start_node

MIB = 1024 * 1024
RSS_LIMIT_KIB = 300 * 1024
SUBSCRIBERS = 40
BACKLOG = 240
"""Messages of 1 MiB before the subscribers start: 240 MiB, most of the RSS limit alone."""


def _publish_backlog(stub: rpc.MsgbusServiceStub, topic: str, count: int) -> None:
    payload = os.urandom(MIB)
    # Three per batch: the response echoes them, within the test client's 4 MiB receive limit.
    for start in range(0, count, 3):
        entries = [pb.PublishRequest(topic=topic, payload=payload)] * min(3, count - start)
        stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)


async def _stalled_subscriber(daemon: Daemon, topic: str, read: asyncio.Event) -> None:
    """Subscribe from head 1 on a connection of its own, read one message, then stop reading."""
    channel = daemon.aio_channel()
    try:
        stub = rpc.MsgbusServiceStub(channel)
        call = stub.Subscribe(pb.SubscribeRequest(topic=topic, from_head_id=1))
        first = await call.read()
        assert isinstance(first, pb.SubscribeResponse)
        assert first.message.head_id == 1
        read.set()
        await asyncio.Event().wait()  # never read again: the daemon must not buffer for us
    finally:
        await channel.close(grace=None)


async def test_40_slow_subscribers_on_1_mib_messages_stay_under_300_mib(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        _publish_backlog(daemon.stub(), "big", BACKLOG)
        # Restarted, like a device that comes back to a backlog: what is measured from here on
        # is what the subscribers cost, not what the publishes left in the allocator.
        daemon.restart()
        stub = daemon.stub()
        before = daemon.rss_kib()
        reads = [asyncio.Event() for _ in range(SUBSCRIBERS)]
        tasks = [asyncio.create_task(_stalled_subscriber(daemon, "big", r)) for r in reads]
        try:
            peak = before
            deadline = time.monotonic() + 60
            # Every subscriber got its first message (none starves), then the daemon is watched
            # for a while with all of them stalled.
            while not all(r.is_set() for r in reads):
                assert time.monotonic() < deadline, "a subscriber got nothing"
                peak = max(peak, daemon.rss_kib())
                await asyncio.sleep(0.1)
            settle = time.monotonic() + 5
            while time.monotonic() < settle:
                peak = max(peak, daemon.rss_kib())
                await asyncio.sleep(0.1)
            print(f"RSS before {before} KiB, peak with {SUBSCRIBERS} stalled readers {peak} KiB")
            assert peak < RSS_LIMIT_KIB, f"peak RSS {peak} KiB"
            # Other clients are still served while the stalled streams hold what they read.
            fetched = await asyncio.to_thread(
                lambda: list(stub.Fetch(pb.FetchRequest(topic="big", limit=3), timeout=30))
            )
            assert [f.message.head_id for f in fetched] == [1, 2, 3]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert daemon.poll() is None
        # gRPC itself logs the streams cancelled mid-send; msgbusd reports no error of its own.
        assert "ERROR msgbus_server" not in daemon.stderr_text()


class LargePayloadPeer(rpc.MsgbusServiceServicer):
    """A peer with a larger --max-payload-bytes: some of its logs hold payloads above ours."""

    def __init__(self, node: NodeId) -> None:
        self.node = node
        self.logs: dict[str, list[pb.MessageEnvelope]] = {}
        self.fetches = 0

    def put(self, topic: str, payloads: list[bytes]) -> None:
        self.logs[topic] = [envelope(topic, self.node, h, p) for h, p in enumerate(payloads, 1)]

    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.HealthResponse:
        return pb.HealthResponse(status="SERVING", node=to_pb(self.node))

    async def ListHeads(
        self, request: pb.ListHeadsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListHeadsResponse:
        heads = [
            pb.TopicHead(topic=topic, origin=to_pb(self.node), head_id=len(messages))
            for topic, messages in sorted(self.logs.items())
        ]
        return pb.ListHeadsResponse(heads=heads)

    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FetchResponse]:
        self.fetches += 1
        served = self.logs.get(request.topic, [])[request.from_head_id - 1 :]
        for message in served[: request.limit or 100]:
            yield pb.FetchResponse(message=message)


def test_a_peer_serving_20_mib_payloads_is_refused_and_recorded(tmp_path: Path) -> None:
    peer_node = node_id("large")
    servicer = LargePayloadPeer(peer_node)  # type: ignore[abstract]  # serves what sync calls
    small = b"s" * 100
    # 20 MiB fits the receive limit (32 MiB) and is refused by name; 40 MiB does not fit it.
    servicer.put("big", [small, b"b" * (20 * MIB), small])
    servicer.put("huge", [small, small, b"h" * (40 * MIB)])
    servicer.put("honest", [b"h%d" % n for n in range(1, 6)])
    with FakePeer(servicer) as fake:
        node = start_node(tmp_path, "a", peers=[(fake.endpoint, peer_node.key)])
        stub = node.stub()

        def error_of(topic: str) -> str:
            state = log_state(stub, fake.endpoint, topic, peer_node)
            return state.last_error if state else ""

        wait_until(lambda: error_of("big"), message="the 20 MiB payload refused")
        wait_until(lambda: error_of("huge"), message="the 40 MiB payload refused")
        assert "head_id 2 has a payload of 20971520 bytes" in error_of("big")
        assert f"above --max-payload-bytes {DEFAULT_MAX_PAYLOAD_BYTES}" in error_of("big")
        assert "after head_id 2" in error_of("huge")
        assert "receive limit" in error_of("huge")
        # What came before the large message is kept; nothing from it on.
        assert [r.payload for r in fetch_rows(stub, "big", peer_node)] == [small]
        assert [r.payload for r in fetch_rows(stub, "huge", peer_node)] == [small, small]
        wait_until(lambda: len(fetch_rows(stub, "honest", peer_node)) == 5, message="honest log")

        # The refused logs are retried with their backoff, and the honest log keeps flowing.
        fetches = servicer.fetches
        servicer.put("honest", [b"h%d" % n for n in range(1, 9)])
        wait_until(lambda: len(fetch_rows(stub, "honest", peer_node)) == 8, message="more")
        wait_until(lambda: servicer.fetches >= fetches + 4, message="the refused logs retried")
        rss = node.rss_kib("VmHWM")
        print(f"node peak RSS {rss} KiB while refusing 20 and 40 MiB payloads")
        assert rss < 200 * 1024, f"peak RSS {rss} KiB"
        assert len(fetch_rows(stub, "big", peer_node)) == 1
        assert node.poll() is None
        node.stop()


async def test_a_connection_above_its_stream_cap_waits_instead_of_failing(
    tmp_path: Path,
) -> None:
    args = ["--max-streams-per-connection", "2"]
    with Daemon.start(tmp_path, extra_args=args) as daemon:
        stub = daemon.stub()
        stub.Publish(pb.PublishRequest(topic="t", payload=b"1"), timeout=30)
        channel = daemon.aio_channel()
        try:
            aio_stub = rpc.MsgbusServiceStub(channel)
            calls = [aio_stub.Subscribe(pb.SubscribeRequest(topic="t")) for _ in range(3)]
            firsts = [asyncio.ensure_future(call.read()) for call in calls]
            done, pending = await asyncio.wait(firsts, timeout=10, return_when="ALL_COMPLETED")
            assert len(done) == 2
            assert len(pending) == 1, "the third stream was not held back"
            # Which stream the daemon holds back is up to gRPC: end one of those it admitted.
            held_back = pending.pop()
            calls[next(i for i, read in enumerate(firsts) if read in done)].cancel()
            third = await asyncio.wait_for(held_back, 10)
            assert isinstance(third, pb.SubscribeResponse)
            assert third.message.payload == b"1"
            for call in calls:
                call.cancel()
        finally:
            await channel.close(grace=None)
        assert daemon.poll() is None
