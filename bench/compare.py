"""msgbus against NATS JetStream and Redis, side by side in one run (issue 7's scenarios a-f).

    uv run --group bench python bench/compare.py            # full sizes (about 25 minutes)
    uv run --group bench python bench/compare.py --quick    # small sizes, a smoke run
    uv run python bench/compare.py --table bench/results/compare-STAMP.json   # the README table

Redis is Debian's `redis-server` (`apt-get install redis-server`; the target is skipped, with a
line on stderr, when it is missing); its Python client `redis` is in the `bench` group.

Scenarios, all with 256-byte payloads:
  (a) sequential durable publish: msgs/s, p50/p99
  (b) publishes with up to 256 in flight: msgs/s
  (c) replay of N stored messages: msgs/s
  (d) live end-to-end latency at a steady 1,000 msgs/s: p50/p99
  (e) catch-up of N messages into a fresh peer, persisted there: msgs/s
  (f) a follower suspended with SIGSTOP while N messages are published, then resumed: msgs/s

Targets: msgbusd with SQLite and DuckDB over loopback TCP, and again over its Unix socket
listener for (a)-(d) (the client's transport; peers sync over TCP either way); NATS JetStream
with `sync_interval: always` and with its default (when nats-server and nats-py are installed,
i.e. with `--group bench`); Redis 7 streams with `appendfsync always`. Every peer is driven
through its fastest client path (see each bench_*.py), msgbus with default daemon flags. The
output is markdown: each target's figures, msgbus's ratio to NATS `sync: always` and to Redis,
the issue's targets met or missed, and per scenario the client's and the daemons' CPU seconds,
the daemons' resident memory and how many cores other processes used meanwhile (the load).
The JSON in bench/results/ holds everything; `--table FILE.json` prints the markdown again.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

from bench_common import CpuWatch, rss_mib, summary
from bench_msgbus import MsgbusTarget

CLIENT_SCENARIOS = ["a", "b", "c", "d"]
"""What the Unix socket targets run: the scenarios where the client's transport matters."""
NATS_ALWAYS = "nats-js sync=always"
REDIS = "redis appendfsync=always"


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
    result["client_cpu_s"] = watch.client_s
    result["daemon_cpu_s"] = watch.daemon_s
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


def ratio(scenario: str, ours: dict[str, Any], theirs: dict[str, Any]) -> float | None:
    """How many times better `ours` is (throughput, or for (d) p50 latency); None if failed."""
    if "error" in ours or "error" in theirs:
        return None
    if scenario == "d":
        return float(theirs["p50_ms"] / ours["p50_ms"])
    return float(ours["msgs_per_s"] / theirs["msgs_per_s"])


def ratio_text(scenario: str, ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    value = ratio(scenario, ours, theirs)
    if value is None:
        return "-"
    return f"{value:.2f}x" + (" (p50)" if scenario == "d" else "")


TARGETS = {
    "a": ("at least 1.0x NATS `sync: always`", 1.0),
    "b": ("at least 5x NATS `sync: always`", 5.0),
    "c": ("at least 1.0x NATS (ordered consumer)", 1.0),
    "e": ("at least 10x NATS `sync: always`, default flags", 10.0),
}


def verdicts(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The issue's targets, met or missed, with the measured ratios."""
    ours = [t for t in results if t.startswith("msgbus")]
    lines = [
        "| scenario | target | measured | |",
        "|---|---|---|---|",
    ]
    nats = results.get(NATS_ALWAYS, {})
    for scenario, (text, wanted) in TARGETS.items():
        pairs = [
            (name, ratio(scenario, results[name][scenario], nats[scenario]))
            for name in ours
            if scenario in results[name] and scenario in nats
        ]
        measured = [(n, r) for n, r in pairs if r is not None]
        if not measured:
            continue
        cells = ", ".join(f"{n} {r:.2f}x" for n, r in measured)
        met = [n for n, r in measured if r >= wanted]
        verdict = "met by " + ", ".join(met) if met else "missed"
        lines.append(f"| {TITLES[scenario]} | {text} | {cells} | {verdict} |")
    live = {
        name: results[name]["d"]
        for name in ours
        if "d" in results[name] and "error" not in results[name]["d"]
    }
    if live:
        cells = ", ".join(f"{n} {f['p50_ms']:.2f} / {f['p99_ms']:.2f} ms" for n, f in live.items())
        met = [n for n, f in live.items() if f["p50_ms"] <= 1.0 and f["p99_ms"] <= 4.0]
        verdict = "met by " + ", ".join(met) if met else "missed"
        lines.append(
            f"| {TITLES['d']} | p50 at most 1.0 ms, p99 at most 4 ms (SQLite) | {cells} | "
            f"{verdict} |"
        )
        for transport in ("", " unix"):
            sqlite, duckdb = (
                live.get("msgbus sqlite" + transport),
                live.get("msgbus duckdb" + transport),
            )
            if sqlite and duckdb:
                times = duckdb["p50_ms"] / sqlite["p50_ms"]
                lines.append(
                    f"| {TITLES['d']}{transport} | DuckDB within 2x of SQLite | DuckDB p50 "
                    f"{times:.2f}x SQLite's | {'met' if times <= 2.0 else 'missed'} |"
                )
    return lines


def markdown(results: dict[str, dict[str, dict[str, Any]]], run: dict[str, Any]) -> str:
    """The run as markdown: figures, ratios, the issue's targets, CPU, memory and load."""
    targets = list(results)
    ours = [t for t in targets if t.startswith("msgbus")]
    peers = [t for t in (NATS_ALWAYS, REDIS) if t in results]
    load = run.get("load_avg_at_end")
    lines = [
        f"Run {run['date']} on {run['machine']}, {run['sizes']}; peers: {run.get('peers', '-')}"
        + (
            f"; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
            if load
            else ""
        )
        + ".",
        "",
        "| scenario | " + " | ".join(targets) + " |",
        "|---" * (1 + len(targets)) + "|",
    ]
    present = [s for s in SCENARIOS if any(s in results[t] for t in targets)]
    for scenario in present:
        cells = [
            headline(scenario, results[t][scenario]) if scenario in results[t] else "-"
            for t in targets
        ]
        lines.append(f"| {TITLES[scenario]} | " + " | ".join(cells) + " |")
    if ours and peers:
        pairs = [(o, n) for o in ours for n in peers]
        lines += [
            "",
            "msgbus's ratio to each durable peer (higher is better; (d) compares p50 latency):",
            "",
            "| scenario | " + " | ".join(f"{o} / {n}" for o, n in pairs) + " |",
            "|---" * (1 + len(pairs)) + "|",
        ]
        for scenario in present:
            cells = [
                ratio_text(scenario, results[o][scenario], results[n][scenario])
                if scenario in results[o] and scenario in results[n]
                else "-"
                for o, n in pairs
            ]
            lines.append(f"| {TITLES[scenario]} | " + " | ".join(cells) + " |")
    if NATS_ALWAYS in results and ours:
        lines += ["", "Against the issue's targets:", "", *verdicts(results)]
    lines += [
        "",
        "Per scenario (set-up and filling included): client CPU s / daemons' CPU s / daemons' "
        "largest RSS / cores other processes used (the load):",
        "",
        "| scenario | " + " | ".join(targets) + " |",
        "|---" * (1 + len(targets)) + "|",
    ]
    for scenario in present:
        cells = []
        for t in targets:
            figures = results[t].get(scenario)
            if figures is None or "error" in figures:
                cells.append("-")
                continue
            cells.append(
                f"{figures.get('client_cpu_s', 0):.1f} / {figures.get('daemon_cpu_s', 0):.1f} / "
                f"{figures.get('daemon_rss_mib', 0):.0f} MiB / {figures.get('other_cores', 0):.2f}"
            )
        lines.append(f"| {TITLES[scenario]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def make_targets(workdir: Path, names: list[str]) -> list[Target]:
    targets: list[Target] = []
    for name in names:
        if name in ("sqlite", "duckdb"):
            targets.append(MsgbusTarget(workdir / name, name))
        elif name in ("sqlite-unix", "duckdb-unix"):
            storage = name.removesuffix("-unix")
            targets.append(MsgbusTarget(workdir / name, storage, unix=True))
        elif name in ("nats-always", "nats-default"):
            try:
                from bench_nats import NatsTarget, nats_server_binary

                nats_server_binary()
            except (ImportError, RuntimeError) as error:
                print(f"skipping {name}: {error}", file=sys.stderr)
                continue
            targets.append(NatsTarget(workdir / name, sync_always=name == "nats-always"))
        elif name == "redis":
            try:
                from bench_redis import RedisTarget, redis_server_binary

                redis_server_binary()
            except (ImportError, RuntimeError) as error:
                print(f"skipping {name}: {error}", file=sys.stderr)
                continue
            targets.append(RedisTarget(workdir / name))
        else:
            raise SystemExit(f"unknown target {name!r}")
    return targets


def peer_versions() -> str:
    """The peers' versions, as the README table names them."""
    found = []
    for command in (["nats-server", "--version"], ["redis-server", "--version"]):
        try:
            from bench_nats import nats_server_binary

            if command[0] == "nats-server":
                command[0] = nats_server_binary()
            out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
            found.append(out.strip().split(" sha=")[0])
        except (ImportError, RuntimeError, OSError, subprocess.SubprocessError):
            continue
    return ", ".join(found) or "-"


def describe_run(args: argparse.Namespace) -> dict[str, Any]:
    """The run's date, machine, sizes, peers and load, as the table's first line shows them."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "sizes": f"N={args.messages:,}, sequential={args.sequential:,}, "
        f"latency={args.latency_seconds:g}s",
        "peers": peer_versions(),
        "load_avg_at_end": os.getloadavg(),
    }


def close_target(target: Target) -> None:
    """Stop a target's servers; one that will not stop is reported, not fatal to the run."""
    try:
        target.close()
    except Exception as error:
        print(f"  closing {target.name} failed: {type(error).__name__}: {error}", file=sys.stderr)


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="msgbus-bench-"))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        for target in make_targets(workdir, args.targets):
            results[target.name] = {}
            unix = getattr(target, "unix", False)
            for scenario in args.scenarios:
                if unix and scenario not in CLIENT_SCENARIOS:
                    continue
                print(f"{target.name}: {TITLES[scenario]} ...", file=sys.stderr, flush=True)
                try:
                    figures = await run_scenario(target, scenario, args)
                except Exception as error:  # a failed scenario is reported, not fatal
                    figures = {"error": f"{type(error).__name__}: {error}"}
                    print(f"  failed: {figures['error']}", file=sys.stderr)
                finally:
                    close_target(target)
                results[target.name][scenario] = figures
                print(f"  {headline(scenario, figures)}", file=sys.stderr, flush=True)
                # Saved after every scenario, so a run that dies keeps what it measured.
                document = {"run": describe_run(args), "results": results}
                save(Path(args.out_dir), document, markdown(results, document["run"]), stamp)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run = describe_run(args)
    table = markdown(results, run)
    print(table)
    save(Path(args.out_dir), {"run": run, "results": results}, table, stamp)
    return 0


def save(out: Path, document: dict[str, Any], table: str, stamp: str) -> None:
    """Write the run as JSON and markdown, named by its start time `stamp`."""
    out.mkdir(parents=True, exist_ok=True)
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
        default=[
            "sqlite",
            "duckdb",
            "nats-always",
            "nats-default",
            "redis",
            "sqlite-unix",
            "duckdb-unix",
        ],
        help="sqlite duckdb nats-always nats-default redis sqlite-unix duckdb-unix",
    )
    parser.add_argument("--scenarios", nargs="+", default=SCENARIOS, choices=SCENARIOS)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    parser.add_argument(
        "--table", metavar="FILE.json", help="print the markdown of a saved run and exit"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.sequential, args.latency_seconds = 5_000, 300, 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        document = json.loads(Path(args.table).read_text())
        print(markdown(document["results"], document["run"]))
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
