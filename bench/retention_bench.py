"""Retention benchmark: file size, RSS and publish rate of msgbusd under a steady load.

Not a test: run it by hand and copy the tables into the README.

    uv run python bench/retention_bench.py                          # 3 minutes a run, both stores
    uv run python bench/retention_bench.py --minutes 2 --storage sqlite
    uv run python bench/retention_bench.py --quick                  # 20 s a run, a smoke run

For every store, three runs each start a real msgbusd on a fresh file and publish to one log at
a fixed offered rate (`--rate` messages per second, `--batch` messages of `--payload-bytes`
random bytes per PublishBatch call, one call in flight):

- `no retention`: nothing is ever removed, so the file grows with the load (the baseline);
- `max-bytes 32MiB`: `--retention '*:max-bytes=32MiB'` (the log's payload bytes, not the file);
- `disk 64MiB`: `--max-disk-bytes 64MiB --discard old` with no rule (the files less their
  reusable free pages).

Every second the sampler records the footprint (the database file and its WAL), the daemon's
RSS, the messages acknowledged in that second with the p50/p99 latency of its calls, and the
log's first head. The calls are paced from a fixed schedule; a call that returns late is
followed by the next one at once, and a backlog of more than a second is dropped rather than
sent as a burst, so the achieved rate says what the daemon kept up with. Each run's mean rate,
latency and daemon CPU are also given as a ratio to the baseline of the same store in the same
invocation: the machine is shared, so single figures move between invocations and only the
ratios within one are worth comparing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import grpc

from bench_common import CpuWatch, percentile, process_cpu_seconds
from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon

TOPIC = "bench.retention"
STORAGES = ("sqlite", "duckdb")
MIB = 1024 * 1024
MAX_BACKLOG_S = 1.0
"""How far the publisher may fall behind its schedule before it gives the backlog up."""


@dataclass(frozen=True)
class Scenario:
    """One run's daemon configuration."""

    name: str
    args: tuple[str, ...]


SCENARIOS = (
    Scenario("no retention", ()),
    Scenario("max-bytes 32MiB", ("--retention", "*:max-bytes=32MiB")),
    Scenario("disk 64MiB", ("--max-disk-bytes", "64MiB", "--discard", "old")),
)


@dataclass(frozen=True)
class Call:
    """One acknowledged PublishBatch call."""

    ended_s: float
    """When it returned, in seconds since the run started."""
    latency_s: float
    messages: int


@dataclass
class Sample:
    """What the sampler saw at the end of one second of a run."""

    t_s: int
    """Seconds since the run started: the sample covers the second before it."""
    footprint_bytes: int
    file_bytes: int
    wal_bytes: int
    rss_kib: int
    first_head_id: int
    head_id: int
    messages: int = 0
    """Messages acknowledged in the second before `t_s`."""
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass
class RunResult:
    """One run: its samples and its summary figures."""

    storage: str
    scenario: str
    daemon_args: list[str]
    seconds: float
    messages: int
    rate: float
    p50_ms: float
    p99_ms: float
    daemon_cores: float
    """The daemon's CPU seconds per second of the run."""
    other_cores: float
    """Cores that processes other than this benchmark and its daemon used meanwhile."""
    samples: list[Sample] = field(default_factory=list)


def wal_path(data_path: Path, storage: str) -> Path:
    """The write-ahead log beside the database file (SQLite `-wal`, DuckDB `.wal`)."""
    suffix = "-wal" if storage == "sqlite" else ".wal"
    return data_path.with_name(data_path.name + suffix)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class Sampler(threading.Thread):
    """Samples the daemon's files, RSS and log head at the end of every second of a run."""

    def __init__(self, daemon: Daemon, started: float, seconds: int) -> None:
        super().__init__(name="sampler", daemon=True)
        self._daemon = daemon
        self._stub = daemon.stub()
        self._run_started = started
        self._seconds = seconds
        self._abort = threading.Event()
        self._wal = wal_path(daemon.data_path, daemon.storage)
        self.samples: list[Sample] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # At each whole second of the run, so that sample k covers the second [k-1, k).
            for tick in range(1, self._seconds + 1):
                if self._abort.wait(max(0.0, self._run_started + tick - time.perf_counter())):
                    return
                self.samples.append(self._take(tick))
        except BaseException as error:  # reported by the main thread, not lost with the thread
            self.error = error

    def _take(self, tick: int) -> Sample:
        main, wal = _size(self._daemon.data_path), _size(self._wal)
        rss = self._daemon.rss_kib()
        head = self._stub.GetHead(pb.GetHeadRequest(topic=TOPIC), timeout=10.0)
        return Sample(tick, main + wal, main, wal, rss, head.first_head_id, head.head_id)

    def finish(self, *, abort: bool = False) -> None:
        """Wait for the last sample (or, with `abort`, stop at once); re-raise its error."""
        if abort:
            self._abort.set()
        self.join()
        if self.error is not None:
            raise self.error


def publish_load(
    stub: rpc.MsgbusServiceStub,
    *,
    started: float,
    rate: float,
    batch: int,
    payload_bytes: int,
    seconds: float,
) -> list[Call]:
    """Publish `rate` messages a second for `seconds` from `started` (perf_counter); the calls."""
    interval = batch / rate
    calls: list[Call] = []
    due, end = started, started + seconds
    while True:
        # Random payloads: identical ones would let DuckDB compress the table and flatter it.
        request = pb.PublishBatchRequest(
            entries=[
                pb.PublishRequest(topic=TOPIC, payload=os.urandom(payload_bytes))
                for _ in range(batch)
            ]
        )
        now = time.perf_counter()
        if due >= end or now >= end:
            break
        if due > now:
            time.sleep(due - now)
        sent = time.perf_counter()
        response = stub.PublishBatch(request, timeout=30.0)
        ended = time.perf_counter()
        calls.append(Call(ended - started, ended - sent, len(response.messages)))
        due += interval
        if ended - due > MAX_BACKLOG_S:
            due = ended
    return calls


def _attach_calls(samples: list[Sample], calls: list[Call]) -> None:
    """Give every sample the messages and latencies of the calls that ended in its second."""
    per_second: dict[int, list[Call]] = {}
    for call in calls:
        per_second.setdefault(int(call.ended_s) + 1, []).append(call)
    for sample in samples:
        mine = per_second.get(sample.t_s, [])
        sample.messages = sum(call.messages for call in mine)
        if mine:
            latencies = [call.latency_s for call in mine]
            sample.p50_ms = percentile(latencies, 0.50) * 1e3
            sample.p99_ms = percentile(latencies, 0.99) * 1e3


def run_scenario(
    directory: Path, storage: str, scenario: Scenario, args: argparse.Namespace
) -> RunResult:
    """Start a daemon for `scenario` on a fresh file, load it, sample it, and stop it."""
    data_dir = directory / f"{storage}-{scenario.name.replace(' ', '-')}"
    daemon = Daemon.start(data_dir, storage=storage, extra_args=scenario.args)
    try:
        stub = rpc.MsgbusServiceStub(daemon.channel())
        # Opens the channel and creates the log, so neither is part of the measurement.
        stub.Publish(pb.PublishRequest(topic=TOPIC, payload=os.urandom(args.payload_bytes)))
        watch = CpuWatch()
        watch.start([daemon.pid])
        cpu_before = process_cpu_seconds(daemon.pid)
        started = time.perf_counter()
        sampler = Sampler(daemon, started, int(args.seconds))
        sampler.start()
        try:
            calls = publish_load(
                stub,
                started=started,
                rate=args.rate,
                batch=args.batch,
                payload_bytes=args.payload_bytes,
                seconds=args.seconds,
            )
        except BaseException:
            sampler.finish(abort=True)
            raise
        elapsed = time.perf_counter() - started
        daemon_cores = (process_cpu_seconds(daemon.pid) - cpu_before) / elapsed
        other_cores = watch.stop()
        sampler.finish()
    except BaseException:
        print(daemon.stderr_text()[-4000:], file=sys.stderr)
        raise
    finally:
        daemon.stop()
    samples = sampler.samples
    _attach_calls(samples, calls)
    latencies = [call.latency_s for call in calls]
    messages = sum(call.messages for call in calls)
    result = RunResult(
        storage=storage,
        scenario=scenario.name,
        daemon_args=list(scenario.args),
        seconds=elapsed,
        messages=messages,
        rate=messages / elapsed,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        daemon_cores=daemon_cores,
        other_cores=other_cores,
        samples=samples,
    )
    shutil.rmtree(data_dir, ignore_errors=True)
    return result


def _mib(count: float) -> str:
    return f"{count / MIB:,.1f}"


def _at(samples: list[Sample], fraction: float) -> Sample:
    """The sample at `fraction` of the run (the last one for 1.0)."""
    index = max(0, min(len(samples) - 1, round(fraction * len(samples)) - 1))
    return samples[index]


def print_table(results: list[RunResult]) -> None:
    """The summary table of one store's runs, with each run's ratios to the first (baseline)."""
    base = results[0]
    header = [
        "run",
        "footprint at 25 / 50 / 75 / 100 % (MiB)",
        "max (MiB)",
        "RSS max (MiB)",
        "first head at end",
        "publish (msg/s)",
        "p50 / p99 (ms)",
        "daemon CPU (cores)",
        "rate / baseline",
        "p99 / baseline",
        "CPU / baseline",
        "other cores",
    ]
    print(f"\n{base.storage}:\n")
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for result in results:
        samples = result.samples
        points = " / ".join(_mib(_at(samples, f).footprint_bytes) for f in (0.25, 0.5, 0.75, 1.0))
        last = samples[-1]
        cells = [
            result.scenario,
            points,
            _mib(max(s.footprint_bytes for s in samples)),
            f"{max(s.rss_kib for s in samples) / 1024:,.0f}",
            f"{last.first_head_id:,} of {last.head_id:,}",
            f"{result.rate:,.0f}",
            f"{result.p50_ms:.1f} / {result.p99_ms:.1f}",
            f"{result.daemon_cores:.2f}",
            f"{result.rate / base.rate:.2f}x",
            f"{result.p99_ms / base.p99_ms:.2f}x",
            f"{result.daemon_cores / base.daemon_cores:.2f}x",
            f"{result.other_cores:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of each run")
    parser.add_argument(
        "--storage", nargs="+", choices=STORAGES, default=list(STORAGES), help="stores to run"
    )
    parser.add_argument("--rate", type=float, default=5000.0, help="offered messages per second")
    parser.add_argument("--batch", type=int, default=100, help="messages per PublishBatch call")
    parser.add_argument("--payload-bytes", type=int, default=1024, help="bytes per message")
    parser.add_argument("--quick", action="store_true", help="20 s a run: a smoke run")
    parser.add_argument("--output", type=Path, default=None, help="write the samples as JSON")
    parser.add_argument("--dir", default=None, help="where the database files go (default: tmp)")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes must be above 0, got {args.minutes}")
    if args.rate <= 0:
        parser.error(f"--rate must be above 0, got {args.rate}")
    if not 1 <= args.batch <= 10_000:
        parser.error(f"--batch must be 1 to 10,000 (PublishBatch's limit), got {args.batch}")
    if not 0 <= args.payload_bytes <= MIB:
        parser.error(
            f"--payload-bytes must be 0 to {MIB} (the daemon's default limit), "
            f"got {args.payload_bytes}"
        )
    args.seconds = 20.0 if args.quick else args.minutes * 60

    directory = Path(tempfile.mkdtemp(prefix="msgbus-retention-bench-", dir=args.dir))
    started = datetime.datetime.now(datetime.UTC)
    print(
        f"# msgbus retention benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, DuckDB {duckdb.__version__}; offered "
        f"{args.rate:,.0f} msg/s in PublishBatch calls of {args.batch} x {args.payload_bytes} B, "
        f"{args.seconds:.0f} s a run; files in {directory}",
        flush=True,
    )
    results: list[RunResult] = []
    try:
        for storage in args.storage:
            mine: list[RunResult] = []
            for scenario in SCENARIOS:
                result = run_scenario(directory, storage, scenario, args)
                last = result.samples[-1]
                print(
                    f"  {storage} {scenario.name}: {result.rate:,.0f} msg/s, footprint "
                    f"{_mib(last.footprint_bytes)} MiB at the end, first head "
                    f"{last.first_head_id:,}",
                    file=sys.stderr,
                    flush=True,
                )
                mine.append(result)
            print_table(mine)
            results.extend(mine)
    except grpc.RpcError as error:
        print(f"a call failed: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.output is not None:
        report = {
            "started": started.isoformat(),
            "argv": sys.argv,
            "rate": args.rate,
            "batch": args.batch,
            "payload_bytes": args.payload_bytes,
            "seconds": args.seconds,
            "runs": [asdict(result) for result in results],
        }
        args.output.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nsamples written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
