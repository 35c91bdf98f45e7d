"""What idempotency keys cost on the publish path: with and without keys, per store.

Not a test: run it by hand and copy the table into the README ("Exactly-once publish").

    uv run python bench/idempotency_bench.py                        # SQLite, 3 rounds
    uv run python bench/idempotency_bench.py --storage duckdb       # or postgres, or a list
    uv run python bench/idempotency_bench.py --quick                # a smoke run
    uv run python bench/idempotency_bench.py --storage sqlite,duckdb \
        --build before=/tmp/old-checkout --build after=.            # two builds, interleaved

Per store and build one daemon (default flags; SQLite and DuckDB in a temporary directory,
PostgreSQL on a server of its own, `msgbus_testkit.postgres.PostgresServer`, one database per
daemon). A `--build NAME=ROOT` daemon runs the packages of the checkout ROOT (its
`packages/*/src` on PYTHONPATH), so two builds are measured in the same run, round by round,
against the same noise. Each daemon gets two asyncio SDK clients, one with
`auto_idempotency=True` (every publish carries a key of the SDK's own, the time in ms then 80
random bits, stored in the same transaction as its message) and one with
`auto_idempotency=False` (no key: the daemon's plain append). Two loads, 256-byte payloads:

- sequential: one publish at a time (each waits for its durable commit);
- 256 in flight: 256 concurrent publishers; the client multiplexes them (PublishStream) and the
  daemon commits them in group transactions.

The clients take turns (the order reverses every round), so a noisy neighbour hits all alike;
each line is the median over rounds of throughput and of the p50 and p99 latency. The machine
is shared: read the ratios, not the absolute figures.
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
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench_common import PAYLOAD_SIZE, free_port, percentile
from msgbus_sdk import AsyncMsgbusClient, MsgbusClient

# The PostgreSQL test server lives in the shared test package (tests/msgbus_testkit), which
# pytest and mypy find through their path settings; a script run by hand has to add it.
_TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(_TESTS) not in sys.path:
    sys.path.append(str(_TESTS))

from msgbus_testkit.postgres import PostgresServer, postgres_unavailable  # noqa: E402

IN_FLIGHT = 256
STORAGES = ("sqlite", "duckdb", "postgres")
LOADS = ("sequential", f"{IN_FLIGHT} in flight")


@dataclass(frozen=True)
class Target:
    """One daemon to measure: a store and the build that runs it."""

    storage: str
    build: str
    root: Path | None
    """The checkout whose packages the daemon runs; None: this interpreter's own."""


def build_path(root: Path) -> str:
    """PYTHONPATH for the daemon of a checkout: its packages' sources first."""
    packages = sorted((root / "packages").glob("*/src"))
    generated = sorted((root / "packages").glob("*/generated"))
    return os.pathsep.join(str(path.resolve()) for path in (*packages, *generated))


@contextlib.contextmanager
def daemon(directory: Path, target: Target, dsn: str | None) -> Iterator[str]:
    """A msgbusd with default flags on `target`'s store in `directory`; its endpoint."""
    port = free_port()
    args = [sys.executable, "-m", "msgbus_server", "--listen", f"127.0.0.1:{port}"]
    if target.storage == "postgres":
        assert dsn is not None
        args += ["--storage", "postgres", "--data", dsn]
    else:
        args += ["--storage", target.storage, "--data", str(directory / f"bench.{target.storage}")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    if target.root is not None:
        env["PYTHONPATH"] = build_path(target.root)
    directory.mkdir(parents=True, exist_ok=True)
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


Result = tuple[float, float, float]
"""(publishes/s, p50 ms, p99 ms) of one run."""


async def measure(
    endpoints: dict[Target, str], rounds: int, sequential_calls: int, concurrent_calls: int
) -> dict[tuple[Target, str, bool], list[Result]]:
    """Every (target, load, keyed) run of every round, the targets taking turns."""
    results: dict[tuple[Target, str, bool], list[Result]] = {}
    clients = {
        (target, keyed): await AsyncMsgbusClient.connect(endpoint, auto_idempotency=keyed)
        for target, endpoint in endpoints.items()
        for keyed in (True, False)
    }
    try:
        for bus in clients.values():
            await sequential(bus, "bench.warmup", 100)
        turns = list(clients)
        for round_number in range(rounds):
            # The order reverses every round, so a load that grows on the machine hits all alike.
            order = turns if round_number % 2 == 0 else turns[::-1]
            for load, run, calls in (
                (LOADS[0], sequential, sequential_calls),
                (LOADS[1], concurrent, concurrent_calls),
            ):
                for target, keyed in order:
                    bus = clients[(target, keyed)]
                    rate, latencies = await run(bus, f"bench.{load}.{keyed}", calls)
                    results.setdefault((target, load, keyed), []).append(
                        (rate, percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3)
                    )
    finally:
        for bus in clients.values():
            await bus.close()
    return results


def report(targets: list[Target], results: dict[tuple[Target, str, bool], list[Result]]) -> None:
    """Print one table row per (store, load, keys, build), then the ratios."""
    medians: dict[tuple[Target, str, bool], Result] = {
        entry: (
            statistics.median(r[0] for r in rows),
            statistics.median(r[1] for r in rows),
            statistics.median(r[2] for r in rows),
        )
        for entry, rows in results.items()
    }
    for target in targets:
        for load in LOADS:
            for keyed in (False, True):
                rate, p50, p99 = medians[(target, load, keyed)]
                keys = "SDK key" if keyed else "none"
                print(
                    f"| {target.storage} | {target.build} | {load} | {keys} "
                    f"| {rate:,.0f} | {p50:.2f} | {p99:.2f} |"
                )
            ratio = medians[(target, load, True)][0] / medians[(target, load, False)][0]
            row = f"| {target.storage} | {target.build} | {load} | keyed/unkeyed | {ratio:.2f}"
            print(f"{row} | | |")
    builds = list(dict.fromkeys(target.build for target in targets))
    if len(builds) > 1:
        first = builds[0]
        print()
        print(f"| store | load | keys | throughput of each build / {first} |")
        print("|---|---|---|---|")
        for storage in dict.fromkeys(target.storage for target in targets):
            base = next(t for t in targets if (t.storage, t.build) == (storage, first))
            for load in LOADS:
                for keyed in (False, True):
                    before = medians[(base, load, keyed)][0]
                    ratios = ", ".join(
                        f"{t.build} {medians[(t, load, keyed)][0] / before:.2f}"
                        for t in targets
                        if t.storage == storage and t.build != first
                    )
                    keys = "SDK key" if keyed else "none"
                    print(f"| {storage} | {load} | {keys} | {ratios} |")


def main() -> int:
    """Start the daemons and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=1000, help="calls per round")
    parser.add_argument("--concurrent", type=int, default=20_480, help="calls per round")
    parser.add_argument("--quick", action="store_true", help="1 round of small runs")
    parser.add_argument(
        "--storage", default="sqlite", help=f"comma-separated, of {', '.join(STORAGES)}"
    )
    parser.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="NAME=ROOT",
        help="a checkout whose packages a daemon runs; repeatable (default: this one)",
    )
    args = parser.parse_args()
    rounds, seq, conc = (
        (1, 200, 2_560) if args.quick else (args.rounds, args.sequential, args.concurrent)
    )
    storages = [name.strip() for name in args.storage.split(",") if name.strip()]
    unknown = sorted(set(storages) - set(STORAGES))
    if unknown:
        parser.error(f"--storage: unknown store {', '.join(unknown)}")
    builds: list[tuple[str, Path | None]] = [("this", None)]
    if args.build:
        builds = []
        for entry in args.build:
            name, _, root = entry.partition("=")
            if not root or not (Path(root) / "packages").is_dir():
                parser.error(f"--build: {entry!r} is not NAME=ROOT of a checkout")
            builds.append((name, Path(root)))
    targets = [Target(storage, name, root) for storage in storages for name, root in builds]
    if "postgres" in storages and (problem := postgres_unavailable()):
        print(f"idempotency_bench: {problem}", file=sys.stderr)
        return 2
    print(
        f"# {datetime.date.today().isoformat()}, {os.cpu_count()} cores, {rounds} rounds of "
        f"{seq} sequential and {conc} concurrent publishes, {', '.join(storages)}"
    )
    print("| store | build | load | idempotency key | publishes/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    directory = Path(tempfile.mkdtemp(prefix="mb-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            server = None
            if "postgres" in storages:
                server = stack.enter_context(PostgresServer())
            endpoints = {}
            for number, target in enumerate(targets):
                dsn = None
                if server is not None and target.storage == "postgres":
                    database = f"bench_{number}"
                    with psycopg.connect(server.dsn(), autocommit=True) as con:
                        con.execute(f"CREATE DATABASE {database}")
                    dsn = server.dsn(database)
                folder = directory / f"{target.storage}-{target.build}"
                endpoints[target] = stack.enter_context(daemon(folder, target, dsn))
            results = asyncio.run(measure(endpoints, rounds, seq, conc))
        report(targets, results)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
