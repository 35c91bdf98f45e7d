"""msgbus against NATS JetStream, side by side in one run (issue 7's scenarios a-f).

    uv run --group bench python bench/compare.py            # full sizes (several minutes)
    uv run --group bench python bench/compare.py --quick    # small sizes, a smoke run

Scenarios, all with 256-byte payloads:
  (a) sequential durable publish: msgs/s, p50/p99
  (b) publishes with up to 256 in flight: msgs/s
  (c) replay of N stored messages: msgs/s
  (d) live end-to-end latency at a steady 1,000 msgs/s: p50/p99
  (e) catch-up of N messages into a fresh peer, persisted there: msgs/s
  (f) a follower suspended with SIGSTOP while N messages are published, then resumed: msgs/s

Targets: msgbusd with SQLite and DuckDB, and (when nats-server and nats-py are installed, i.e.
with `--group bench`) NATS JetStream with `sync_interval: always` and with its default. The
output is a markdown table with each target's figures and msgbus's ratio to each NATS
configuration, plus JSON in bench/results/. Each row also records the daemon's resident memory
at the end of the scenario and how many cores other processes on the machine used meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from bench_common import CpuWatch, rss_mib, summary
from bench_msgbus import MsgbusTarget


class Target(Protocol):
    name: str

    def pids(self) -> list[int]: ...
    def close(self) -> None: ...
    async def sequential_publish(self, count: int) -> list[float]: ...
    async def concurrent_publish(self, count: int, in_flight: int) -> float: ...
    async def replay(self, count: int) -> float: ...
    async def live_latency(self, rate: int, seconds: float) -> list[float]: ...
    async def catch_up(self, count: int) -> float: ...
    async def suspended_follower(self, count: int) -> float: ...


SCENARIOS = ["a", "b", "c", "d", "e", "f"]
TITLES = {
    "a": "(a) sequential publish",
    "b": "(b) 256 in flight",
    "c": "(c) replay",
    "d": "(d) live latency @1k/s",
    "e": "(e) catch-up into fresh peer",
    "f": "(f) resumed follower",
}


async def run_scenario(target: Target, scenario: str, sizes: argparse.Namespace) -> dict[str, Any]:
    """Run one scenario on one target and return its figures."""
    watch = CpuWatch()
    watch.start(target.pids())
    result: dict[str, Any]
    began = time.perf_counter()
    if scenario == "a":
        latencies = await target.sequential_publish(sizes.sequential)
        result = {"msgs_per_s": len(latencies) / sum(latencies), **summary(latencies)}
    elif scenario == "b":
        elapsed = await target.concurrent_publish(sizes.messages, 256)
        result = {"msgs_per_s": sizes.messages / elapsed}
    elif scenario == "c":
        elapsed = await target.replay(sizes.messages)
        result = {"msgs_per_s": sizes.messages / elapsed}
    elif scenario == "d":
        latencies = await target.live_latency(1000, sizes.latency_seconds)
        result = summary(latencies)
    elif scenario == "e":
        elapsed = await target.catch_up(sizes.messages)
        result = {"msgs_per_s": sizes.messages / elapsed}
    else:
        elapsed = await target.suspended_follower(sizes.messages)
        result = {"msgs_per_s": sizes.messages / elapsed}
    pids = target.pids()
    watch.pids = list({*watch.pids, *pids})
    result["daemon_rss_mib"] = max((rss_mib(pid) for pid in pids), default=0.0)
    result["other_cores"] = watch.stop()
    result["wall_s"] = time.perf_counter() - began
    return result


def headline(scenario: str, figures: dict[str, Any]) -> str:
    if "error" in figures:
        return "failed"
    if scenario == "d":
        return f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms"
    text = f"{figures['msgs_per_s']:,.0f} msgs/s"
    if scenario == "a":
        text += f" (p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms)"
    return text


def ratio(scenario: str, ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    if "error" in ours or "error" in theirs:
        return "-"
    if scenario == "d":
        return f"{theirs['p50_ms'] / ours['p50_ms']:.2f}x faster p50"
    return f"{ours['msgs_per_s'] / theirs['msgs_per_s']:.2f}x"


def markdown(results: dict[str, dict[str, dict[str, Any]]], run: dict[str, Any]) -> str:
    targets = list(results)
    nats = [t for t in targets if t.startswith("nats")]
    ours = [t for t in targets if t.startswith("msgbus")]
    lines = [
        f"Run {run['date']} on {run['machine']}, {run['sizes']}.",
        "",
        "| scenario | "
        + " | ".join(targets)
        + " | "
        + " | ".join(f"{o} / {n}" for o in ours for n in nats)
        + " |",
        "|---" * (1 + len(targets) + len(ours) * len(nats)) + "|",
    ]
    for scenario in SCENARIOS:
        if not all(scenario in results[t] for t in targets):
            continue
        cells = [headline(scenario, results[t][scenario]) for t in targets]
        cells += [
            ratio(scenario, results[o][scenario], results[n][scenario]) for o in ours for n in nats
        ]
        lines.append(f"| {TITLES[scenario]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| scenario | " + " | ".join(f"{t}: daemon RSS / other cores" for t in targets) + " |",
        "|---" * (1 + len(targets)) + "|",
    ]
    for scenario in SCENARIOS:
        if not all(scenario in results[t] for t in targets):
            continue
        cells = [
            f"{results[t][scenario].get('daemon_rss_mib', 0):.0f} MiB / "
            f"{results[t][scenario].get('other_cores', 0):.2f}"
            for t in targets
        ]
        lines.append(f"| {TITLES[scenario]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_targets(workdir: Path, names: list[str]) -> list[Target]:
    targets: list[Target] = []
    for name in names:
        if name in ("sqlite", "duckdb"):
            targets.append(MsgbusTarget(workdir / name, name))
        elif name in ("nats-always", "nats-default"):
            try:
                from bench_nats import NatsTarget, nats_server_binary

                nats_server_binary()
            except (ImportError, RuntimeError) as error:
                print(f"skipping {name}: {error}", file=sys.stderr)
                continue
            targets.append(NatsTarget(workdir / name, sync_always=name == "nats-always"))
        else:
            raise SystemExit(f"unknown target {name!r}")
    return targets


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="msgbus-bench-"))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        for target in make_targets(workdir, args.targets):
            results[target.name] = {}
            for scenario in args.scenarios:
                print(f"{target.name}: {TITLES[scenario]} ...", file=sys.stderr, flush=True)
                try:
                    figures = await run_scenario(target, scenario, args)
                except Exception as error:  # a failed scenario is reported, not fatal
                    figures = {"error": f"{type(error).__name__}: {error}"}
                    print(f"  failed: {figures['error']}", file=sys.stderr)
                finally:
                    target.close()
                results[target.name][scenario] = figures
                print(f"  {headline(scenario, figures)}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "sizes": f"N={args.messages:,}, sequential={args.sequential:,}, "
        f"latency={args.latency_seconds:g}s",
    }
    table = markdown(results, run)
    print(table)
    save(Path(args.out_dir), {"run": run, "results": results}, table)
    return 0


def save(out: Path, document: dict[str, Any], table: str) -> None:
    """Write the run as JSON and markdown, named by its time."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"compare-{stamp}.json").write_text(json.dumps(document, indent=2))
    (out / f"compare-{stamp}.md").write_text(table + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000, help="N for (b), (c), (e), (f)")
    parser.add_argument("--sequential", type=int, default=3_000, help="publishes for (a)")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="duration of (d)")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["sqlite", "duckdb", "nats-always", "nats-default"],
        help="sqlite duckdb nats-always nats-default",
    )
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.sequential, args.latency_seconds = 5_000, 300, 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
