"""Fleet sync benchmark: a peer holding N logs, its first full sync and its idle passes.

Not a test: run it by hand and copy the table into the README (issue 15's figures).

    uv run python bench/fleet_sync_bench.py                     # 100,000 logs, several minutes
    uv run python bench/fleet_sync_bench.py --logs 20000
    uv run python bench/fleet_sync_bench.py --tree /tmp/before  # the daemons of another tree

One run, on real msgbusd processes and database files:

1. a "hub" daemon gets one message on each of N distinct topics (PublishBatch calls of 10,000
   entries), so it holds N logs of its own origin;
2. a "device" daemon starts with `--peer <hub>` (default sync settings: a pass a second) and
   its first full sync is timed from its launch until its ListHeads holds all N logs of the
   hub's origin;
3. idle: nothing is published for `--idle-seconds`, and the CPU of the device and of the hub
   is read from /proc/<pid>/stat (utime + stime, over the wall time), as a share of one core;
4. while the device keeps syncing idly, `--rounds` rounds of `--publishes` sequential Publish
   calls to one local topic of the device (3 s apart) give its p50/p99, over all calls and
   per round; then the device is restarted on the same file with no peer (the baseline: the
   same N logs, no sync), and the same idle CPU and publishes are measured on it. The ratio
   of the two p99s is the figure issue 15 bounds at 2x.

`--tree PATH` runs both daemons from another checkout (its `.venv/bin/python -m msgbus_server`,
after `uv sync --frozen` in it), so "before" and "after" are measured by the same client code.
The machine is shared, so the "other cores" column says how busy the rest of it was.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import grpc

from bench_common import PAYLOAD_SIZE, CpuWatch, percentile, process_cpu_seconds
from msgbus_core.limits import MAX_FETCH_LIMIT, RECEIVE_LIMIT_BYTES
from msgbus_proto import pb, rpc
from msgbus_server import testing
from msgbus_server.testing import Daemon

HUB_NODE = "fleet/default/hub"
DEVICE_NODE = "fleet/default/device"
PUBLISH_BATCH = 10_000
"""Entries per PublishBatch call that fills the hub (the daemon's largest batch)."""
LOCAL_TOPIC = "bench.local"
WARM_UP_PUBLISHES = 50
"""Publishes before the timed ones: the channel, the log's creation, the first commits."""
SETTLE_S = 5.0
"""Seconds between the end of the first sync and the idle window: the last pass finishes and
its sync state is written."""
POLL_S = 0.5
ROUND_GAP_S = 3.0
"""Seconds between two rounds of publishes, so that they sample different moments."""
PROGRESS_S = 30.0
"""Seconds between full counts of the device's logs during the first sync."""


@dataclass(frozen=True)
class IdleCpu:
    """Shares of one core over an idle window."""

    seconds: float
    device: float
    hub: float
    other_cores: float
    """Cores that processes other than the bench and its daemons used meanwhile."""


@dataclass(frozen=True)
class Latency:
    """Sequential local Publish calls to the device."""

    calls: int
    """All rounds together; the percentiles are over all of them."""
    p50_ms: float
    p99_ms: float
    max_ms: float
    round_p99_ms: tuple[float, ...]
    """Each round's own p99: their spread shows how much of a difference is noise."""


@dataclass(frozen=True)
class FleetResult:
    """One run's figures."""

    tree: str
    logs: int
    storage: str
    fill_s: float
    """Publishing the N messages to the hub."""
    first_sync_s: float
    """From the device's launch to holding all N logs of the hub."""
    device_rss_mib: float
    """The device's resident memory once the first sync completed."""
    synced_idle: IdleCpu
    synced_publish: Latency
    baseline_idle: IdleCpu
    """The device restarted with no peer; `hub` is the hub, no longer asked for anything."""
    baseline_publish: Latency

    @property
    def p99_ratio(self) -> float:
        """The publish p99 while syncing over the p99 without sync."""
        return self.synced_publish.p99_ms / self.baseline_publish.p99_ms


def tree_command(tree: Path) -> list[str]:
    """The argv prefix that runs msgbusd from the checkout at `tree` (its own virtualenv)."""
    python = tree / ".venv" / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"--tree {tree}: no {python}; run `uv sync --frozen` in that tree first")
    return [str(python), "-m", "msgbus_server"]


@contextlib.contextmanager
def daemons_from(tree: Path | None) -> Iterator[None]:
    """Within the block, `Daemon` launches msgbusd from `tree` (None: this interpreter's).

    `Daemon` builds its command from `testing.msgbusd_command()`, looked up at every launch,
    so replacing that one function moves every start and restart to the other tree.
    """
    if tree is None:
        yield
        return
    command = tree_command(tree)
    with mock.patch.object(testing, "msgbusd_command", return_value=command):
        yield


def listing_stub(daemon: Daemon) -> rpc.MsgbusServiceStub:
    """A stub that can receive an original daemon's unpaged ListHeads of every log."""
    channel = grpc.insecure_channel(
        daemon.endpoint, options=[("grpc.max_receive_message_length", RECEIVE_LIMIT_BYTES)]
    )
    return rpc.MsgbusServiceStub(channel)


def node_pb(key: str) -> pb.NodeId:
    tenant_id, bl_name, device_id = key.split("/")
    return pb.NodeId(tenant_id=tenant_id, bl_name=bl_name, device_id=device_id)


def fleet_topic(index: int) -> str:
    return f"fleet.{index:06d}"


def fill_hub(hub: Daemon, logs: int) -> float:
    """Publish one message to each of `logs` topics of the hub; the seconds it took."""
    stub = hub.stub()
    started = time.perf_counter()
    for first in range(0, logs, PUBLISH_BATCH):
        entries = [
            pb.PublishRequest(topic=fleet_topic(index), payload=os.urandom(64))
            for index in range(first, min(first + PUBLISH_BATCH, logs))
        ]
        stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=120.0)
    return time.perf_counter() - started


def count_logs_of(stub: rpc.MsgbusServiceStub, origin: pb.NodeId) -> int:
    """How many logs of `origin` the daemon lists, following ListHeads pages.

    An original daemon ignores the paging fields and answers every head at once.
    """
    count, token = 0, ""
    while True:
        response = stub.ListHeads(
            pb.ListHeadsRequest(page_size=MAX_FETCH_LIMIT, page_token=token), timeout=60.0
        )
        count += sum(1 for head in response.heads if head.origin == origin and head.head_id)
        token = response.next_page_token
        if not token:
            return count


def wait_first_sync(device: Daemon, args: argparse.Namespace, launched: float) -> float:
    """Seconds from `launched` until the device lists all `args.logs` logs of the hub.

    Fails when the sync takes longer than `--sync-timeout`, or when the device gains no log
    for `--stall-seconds` (a sync that stopped short would otherwise wait out the timeout).
    """
    logs: int = args.logs
    stub, lister = device.stub(), listing_stub(device)
    hub = node_pb(HUB_NODE)
    last = pb.GetHeadRequest(topic=fleet_topic(logs - 1), origin=hub)
    deadline = launched + args.sync_timeout
    held, grew, counted = 0, launched, launched
    while time.perf_counter() < deadline:
        if device.poll() is not None:
            raise SystemExit(f"the device exited during its first sync:\n{device.stderr_text()}")
        now = time.perf_counter()
        # A pass syncs the logs in listing (topic) order, so the last topic arrives last: until
        # it does, a GetHead is enough, and the full listing (which costs the device CPU) is
        # asked for only every PROGRESS_S, to see that the sync moves.
        arrived = stub.GetHead(last, timeout=30.0).found
        if arrived or now - counted >= PROGRESS_S:
            count, counted = count_logs_of(lister, hub), now
            if count == logs:
                return time.perf_counter() - launched
            if count > held:
                held, grew = count, now
                progress(f"the device holds {held:,} of {logs:,} logs")
            elif now - grew >= args.stall_seconds:
                raise SystemExit(
                    f"the first sync stalled: the device held {held:,} of {logs:,} logs "
                    f"and gained none in {now - grew:.0f} s"
                )
        time.sleep(POLL_S)
    held = count_logs_of(lister, hub)
    raise SystemExit(
        f"the first sync was not done after {args.sync_timeout:.0f} s: {held:,} of {logs:,}"
    )


def measure_idle(device: Daemon, hub: Daemon, seconds: float) -> IdleCpu:
    """The device's and the hub's CPU over `seconds` in which nothing is published."""
    watch = CpuWatch()
    watch.start([device.pid, hub.pid])
    before = (process_cpu_seconds(device.pid), process_cpu_seconds(hub.pid))
    started = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - started
    after = (process_cpu_seconds(device.pid), process_cpu_seconds(hub.pid))
    return IdleCpu(
        seconds=wall,
        device=(after[0] - before[0]) / wall,
        hub=(after[1] - before[1]) / wall,
        other_cores=watch.stop(),
    )


def measure_publish(device: Daemon, calls: int, rounds: int) -> Latency:
    """p50/p99 of `rounds` x `calls` sequential Publish calls to a local topic of the device."""
    stub = device.stub()
    payload = b"x" * PAYLOAD_SIZE
    request = pb.PublishRequest(topic=LOCAL_TOPIC, payload=payload)
    for _ in range(WARM_UP_PUBLISHES):
        stub.Publish(request, timeout=30.0)
    latencies: list[float] = []
    round_p99_ms: list[float] = []
    for index in range(rounds):
        if index:
            time.sleep(ROUND_GAP_S)
        mine: list[float] = []
        for _ in range(calls):
            sent = time.perf_counter()
            stub.Publish(request, timeout=30.0)
            mine.append(time.perf_counter() - sent)
        round_p99_ms.append(percentile(mine, 0.99) * 1e3)
        latencies += mine
    return Latency(
        calls=len(latencies),
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        max_ms=max(latencies) * 1e3,
        round_p99_ms=tuple(round_p99_ms),
    )


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(directory: Path, args: argparse.Namespace) -> FleetResult:
    """One run: fill the hub, sync a device from it, measure idle CPU and publish latency."""
    storage: str = args.storage
    device_dir = directory / "device"
    with contextlib.ExitStack() as stack:
        hub = stack.enter_context(Daemon.start(directory / "hub", storage=storage, node=HUB_NODE))
        fill_s = fill_hub(hub, args.logs)
        progress(f"hub holds {args.logs:,} logs after {fill_s:.1f} s")

        peer = ("--peer", f"{hub.endpoint}={HUB_NODE}")
        launched = time.perf_counter()
        device = Daemon.start(device_dir, storage=storage, node=DEVICE_NODE, extra_args=peer)
        try:
            first_sync_s = wait_first_sync(device, args, launched)
            device_rss_mib = device.rss_kib() / 1024
            progress(f"first sync done in {first_sync_s:.1f} s")
            time.sleep(SETTLE_S)
            synced_idle = measure_idle(device, hub, args.idle_seconds)
            progress(f"idle with sync: device {synced_idle.device:.1%} of a core")
            synced_publish = measure_publish(device, args.publishes, args.rounds)
            progress(f"publish with sync: p99 {synced_publish.p99_ms:.2f} ms")
        except BaseException:
            print(device.stderr_text()[-4000:], file=sys.stderr)
            raise
        finally:
            device.stop(timeout=60.0)

        # The same file, the same identity, no peer: what a publish costs without sync.
        baseline = stack.enter_context(Daemon.start(device_dir, storage=storage, node=DEVICE_NODE))
        time.sleep(SETTLE_S)
        baseline_idle = measure_idle(baseline, hub, args.idle_seconds)
        progress(f"idle without sync: device {baseline_idle.device:.1%} of a core")
        baseline_publish = measure_publish(baseline, args.publishes, args.rounds)
        progress(f"publish without sync: p99 {baseline_publish.p99_ms:.2f} ms")
    return FleetResult(
        tree=str(args.tree or Path(testing.__file__).parents[4]),
        logs=args.logs,
        storage=storage,
        fill_s=fill_s,
        first_sync_s=first_sync_s,
        device_rss_mib=device_rss_mib,
        synced_idle=synced_idle,
        synced_publish=synced_publish,
        baseline_idle=baseline_idle,
        baseline_publish=baseline_publish,
    )


def print_table(result: FleetResult) -> None:
    """The run's figures as a Markdown table, ready for the README."""
    rows = [
        ("first full sync", f"{result.first_sync_s:,.1f} s", ""),
        (
            "idle CPU, device",
            f"{result.synced_idle.device:.1%} of a core",
            f"{result.baseline_idle.device:.1%} of a core",
        ),
        (
            "idle CPU, hub",
            f"{result.synced_idle.hub:.1%} of a core",
            f"{result.baseline_idle.hub:.1%} of a core",
        ),
        (
            "publish p50 / p99 / max",
            f"{result.synced_publish.p50_ms:.2f} / {result.synced_publish.p99_ms:.2f} / "
            f"{result.synced_publish.max_ms:.1f} ms",
            f"{result.baseline_publish.p50_ms:.2f} / {result.baseline_publish.p99_ms:.2f} / "
            f"{result.baseline_publish.max_ms:.1f} ms",
        ),
        (
            "publish p99 of each round",
            " / ".join(f"{p99:.2f}" for p99 in result.synced_publish.round_p99_ms) + " ms",
            " / ".join(f"{p99:.2f}" for p99 in result.baseline_publish.round_p99_ms) + " ms",
        ),
        ("publish p99, synced / baseline", f"{result.p99_ratio:.2f}x", ""),
        (
            "other cores",
            f"{result.synced_idle.other_cores:.2f}",
            f"{result.baseline_idle.other_cores:.2f}",
        ),
    ]
    print(f"\n{result.logs:,} logs, {result.storage}, daemons from {result.tree}:\n")
    print("| figure | device syncing from the hub | device without a peer |")
    print("|---|---:|---:|")
    for name, synced, baseline in rows:
        print(f"| {name} | {synced} | {baseline} |")
    print(
        f"\nfilling the hub took {result.fill_s:.1f} s; the device's RSS after its first sync "
        f"was {result.device_rss_mib:,.0f} MiB",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=int, default=100_000, help="logs the hub holds")
    parser.add_argument(
        "--tree", type=Path, default=None, help="run msgbusd from this checkout's .venv"
    )
    parser.add_argument("--storage", choices=("sqlite", "duckdb"), default="sqlite")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="each idle window")
    parser.add_argument("--publishes", type=int, default=2_000, help="timed publishes a round")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of publishes a phase")
    parser.add_argument(
        "--sync-timeout", type=float, default=3_600.0, help="seconds the first sync may take"
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=120.0,
        help="fail when the first sync gains no log for this long",
    )
    parser.add_argument("--dir", default=None, help="where the database files go (default: tmp)")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.logs < 1:
        parser.error(f"--logs must be at least 1, got {args.logs}")
    if args.idle_seconds <= 0:
        parser.error(f"--idle-seconds must be above 0, got {args.idle_seconds}")
    if args.publishes < 100:
        parser.error(f"--publishes must be at least 100 (for a p99), got {args.publishes}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.sync_timeout <= 0:
        parser.error(f"--sync-timeout must be above 0, got {args.sync_timeout}")
    if args.stall_seconds <= 0:
        parser.error(f"--stall-seconds must be above 0, got {args.stall_seconds}")
    if args.tree is not None:
        args.tree = args.tree.resolve()
        tree_command(args.tree)

    directory = Path(tempfile.mkdtemp(prefix="msgbus-fleet-bench-", dir=args.dir))
    started = datetime.datetime.now(datetime.UTC)
    print(
        f"# msgbus fleet sync benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {args.logs:,} logs, "
        f"idle windows of {args.idle_seconds:.0f} s, {args.rounds} x {args.publishes:,} "
        f"publishes a phase; files in {directory}",
        flush=True,
    )
    try:
        with daemons_from(args.tree):
            result = run(directory, args)
    except grpc.RpcError as error:
        print(f"a call failed: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print_table(result)
    if args.output is not None:
        report = {"started": started.isoformat(), "argv": sys.argv, **asdict(result)}
        report["p99_ratio"] = result.p99_ratio
        args.output.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nfigures written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
