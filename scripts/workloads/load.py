"""Load workloads against a real msgbusd, shared by `tests/reliability/test_load.py` (bounded)
and `scripts/load_soak.py` (the full-length versions).

Each returns a small report; the caller asserts. RSS figures come from /proc/PID/status of the
daemon process (VmRSS now, VmHWM peak), in KiB.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until


@dataclass
class FanoutReport:
    subscribers: int
    logs: int
    published: int
    delivered: int
    peak_rss_kib: int
    seconds: float


async def fanout(
    daemon: Daemon,
    *,
    subscribers: int = 500,
    logs: int = 50,
    seconds: float = 30.0,
    rate: float = 100.0,
    channels: int = 10,
) -> FanoutReport:
    """`subscribers` live subscriptions spread over `logs` logs while publishers publish about
    `rate` messages per second in total for `seconds`; every subscriber must then hold exactly
    its log's messages, in order. Returns the figures (AssertionError on any mismatch)."""
    topics = [f"fan-{i}" for i in range(logs)]
    opened = [daemon.aio_channel() for _ in range(channels)]
    stubs = [rpc.MsgbusServiceStub(c) for c in opened]
    published: dict[str, list[bytes]] = {t: [] for t in topics}
    received: list[list[bytes]] = [[] for _ in range(subscribers)]
    heads: list[list[int]] = [[] for _ in range(subscribers)]
    ready = 0

    async def subscribe(index: int) -> None:
        nonlocal ready
        topic = topics[index % logs]
        call = stubs[index % channels].Subscribe(pb.SubscribeRequest(topic=topic))
        ready += 1
        async for response in call:
            received[index].append(response.message.payload)
            heads[index].append(response.message.head_id)

    async def publish(index: int, count: int, interval: float) -> None:
        stub = stubs[index % channels]
        next_at = time.monotonic()
        for n in range(count):
            topic = topics[(index + n * 7) % logs]
            payload = f"{index}-{n}".encode()
            await stub.Publish(pb.PublishRequest(topic=topic, payload=payload), timeout=30)
            published[topic].append(payload)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the publisher, not waiting for a condition

    tasks = [asyncio.create_task(subscribe(i)) for i in range(subscribers)]
    # The conditions below only read what the tasks record, so they are polled from a worker
    # thread and the loop stays free to run the tasks.
    await asyncio.to_thread(
        wait_until, lambda: ready >= subscribers, message="subscriptions to open", interval=0.01
    )
    publishers = 5
    per_publisher = int(rate * seconds / publishers)
    started = time.monotonic()
    await asyncio.gather(*(publish(i, per_publisher, publishers / rate) for i in range(publishers)))
    elapsed = time.monotonic() - started
    # Publishes of one log from different tasks may be acknowledged out of head order; the
    # store is the truth for the order, so read it once to know what every subscriber must get.
    expected: dict[str, list[bytes]] = {}
    for topic in topics:
        stream = stubs[0].Fetch(
            pb.FetchRequest(topic=topic, limit=10_000, max_messages_per_response=1000)
        )
        expected[topic] = [m.payload async for r in stream for m in r.messages]
        assert sorted(expected[topic]) == sorted(published[topic]), f"{topic}: stored != acked"
    await asyncio.to_thread(
        wait_until,
        lambda: all(
            len(received[i]) >= len(expected[topics[i % logs]]) for i in range(subscribers)
        ),
        message="subscribers to catch up",
        timeout=120,
    )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for index in range(subscribers):
        topic = topics[index % logs]
        assert heads[index] == list(range(1, len(expected[topic]) + 1)), f"subscriber {index}"
        assert received[index] == expected[topic], f"subscriber {index} got other messages"
    for channel in opened:
        await channel.close(None)
    return FanoutReport(
        subscribers=subscribers,
        logs=logs,
        published=sum(len(v) for v in expected.values()),
        delivered=sum(len(r) for r in received),
        peak_rss_kib=daemon.rss_kib("VmHWM"),
        seconds=elapsed,
    )


@dataclass
class SlowReport:
    published: int
    read: int
    rss_kib: list[int] = field(default_factory=list)
    """Daemon RSS samples: after warm-up first, then during and after publishing."""

    @property
    def growth_kib(self) -> int:
        return max(self.rss_kib) - self.rss_kib[0]


PUBLISH_BATCH_BYTES = 1024 * 1024
"""Payload bytes per PublishBatch of the slow-subscriber workload: well inside the daemon's
receive limit (32 MiB at least) whatever the payload size."""


async def slow_subscriber(
    daemon: Daemon,
    *,
    messages: int = 100_000,
    read_seconds: float = 60.0,
    read_interval: float = 1.0,
    payload_bytes: int = 200,
) -> SlowReport:
    """One subscriber reads one message per `read_interval` for `read_seconds` while `messages`
    are published to its log; it must never be cut off, and its reads stay in order."""
    topic = "slow"
    reader_channel = daemon.aio_channel()
    writer_channel = daemon.aio_channel()
    reader = rpc.MsgbusServiceStub(reader_channel)
    writer = rpc.MsgbusServiceStub(writer_channel)
    report = SlowReport(published=0, read=0)
    call = reader.Subscribe(pb.SubscribeRequest(topic=topic))
    payload = b"s" * payload_bytes
    batch = max(1, min(1000, PUBLISH_BATCH_BYTES // payload_bytes))

    async def publish(count: int) -> None:
        entries = [pb.PublishRequest(topic=topic, payload=payload)] * count
        await writer.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)
        report.published += count

    async def publish_all() -> None:
        for start in range(report.published, messages, batch):
            await publish(min(batch, messages - start))

    # Warm-up: the first batch is published and the first message read before the baseline.
    await publish(min(batch, messages))
    first = await call.read()
    assert isinstance(first, pb.SubscribeResponse)
    assert first.message.head_id == 1
    report.read = 1
    report.rss_kib.append(daemon.rss_kib())
    publishing = asyncio.create_task(publish_all())
    ends = time.monotonic() + read_seconds
    while time.monotonic() < ends:
        await asyncio.sleep(read_interval)  # the deliberately slow reader's pace
        response = await call.read()
        assert isinstance(response, pb.SubscribeResponse), f"the stream ended: {response!r}"
        report.read += 1
        assert response.message.head_id == report.read, "the slow reader skipped a message"
        report.rss_kib.append(daemon.rss_kib())
    await asyncio.wait_for(publishing, 600)
    report.rss_kib.append(daemon.rss_kib())
    # Still connected after everything was published: read one more.
    response = await call.read()
    assert isinstance(response, pb.SubscribeResponse), "the slow reader was cut off"
    assert response.message.head_id == report.read + 1
    report.read += 1
    call.cancel()
    await reader_channel.close(None)
    await writer_channel.close(None)
    return report


@dataclass
class CyclesReport:
    cycles: int
    rss_after_warmup_kib: int
    rss_end_kib: int

    @property
    def growth_kib(self) -> int:
        return self.rss_end_kib - self.rss_after_warmup_kib


async def subscribe_cycles(
    daemon: Daemon, *, cycles: int = 10_000, warmup: int = 500, concurrency: int = 8
) -> CyclesReport:
    """Open a subscription, receive one message, disconnect; `cycles` times, `concurrency` at a
    time, on logs that come and go. RSS is read after `warmup` cycles and at the end."""
    channel = daemon.aio_channel()
    stub = rpc.MsgbusServiceStub(channel)
    topics = [f"cycle-{i}" for i in range(64)]
    for topic in topics:
        await stub.Publish(pb.PublishRequest(topic=topic, payload=b"c"), timeout=30)

    async def cycle(n: int) -> None:
        call = stub.Subscribe(pb.SubscribeRequest(topic=topics[n % len(topics)]))
        response = await call.read()
        assert isinstance(response, pb.SubscribeResponse)
        call.cancel()

    async def run(first: int, count: int) -> None:
        for start in range(first, first + count, concurrency):
            await asyncio.gather(*(cycle(n) for n in range(start, start + concurrency)))

    await run(0, warmup)
    await _settle(stub)
    after_warmup = daemon.rss_kib()
    await run(warmup, cycles - warmup)
    await _settle(stub)
    end = daemon.rss_kib()
    await channel.close(None)
    return CyclesReport(cycles, after_warmup, end)


async def _settle(stub: rpc.MsgbusServiceAsyncStub) -> None:
    """A round trip, so cancelled streams are torn down before RSS is read."""
    await stub.Health(pb.HealthRequest(), timeout=30)
