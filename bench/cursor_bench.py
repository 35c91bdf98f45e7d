"""Durable cursors: what a consumer committing its cursor costs the publish path.

Not a test: run it by hand and copy the figures into the README ("Durable cursors").

    uv run python bench/cursor_bench.py            # 3 rounds of 5 s per case
    uv run python bench/cursor_bench.py --quick    # a smoke run

One msgbusd (SQLite, in a temporary directory, default flags). 32 concurrent publishes (the
asyncio SDK, 256-byte payloads) to `bench.pub` for a few seconds, with:

- no consumer;
- one plain subscriber (no commits), to tell the cost of reading from the cost of committing;
- one durable consumer (`subscribe(durable=..., auto_commit=CommitPolicy(every=1))`, the
  blocking SDK), committing after every message: each commit is a write through the commit
  pipeline, durable before it is answered, batched with the publishes of its transaction;
- the same committing every 100 messages.

Consumers run in a child process, so their decoding does not share the publisher's core time
slice. Each figure is the median of the rounds; the consumer's messages per second and commits
per second are printed too. The machine is shared: read the ratios, not the absolute values.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import statistics
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

from msgbus_sdk import AsyncMsgbusClient, CommitPolicy, MsgbusClient
from msgbus_server.testing import Daemon

PAYLOAD = b"x" * 256
PUBLISHERS = 32
TOPIC = "bench.pub"


def _consumer(
    endpoint: str,
    name: str,
    every: int,
    ready: Event,
    delivered: Synchronized[int],
) -> None:
    """Read TOPIC from its current head on (a child process): durable when `every` > 0."""
    with MsgbusClient.connect(endpoint) as bus:
        head = bus.get_head(TOPIC).head_id
        if every:
            policy = CommitPolicy(every=every)
            subscription = bus.subscribe(
                TOPIC, from_head_id=head + 1, durable=name, auto_commit=policy
            )
        else:
            subscription = bus.subscribe(TOPIC, from_head_id=head + 1)  # type: ignore[assignment]
        ready.set()
        for _ in subscription:
            with delivered.get_lock():
                delivered.value += 1


async def _publish_rate(endpoint: str, seconds: float) -> float:
    async with await AsyncMsgbusClient.connect(endpoint) as bus:
        deadline = time.monotonic() + seconds
        sent = 0

        async def publisher() -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                await bus.publish(TOPIC, PAYLOAD)
                sent += 1

        started = time.monotonic()
        await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
        return sent / (time.monotonic() - started)


def _with_consumer(endpoint: str, name: str, every: int, seconds: float) -> tuple[float, float]:
    """Publishes per second while one consumer reads (and commits), and its messages/s."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    delivered = context.Value("q", 0)
    child = context.Process(target=_consumer, args=(endpoint, name, every, ready, delivered))
    child.start()
    ready.wait(60)
    time.sleep(0.5)  # the stream is open and waiting on the daemon
    started = time.monotonic()
    rate = asyncio.run(_publish_rate(endpoint, seconds))
    elapsed = time.monotonic() - started
    child.terminate()
    child.join(30)
    return rate, delivered.value / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s")
    args = parser.parse_args()
    rounds, seconds = (1, 1.0) if args.quick else (3, 5.0)
    cases = {"none": -1, "subscriber": 0, "commit every 1": 1, "commit every 100": 100}
    rates: dict[str, list[float]] = {case: [] for case in cases}
    consumed: dict[str, list[float]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory() as directory, Daemon.start(Path(directory)) as daemon:
        for round_ in range(rounds):
            for case, every in cases.items():
                if every < 0:
                    rates[case].append(asyncio.run(_publish_rate(daemon.endpoint, seconds)))
                    continue
                name = f"bench-{every}-{round_}"
                rate, read = _with_consumer(daemon.endpoint, name, every, seconds)
                rates[case].append(rate)
                consumed[case].append(read)
    print(f"cursor_bench {datetime.date.today().isoformat()}")
    base = statistics.median(rates["none"])
    for case, every in cases.items():
        rate = statistics.median(rates[case])
        line = f"publish, {PUBLISHERS} concurrent, {case:<17}: {rate:>9,.0f} msg/s"
        line += f"  ratio {rate / base:.2f}"
        if every >= 0:
            read = statistics.median(consumed[case])
            line += f"  consumer {read:,.0f} msg/s"
            if every > 0:
                line += f" ({read / every:,.0f} commits/s)"
        print(line)


if __name__ == "__main__":
    main()
