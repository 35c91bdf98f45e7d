"""What idempotency keys cost on the publish path: with and without keys, on one SQLite msgbusd.

Not a test: run it by hand and copy the table into the README ("Exactly-once publish").

    uv run python bench/idempotency_bench.py            # 3 rounds
    uv run python bench/idempotency_bench.py --quick    # a smoke run

One daemon (SQLite, in a temporary directory, default flags) and two asyncio SDK clients, one
with `auto_idempotency=True` (every publish carries a random UUID4 key, stored in the same
transaction as its message) and one with `auto_idempotency=False` (no key: the daemon's plain
append). Two loads, 256-byte payloads:

- sequential: one publish at a time (each waits for its durable commit);
- 256 in flight: 256 concurrent publishers; the client multiplexes them (PublishStream) and the
  daemon commits them in group transactions.

The two clients take turns (who goes first alternates by round), so a noisy neighbour hits both
alike; each line is the
median over rounds of throughput and of the p50 and p99 latency. The machine is shared: read
the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench_common import PAYLOAD_SIZE, free_port, percentile
from msgbus_sdk import AsyncMsgbusClient, MsgbusClient

IN_FLIGHT = 256


@contextlib.contextmanager
def daemon(directory: Path) -> Iterator[str]:
    """A msgbusd with default flags on a SQLite file in `directory`; its endpoint."""
    port = free_port()
    args = [sys.executable, "-m", "msgbus_server", "--listen", f"127.0.0.1:{port}"]
    args += ["--data", str(directory / "bench.sqlite")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    with (directory / "msgbusd.stderr").open("ab") as stderr:
        process = subprocess.Popen(args, env=env, stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        endpoint = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with MsgbusClient.connect(endpoint, timeout=1) as bus:
                    bus.health()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((directory / "msgbusd.stderr").read_text()) from None
                time.sleep(0.05)
        yield endpoint
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


async def sequential(bus: AsyncMsgbusClient, topic: str, count: int) -> tuple[float, list[float]]:
    """Throughput (msg/s) and per-call latencies of `count` publishes one at a time."""
    payload = b"x" * PAYLOAD_SIZE
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        begun = time.perf_counter()
        await bus.publish(topic, payload)
        latencies.append(time.perf_counter() - begun)
    return count / (time.perf_counter() - started), latencies


async def concurrent(bus: AsyncMsgbusClient, topic: str, count: int) -> tuple[float, list[float]]:
    """Throughput (msg/s) and per-call latencies of `count` publishes, IN_FLIGHT at a time."""
    payload = b"x" * PAYLOAD_SIZE
    latencies: list[float] = []
    per_worker = count // IN_FLIGHT

    async def worker() -> None:
        for _ in range(per_worker):
            begun = time.perf_counter()
            await bus.publish(topic, payload)
            latencies.append(time.perf_counter() - begun)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return per_worker * IN_FLIGHT / (time.perf_counter() - started), latencies


async def measure(endpoint: str, rounds: int, sequential_calls: int, concurrent_calls: int) -> None:
    """Print one table row per (load, keys)."""
    results: dict[tuple[str, bool], list[tuple[float, float, float]]] = {}
    clients = {
        keyed: await AsyncMsgbusClient.connect(endpoint, auto_idempotency=keyed)
        for keyed in (True, False)
    }
    try:
        for bus in clients.values():
            await sequential(bus, "bench.warmup", 100)
        for round_number in range(rounds):
            # Who goes first alternates, so a load that grows on the machine hits both alike.
            order = (True, False) if round_number % 2 else (False, True)
            for load, run, calls in (
                ("sequential", sequential, sequential_calls),
                (f"{IN_FLIGHT} in flight", concurrent, concurrent_calls),
            ):
                for keyed in order:
                    bus = clients[keyed]
                    rate, latencies = await run(bus, f"bench.{load}.{keyed}", calls)
                    results.setdefault((load, keyed), []).append(
                        (rate, percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3)
                    )
    finally:
        for bus in clients.values():
            await bus.close()
    for load in ("sequential", f"{IN_FLIGHT} in flight"):
        rates = {}
        for keyed in (False, True):
            rows = results[(load, keyed)]
            rate = statistics.median(r[0] for r in rows)
            p50 = statistics.median(r[1] for r in rows)
            p99 = statistics.median(r[2] for r in rows)
            rates[keyed] = rate
            keys = "random key" if keyed else "none"
            print(f"| {load} | {keys} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |")
        print(f"| {load} | keyed/unkeyed throughput | {rates[True] / rates[False]:.2f} | | |")


def main() -> None:
    """Start the daemon and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=1000, help="calls per round")
    parser.add_argument("--concurrent", type=int, default=20_480, help="calls per round")
    parser.add_argument("--quick", action="store_true", help="1 round of small runs")
    args = parser.parse_args()
    rounds, seq, conc = (
        (1, 200, 2_560) if args.quick else (args.rounds, args.sequential, args.concurrent)
    )
    print(
        f"# {datetime.date.today().isoformat()}, {os.cpu_count()} cores, {rounds} rounds of "
        f"{seq} sequential and {conc} concurrent publishes, SQLite"
    )
    print("| load | idempotency key | publishes/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    directory = Path(tempfile.mkdtemp(prefix="mb-bench-"))
    try:
        with daemon(directory) as endpoint:
            asyncio.run(measure(endpoint, rounds, seq, conc))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
