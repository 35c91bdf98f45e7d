"""The daemon's per-message budget: CPU per thread, event-loop iterations and GC pauses.

Runs scenarios (a), (b) and (d) of `publish_paths.py` against fresh msgbusd processes (SQLite,
TCP loopback, 256-byte payloads) of one or more builds, interleaved round by round, and prints
per message, for each build:

- CPU µs of the daemon's event loop (its main thread), its writer thread, its reader threads,
  and gRPC's own threads (grpc.aio's poller, gRPC core's event engine), from
  /proc/PID/task/*/schedstat (nanoseconds on a CPU, user and system);
- asyncio loop iterations (`_run_once` calls), wake-ups from other threads
  (`call_soon_threadsafe`) and callbacks run (`Handle._run`);
- cyclic GC collections in the daemon and their longest pause.

    uv run python bench/daemon_budget.py --build old=/tmp/old-tree --build new=. --rounds 2 a d

A build is a checkout whose `packages/*/src` go first on the daemon's PYTHONPATH; the client
is always the SDK this script runs with, so builds differ only in the daemon. The daemon runs
under this script's `--serve` mode, which counts the above and reports on SIGUSR2; its own
counting costs well under 1 µs per iteration, the same for every build.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import free_port, stop_process, wait_for_port

MESSAGES = {"a": 1000, "b": 20000, "d": 5000}
"""Messages per scenario, as in `publish_paths.py`."""


# -- inside the daemon ----------------------------------------------------------------------------


def serve(stats_path: str, daemon_args: list[str]) -> None:
    """Run msgbusd with counters; SIGUSR2 writes them (and the thread names) to `stats_path`."""
    from asyncio import base_events, events

    counts = {"iterations": 0, "threadsafe": 0, "callbacks": 0, "gc": 0, "gc_max_ms": 0.0}
    counts["gc_total_ms"] = 0.0
    run_once = base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]
    threadsafe = base_events.BaseEventLoop.call_soon_threadsafe
    handle_run = events.Handle._run

    def counted_run_once(self: Any) -> None:
        counts["iterations"] += 1
        run_once(self)

    def counted_threadsafe(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["threadsafe"] += 1
        return threadsafe(self, *args, **kwargs)

    by_name = bool(os.environ.get("BUDGET_CALLBACKS"))
    """Also count which callbacks run, by name (a debugging aid: a repr per callback)."""

    def counted_handle_run(self: Any) -> None:
        counts["callbacks"] += 1
        if by_name:
            callback = getattr(self._callback, "__qualname__", None) or repr(self._callback)[:60]
            key = f"cb {callback}"
            counts[key] = counts.get(key, 0) + 1
        handle_run(self)

    base_events.BaseEventLoop._run_once = counted_run_once  # type: ignore[attr-defined]
    base_events.BaseEventLoop.call_soon_threadsafe = counted_threadsafe  # type: ignore[method-assign,assignment]
    events.Handle._run = counted_handle_run  # type: ignore[method-assign]

    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause = (time.perf_counter() - started[0]) * 1e3
        counts["gc"] += 1
        generation = f"gc_gen{info['generation']}"
        counts[generation] = counts.get(generation, 0) + 1
        counts["gc_total_ms"] += pause
        if pause > counts["gc_max_ms"]:
            counts["gc_max_ms"] = pause
            counts["gc_max_collected"] = info["collected"]  # garbage it freed
            counts["gc_max_tracked"] = len(gc.get_objects(info["generation"]))

    gc.callbacks.append(on_gc)
    freeze = bool(os.environ.get("BUDGET_GC_FREEZE"))
    """A trial: at the first report (after start and warm-up), move the daemon's heap out of
    the collector's reach (`gc.freeze`), so a full collection scans only what came later."""

    def report(signum: int, frame: object) -> None:
        if freeze and not gc.get_freeze_count():
            gc.freeze()
        threads = {str(t.native_id): t.name for t in threading.enumerate()}
        snapshot = {"counts": dict(counts), "threads": threads}
        tmp = stats_path + ".tmp"
        Path(tmp).write_text(json.dumps(snapshot))
        os.replace(tmp, stats_path)
        counts["gc_max_ms"] = 0.0  # the longest pause since the last report
        counts["gc_max_collected"] = counts["gc_max_tracked"] = 0

    profile_path = os.environ.get("BUDGET_PROFILE")
    if profile_path:
        # cProfile of the event loop thread: call counts per message (its times are inflated).
        import cProfile

        profilers = [cProfile.Profile()]
        profilers[0].enable()
        reported = report

        def report(signum: int, frame: object) -> None:
            # Each report holds what ran since the previous one: the last one, the scenario.
            profilers[0].disable()
            profilers[0].dump_stats(profile_path)
            profilers[0] = cProfile.Profile()
            profilers[0].enable()
            reported(signum, frame)

    signal.signal(signal.SIGUSR2, report)
    if os.environ.get("BUDGET_UVLOOP"):
        # A trial (`uv run --with uvloop`): the daemon on uvloop's event loop. The loop
        # counters above count asyncio's own loop only, so they stay at 0.
        import importlib

        importlib.import_module("uvloop").install()
    from msgbus_server.cli import main

    main(daemon_args)


# -- the driver -----------------------------------------------------------------------------------


def thread_cpu_us(pid: int, names: dict[str, str]) -> dict[str, float]:
    """CPU µs used so far by the daemon's threads, summed by role."""
    roles: dict[str, float] = {"loop": 0.0, "writer": 0.0, "readers": 0.0, "grpc": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            # schedstat's first field: ns on a CPU (stat's utime + stime count 10 ms ticks).
            used = int((task / "schedstat").read_text().split()[0]) / 1e3
        except OSError:
            continue  # the thread ended
        name = names.get(task.name, "")
        if task.name == str(pid):
            role = "loop"
        elif name == "msgbus-writer":
            role = "writer"
        elif name.startswith("msgbus-reader"):
            role = "readers"
        elif name:
            # grpc.aio's poller is a Python thread ("Thread-N (_poll_wrapper)").
            role = "grpc" if "_poll_wrapper" in name else name
        else:
            role = "grpc"  # threads Python does not know: gRPC core's
        roles[role] = roles.get(role, 0.0) + used
    return roles


class DaemonUnderTest:
    """One msgbusd of one build, under `--serve`, with its counters."""

    def __init__(self, tree: Path) -> None:
        self.dir = tempfile.mkdtemp(prefix="daemon-budget-")
        self.stats = f"{self.dir}/stats.json"
        self.port = free_port()
        path = [str(p) for p in sorted(tree.glob("packages/*/src"))]
        pythonpath = os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, PYTHONPATH=pythonpath)
        args = ["--listen", f"127.0.0.1:{self.port}", "--data", f"{self.dir}/db.sqlite"]
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", self.stats, "--", *args],
            env=env,
            stderr=subprocess.DEVNULL,
        )

    def sample(self) -> dict[str, float]:
        """Cumulative CPU µs per thread role and the loop's counters."""
        before = os.stat(self.stats).st_mtime_ns if os.path.exists(self.stats) else 0
        self.process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if os.path.exists(self.stats) and os.stat(self.stats).st_mtime_ns != before:
                break
            time.sleep(0.005)
        snapshot = json.loads(Path(self.stats).read_text())
        cpu = thread_cpu_us(self.process.pid, snapshot["threads"])
        return {**{f"{k}_us": v for k, v in cpu.items()}, **snapshot["counts"]}

    def stop(self) -> None:
        stop_process(self.process)


def per_message(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """What each counter grew by per message; GC figures as totals (the longest pause as is)."""
    out = {k: (v - before.get(k, 0.0)) / n for k, v in after.items() if not k.startswith("gc")}
    out["daemon_us"] = sum(v for k, v in out.items() if k.endswith("_us"))
    for key, value in after.items():
        if key.startswith("gc"):
            out[key] = value if key.startswith("gc_max") else value - before.get(key, 0)
    return out


async def run_scenario(name: str, daemon: DaemonUnderTest) -> dict[str, Any]:
    """One scenario of `publish_paths` with the daemon's counters around it."""
    import publish_paths

    marks: list[dict[str, float]] = []
    result = await publish_paths.scenario(
        name, f"127.0.0.1:{daemon.port}", daemon.process.pid, lambda: marks.append(daemon.sample())
    )
    result.update(per_message(marks[-2], marks[-1], MESSAGES[name]))
    return result


def main() -> None:
    """Parse the command line; run every scenario of every build, interleaved by round."""
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="append", required=True, help="NAME=CHECKOUT")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("scenarios", nargs="+", choices=sorted(MESSAGES))
    options = parser.parse_args()
    builds = [(b.split("=", 1)[0], Path(b.split("=", 1)[1]).resolve()) for b in options.build]
    for round_number in range(1, options.rounds + 1):
        for name in options.scenarios:
            for build, tree in builds:
                daemon = DaemonUnderTest(tree)
                try:
                    wait_for_port(daemon.port)
                    time.sleep(0.3)
                    result = asyncio.run(run_scenario(name, daemon))
                finally:
                    daemon.stop()
                line = {"round": round_number, "scenario": name, "build": build, **result}
                print(
                    json.dumps(
                        {k: round(v, 3) if isinstance(v, float) else v for k, v in line.items()}
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
