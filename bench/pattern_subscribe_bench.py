"""Pattern Subscribe: its cost on the publish path, and its delivery rate across 1,000 logs.

Not a test: run it by hand and copy the figures into the README ("Subscribing to many logs").

    uv run python bench/pattern_subscribe_bench.py            # 3 rounds of 5 s per case
    uv run python bench/pattern_subscribe_bench.py --quick    # a smoke run

One msgbusd (SQLite, in a temporary directory, default flags).

- Publish path: 32 concurrent publishes (the asyncio SDK, 256-byte payloads) to `bench.pub`
  for a few seconds, with 0, with 10 pattern subscriptions of `bench.*` attached (so every
  commit wakes all ten, and each reads and delivers every message), and, for comparison, with
  10 single-log subscriptions of `bench.pub`. The subscribers
  run in a child process, so their client-side decoding does not share the publisher's core
  time slice. Each figure is the median of the rounds.
- Delivery: 1,000 logs of 100 messages (256 bytes) each, then one pattern subscription of
  `bench.many.*` reads all 100,000 (packed, 256 per response): messages per second.

The machine is shared: read the ratio of the two publish figures, not the absolute values.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import statistics
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path

import grpc

from msgbus_proto import pb, rpc
from msgbus_sdk import AsyncMsgbusClient
from msgbus_server.testing import Daemon

PAYLOAD = b"x" * 256
PUBLISHERS = 32
SUBSCRIBERS = 10
LOGS = 1_000
PER_LOG = 100


def _subscribers(
    endpoint: str, node: str, count: int, pattern: bool, ready: Event, stop: Event
) -> None:
    """`count` subscriptions reading until `stop` (a child process): pattern ones of
    bench.*, or single-log ones of bench.pub for comparison.

    Each resumes after the current head of bench.pub, so it delivers every message published
    while it is attached, and replays nothing of the earlier rounds.
    """
    channel = grpc.insecure_channel(endpoint)
    stub = rpc.MsgbusServiceStub(channel)
    tenant, bl, device = node.split("/")
    origin = pb.NodeId(tenant_id=tenant, bl_name=bl, device_id=device)
    head = stub.GetHead(pb.GetHeadRequest(topic="bench.pub")).head_id
    if pattern:
        request = pb.SubscribeRequest(
            topic_pattern="bench.*",
            resume_after=[pb.TopicHead(topic="bench.pub", origin=origin, head_id=head)],
            max_messages_per_response=256,
        )
    else:
        request = pb.SubscribeRequest(
            topic="bench.pub", from_head_id=head + 1, max_messages_per_response=256
        )
    calls = [stub.Subscribe(request) for _ in range(count)]

    def drain(call: grpc.Future) -> None:  # type: ignore[type-arg]
        try:
            for _ in call:  # type: ignore[attr-defined]
                pass
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=drain, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    ready.set()
    stop.wait()
    for call in calls:
        call.cancel()  # type: ignore[no-untyped-call]
    channel.close()


async def _publish_rate(bus: AsyncMsgbusClient, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    sent = 0

    async def publisher() -> None:
        nonlocal sent
        while time.monotonic() < deadline:
            await bus.publish("bench.pub", PAYLOAD)
            sent += 1

    started = time.monotonic()
    await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
    return sent / (time.monotonic() - started)


async def publish_cost(
    endpoint: str, node: str, rounds: int, seconds: float
) -> tuple[float, float, float]:
    """Median publishes per second with no subscriber, with SUBSCRIBERS pattern
    subscriptions, and with SUBSCRIBERS single-log ones (the cases take turns each round)."""
    without, patterns, single = [], [], []
    context = multiprocessing.get_context("spawn")

    def attach(pattern: bool) -> tuple[BaseProcess, Event]:
        ready, stop = context.Event(), context.Event()
        child = context.Process(
            target=_subscribers, args=(endpoint, node, SUBSCRIBERS, pattern, ready, stop)
        )
        child.start()
        ready.wait(60)
        time.sleep(0.5)  # the streams are open and waiting on the daemon
        return child, stop

    async with await AsyncMsgbusClient.connect(endpoint) as bus:

        async def attached(pattern: bool) -> float:
            child, stop = await asyncio.to_thread(attach, pattern)
            rate = await _publish_rate(bus, seconds)
            stop.set()
            await asyncio.to_thread(child.join, 30)
            return rate

        for _ in range(rounds):
            without.append(await _publish_rate(bus, seconds))
            patterns.append(await attached(True))
            single.append(await attached(False))
    return statistics.median(without), statistics.median(patterns), statistics.median(single)


def delivery_rate(endpoint: str) -> float:
    """Messages per second one pattern subscription delivers over LOGS logs."""
    with grpc.insecure_channel(endpoint) as channel:
        stub = rpc.MsgbusServiceStub(channel)
        for start in range(0, LOGS, 20):
            entries = [
                pb.PublishRequest(topic=f"bench.many.{n:04d}", payload=PAYLOAD)
                for n in range(start, start + 20)
                for _ in range(PER_LOG)
            ]
            stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=120)
        request = pb.SubscribeRequest(
            topic_pattern="bench.many.*", replay_limit=512, max_messages_per_response=256
        )
        started = time.monotonic()
        received = 0
        call = stub.Subscribe(request, timeout=600)
        for response in call:
            received += len(response.messages)
            if received >= LOGS * PER_LOG:
                break
        elapsed = time.monotonic() - started
        call.cancel()  # type: ignore[no-untyped-call]
    return received / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s")
    args = parser.parse_args()
    rounds, seconds = (1, 1.0) if args.quick else (3, 5.0)
    with tempfile.TemporaryDirectory() as directory, Daemon.start(Path(directory)) as daemon:
        without, attached, single = asyncio.run(
            publish_cost(daemon.endpoint, daemon.node.key, rounds, seconds)
        )
        rate = delivery_rate(daemon.endpoint)
    print(f"pattern_subscribe_bench {datetime.date.today().isoformat()}")
    print(f"publish, {PUBLISHERS} concurrent, no pattern subscriber:  {without:,.0f} msg/s")
    print(
        f"publish, {PUBLISHERS} concurrent, {SUBSCRIBERS} pattern subscribers: "
        f"{attached:,.0f} msg/s"
    )
    print(f"  ratio {attached / without:.2f}")
    print(
        f"publish, {PUBLISHERS} concurrent, {SUBSCRIBERS} single-log subscribers: "
        f"{single:,.0f} msg/s (ratio {single / without:.2f})"
    )
    print(f"delivery across {LOGS:,} logs ({LOGS * PER_LOG:,} messages): {rate:,.0f} msg/s")


if __name__ == "__main__":
    main()
