"""FIFO leases: lease+ack throughput by worker count, and what leases cost the enqueue path.

Not a test: run it by hand and copy the figures into the README ("FIFO queues: leases, workers
and dead letters").

    uv run python bench/fifo_lease_bench.py            # 3 rounds of 3 s per case
    uv run python bench/fifo_lease_bench.py --quick    # a smoke run

One msgbusd (SQLite, in a temporary directory, default flags), driven by the asyncio SDK:

- lease+ack: a queue pre-filled with jobs, drained by 1 and by 8 concurrent workers, each
  leasing one job at a time (LeaseFifo) and acking it (AckFifoLease): jobs per second;
- enqueue: 16 concurrent EnqueueFifo callers (256-byte payloads) for a few seconds, with no
  leases anywhere; with 1,000 leases held in the same queue; and while 8 workers lease and ack
  another queue. Each figure is the median of the rounds. The machine is shared: read the
  ratios, not the absolute values.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import statistics
import tempfile
import time
from pathlib import Path

from msgbus_sdk import AsyncMsgbusClient
from msgbus_server.testing import Daemon

PAYLOAD = b"x" * 256
TARGET = "tenant/default/worker"
ENQUEUERS = 16


async def _fill(bus: AsyncMsgbusClient, queue: str, count: int) -> None:
    async def some(n: int) -> None:
        for _ in range(n):
            await bus.enqueue_fifo(queue, "bench", TARGET, PAYLOAD)

    await asyncio.gather(*(some(count // 16) for _ in range(16)))


async def _drain(bus: AsyncMsgbusClient, queue: str, workers: int, seconds: float) -> float:
    """Lease+ack jobs of `queue` with `workers` concurrent loops; jobs per second."""
    done = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop:
            leases = await bus.lease_fifo(queue)
            if not leases:
                return
            if await bus.ack_fifo_lease(queue, leases[0].lease_id):
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return done / (time.monotonic() - started)


async def _enqueue_rate(bus: AsyncMsgbusClient, queue: str, seconds: float) -> float:
    count = 0
    stop = time.monotonic() + seconds

    async def enqueuer() -> None:
        nonlocal count
        while time.monotonic() < stop:
            await bus.enqueue_fifo(queue, "bench", TARGET, PAYLOAD)
            count += 1

    started = time.monotonic()
    await asyncio.gather(*(enqueuer() for _ in range(ENQUEUERS)))
    return count / (time.monotonic() - started)


async def _round(endpoint: str, seconds: float, n: int) -> dict[str, float]:
    async with await AsyncMsgbusClient.connect(endpoint) as bus:
        figures: dict[str, float] = {}
        for workers in (1, 8):
            queue = f"bench.drain.{workers}.{n}"
            await _fill(bus, queue, 4_000)
            figures[f"lease+ack, {workers} worker(s)"] = await _drain(bus, queue, workers, seconds)
        figures["enqueue, no leases"] = await _enqueue_rate(bus, f"bench.enq.a.{n}", seconds)
        held = f"bench.enq.b.{n}"
        await _fill(bus, held, 1_008)
        for _ in range(10):
            await bus.lease_fifo(held, 100, visibility_ms=600_000)
        figures["enqueue, 1,000 leases held in the queue"] = await _enqueue_rate(bus, held, seconds)
        busy = f"bench.busy.{n}"
        await _fill(bus, busy, 8_000)
        drain = asyncio.create_task(_drain(bus, busy, 8, seconds + 1))
        figures["enqueue, 8 workers leasing elsewhere"] = await _enqueue_rate(
            bus, f"bench.enq.c.{n}", seconds
        )
        await drain
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    args = parser.parse_args()
    rounds, seconds = (1, 1.0) if args.quick else (3, 3.0)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, Daemon.start(Path(tmp)) as daemon:
        for n in range(rounds):
            for name, value in asyncio.run(_round(daemon.endpoint, seconds, n)).items():
                results.setdefault(name, []).append(value)
    print(f"# fifo_lease_bench {datetime.date.today()} ({rounds} x {seconds:.0f} s, SQLite)")
    for name, values in results.items():
        print(f"{name:45} {statistics.median(values):8.0f} /s")


if __name__ == "__main__":
    main()
