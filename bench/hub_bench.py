"""Hub benchmark (issue 16): msgbusd on PostgreSQL, one and two processes, against SQLite.

Not a test: run it by hand and copy the table into the README.

    uv run python bench/hub_bench.py            # full sizes, about two and a half minutes
    uv run python bench/hub_bench.py --quick    # small sizes, a smoke run

One run starts its own PostgreSQL server (`msgbus_testkit.postgres.PostgresServer`, with
`fsync=on` and `synchronous_commit=on`: every acknowledged write is on disk, as with SQLite's
`synchronous=FULL`) and real msgbusd processes, and measures, with 256-byte payloads:

1. publish throughput: `--publishers` concurrent publishers, each its own SDK client (one Publish
   per call, no client-side coalescing), for `--seconds` after `--warm-up-seconds`; and
   PublishBatch throughput: `--batch-publishers` publishers sending batches of `--batch-size`.
   On SQLite (one process), PostgreSQL with one process, and PostgreSQL with two processes on
   one database (the same node identity, the publishers alternating between them). Messages
   are counted by when their call returned inside the window; p50/p99 are per call.
2. catch-up: a device daemon (SQLite) holds `--catch-up` messages in one log (published with
   PublishBatch, not timed); a fresh hub (SQLite, then PostgreSQL) starts with `--peer <device>`
   and the sync settings of bench_msgbus (`SYNC_ARGS`), and is timed from its launch until its
   GetHead of the device's log reaches the last message.
3. live latency: `--live-rate` publishes a second for `--live-seconds`; latency is the time from
   just before the Publish call to the subscriber's receipt, both in this process (one clock).
   On SQLite and PostgreSQL with subscriber and publisher on the same process, and on PostgreSQL
   with the subscriber on process B and the publisher on process A (B learns of A's commits
   through LISTEN/NOTIFY).

Every phase also records the CPU of msgbusd, of PostgreSQL (the postmaster and its backends), of
this process (the load generator) and of everything else on the machine ("others"): the machine
is shared, so single figures move between runs, and the ratios within one run say more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import psycopg

from bench_common import (
    PAYLOAD_SIZE,
    CpuWatch,
    latency_from_payload,
    payload_with_timestamp,
    percentile,
    process_cpu_seconds,
)
from bench_msgbus import SYNC_ARGS
from msgbus_proto import pb
from msgbus_sdk import AsyncMsgbusClient, MessageEnvelope
from msgbus_server.testing import Daemon

# The PostgreSQL test server lives in the shared test package (tests/msgbus_testkit), which
# pytest and mypy find through their path settings; a script run by hand has to add it.
_TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(_TESTS) not in sys.path:
    sys.path.append(str(_TESTS))

from msgbus_testkit.postgres import (  # noqa: E402
    PostgresServer,
    cluster_processes,
    find_binaries,
    postgres_unavailable,
)

HUB_NODE = "fleet/default/hub"
DEVICE_NODE = "fleet/default/device"
PUBLISH_TOPIC = "bench.publish"
BATCH_TOPIC = "bench.batch"
LIVE_TOPIC = "bench.live"
CATCH_UP_TOPIC = "bench.catchup"
FILL_BATCH = 10_000
"""Entries per PublishBatch call that fills the device (the daemon's largest batch)."""
CALL_TIMEOUT_S = 60.0
"""Deadline of each client call: generous, since two shared cores may be saturated."""
LIVE_READY_TIMEOUT_S = 30.0
"""How long the subscriber may take to receive the first (untimed) message."""
CATCH_UP_POLL_S = 0.05

POSTGRES_SETTINGS: Mapping[str, str] = {
    # The durability under test: a commit returns once its WAL is flushed to disk.
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    # The test default (32MB) is sized for many servers side by side; one server here.
    "shared_buffers": "256MB",
}

SQLITE = "SQLite, 1 process"
PG_ONE = "PostgreSQL, 1 process"
PG_TWO = "PostgreSQL, 2 processes"
TARGETS = (SQLITE, PG_ONE, PG_TWO)


# --- Figures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    """Average cores each party used over a phase's timed window."""

    msgbusd: float
    postgres: float
    client: float
    """This process: the load generator and the subscriber."""
    others: float
    """Everything else on the (shared) machine."""


@dataclass(frozen=True)
class Throughput:
    """Concurrent Publish or PublishBatch calls over a timed window."""

    publishers: int
    batch_size: int
    """1 for Publish calls."""
    seconds: float
    calls: int
    messages: int
    rate: float
    """Acknowledged messages a second."""
    p50_ms: float
    p99_ms: float
    cores: Cores


@dataclass(frozen=True)
class Latency:
    """Publish-to-receipt latency of a live subscriber."""

    messages: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cores: Cores


@dataclass(frozen=True)
class CatchUp:
    """A fresh hub pulling a device's log."""

    messages: int
    seconds: float
    """From the hub's launch until it held the last message."""
    startup_s: float
    """Of which: from the launch until the hub answered Health."""
    rate: float
    cores: Cores


@dataclass(frozen=True)
class TargetResult:
    """One store configuration's publish and live-latency figures."""

    publish: Throughput
    batch: Throughput
    live: Latency
    live_path: str


@dataclass(frozen=True)
class Machine:
    """Where the run happened."""

    cpus: int
    kernel: str
    python: str
    postgres: str
    postgres_settings: dict[str, str]


# --- Processes -------------------------------------------------------------------------------


class Processes:
    """The daemons of the run, each stopped when its phase ends and killed if anything fails."""

    def __init__(self) -> None:
        self._started: list[Daemon] = []

    def start(
        self,
        directory: Path,
        *,
        storage: str,
        node: str,
        data: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> Daemon:
        """`Daemon.start` (waits until it serves), remembered for `kill_all`."""
        daemon = Daemon.start(
            directory, storage=storage, node=node, data=data, extra_args=extra_args
        )
        self._started.append(daemon)
        return daemon

    @contextlib.contextmanager
    def running(self, starts: Sequence[Callable[[], Daemon]]) -> Iterator[list[Daemon]]:
        """The daemons `starts` launch, in order, stopped (SIGTERM) when the block ends."""
        daemons: list[Daemon] = []
        try:
            for start in starts:
                daemons.append(start())
            yield daemons
        except BaseException:
            for daemon in daemons:
                print(f"--- {daemon} stderr (tail):", file=sys.stderr)
                print(daemon.stderr_text()[-3000:], file=sys.stderr)
            raise
        finally:
            for daemon in daemons:
                with contextlib.suppress(TimeoutError):
                    daemon.stop(timeout=30.0)

    def kill_all(self) -> None:
        """SIGKILL whatever daemon still runs (after Ctrl-C or a failure).

        A signal that lands while `Daemon.start` waits for the daemon to serve leaves a process
        that no `Daemon` was returned for: those are found among this process's children.
        """
        for daemon in self._started:
            daemon.kill()
        for pid in _msgbusd_children():
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def _msgbusd_children() -> list[int]:
    """The msgbusd processes this process started that still run."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"msgbus_server" in command:
            children.append(int(entry.name))
    return children


class CoreMeter:
    """Reads the CPU of msgbusd, PostgreSQL, this process and the rest between two points."""

    def __init__(self, daemons: Sequence[Daemon], server: PostgresServer | None) -> None:
        self._daemon_pids = [daemon.pid for daemon in daemons]
        self._server = server
        self._watch = CpuWatch()
        self._before: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._postgres_pids: list[int] = []
        self._started = 0.0

    def _read(self) -> tuple[float, float, float]:
        return (
            sum(process_cpu_seconds(pid) for pid in self._daemon_pids),
            sum(process_cpu_seconds(pid) for pid in self._postgres_pids),
            process_cpu_seconds(os.getpid()),
        )

    def start(self) -> None:
        """Begin the window."""
        # Backends are the daemons' pooled connections, which live as long as the daemons.
        self._postgres_pids = (
            cluster_processes(self._server.data_dir) if self._server is not None else []
        )
        self._watch.start([*self._daemon_pids, *self._postgres_pids])
        self._before = self._read()
        self._started = time.perf_counter()

    def stop(self) -> Cores:
        """End the window: each party's average cores over it."""
        wall = max(time.perf_counter() - self._started, 1e-9)
        after = self._read()
        used = [(a - b) / wall for a, b in zip(after, self._before, strict=True)]
        return Cores(msgbusd=used[0], postgres=used[1], client=used[2], others=self._watch.stop())


def progress(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- Publish throughput ----------------------------------------------------------------------


@dataclass
class Window:
    """The timed part of a load: calls that return between `start` and `end` count."""

    start: float = math.inf
    end: float = math.inf


async def settle(tasks: Sequence[asyncio.Task[object]]) -> None:
    """Cancel what still runs of `tasks` and wait for all: no failure is left unretrieved."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def connect(endpoint: str, *, coalesce: bool = False) -> AsyncMsgbusClient:
    return await AsyncMsgbusClient.connect(
        endpoint, timeout=CALL_TIMEOUT_S, coalesce_publishes=coalesce
    )


async def publish_load(
    daemons: Sequence[Daemon],
    server: PostgresServer | None,
    *,
    topic: str,
    publishers: int,
    batch_size: int,
    warm_up_s: float,
    seconds: float,
) -> Throughput:
    """`publishers` clients, alternating over `daemons`, publishing as fast as acknowledged."""
    payload = os.urandom(PAYLOAD_SIZE)
    entries = [(topic, payload)] * batch_size
    window = Window()
    latencies: list[float] = []
    counted = [0]
    clients = [await connect(daemons[i % len(daemons)].endpoint) for i in range(publishers)]

    async def publisher(client: AsyncMsgbusClient) -> None:
        while True:
            began = time.perf_counter()
            if began >= window.end:
                return
            if batch_size == 1:
                await client.publish(topic, payload)
            else:
                await client.publish_batch(entries)
            ended = time.perf_counter()
            if window.start <= ended <= window.end:
                latencies.append(ended - began)
                counted[0] += batch_size

    meter = CoreMeter(daemons, server)
    tasks = [asyncio.create_task(publisher(client)) for client in clients]
    try:
        await asyncio.sleep(warm_up_s)
        meter.start()
        window.start = time.perf_counter()
        await asyncio.sleep(seconds)
        window.end = time.perf_counter()
        cores = meter.stop()
        await asyncio.gather(*tasks)
    finally:
        await settle(tasks)
        for client in clients:
            await client.close()
    wall = window.end - window.start
    return Throughput(
        publishers=publishers,
        batch_size=batch_size,
        seconds=wall,
        calls=len(latencies),
        messages=counted[0],
        rate=counted[0] / wall,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        cores=cores,
    )


# --- Live latency ----------------------------------------------------------------------------


async def live_latency(
    publisher: Daemon,
    subscriber: Daemon,
    server: PostgresServer | None,
    *,
    rate: int,
    seconds: float,
) -> Latency:
    """Publish `rate` a second on `publisher`, receive on `subscriber`; the latencies."""
    total = max(1, int(rate * seconds))
    latencies: list[float] = []
    ready = asyncio.Event()
    meter = CoreMeter(
        [publisher, subscriber] if publisher is not subscriber else [publisher], server
    )
    async with (
        await connect(subscriber.endpoint) as receiving,
        await connect(publisher.endpoint, coalesce=True) as sending,
    ):
        # Head 1 is an untimed first message: once it arrived, the subscription is live.
        last = total + 1

        async def consume() -> None:
            async for message in receiving.subscribe(LIVE_TOPIC, from_head_id=1):
                if message.head_id == 1:
                    ready.set()
                    continue
                latencies.append(latency_from_payload(message.payload))
                if message.head_id >= last:
                    return

        consumer = asyncio.create_task(consume())
        publishes: list[asyncio.Task[MessageEnvelope]] = []
        try:
            await sending.publish(LIVE_TOPIC, payload_with_timestamp())
            await asyncio.wait_for(ready.wait(), timeout=LIVE_READY_TIMEOUT_S)
            meter.start()
            began = time.perf_counter()
            for index in range(total):
                delay = began + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Not awaited here: a slow commit must not hold back the schedule.
                publish = sending.publish(LIVE_TOPIC, payload_with_timestamp())
                publishes.append(asyncio.create_task(publish))
            await asyncio.gather(*publishes)
            await asyncio.wait_for(consumer, timeout=seconds + 60.0)
            cores = meter.stop()
        finally:
            await settle([consumer, *publishes])
    return Latency(
        messages=len(latencies),
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        max_ms=max(latencies) * 1e3,
        cores=cores,
    )


# --- Catch-up --------------------------------------------------------------------------------


def node_pb(key: str) -> pb.NodeId:
    tenant_id, bl_name, device_id = key.split("/")
    return pb.NodeId(tenant_id=tenant_id, bl_name=bl_name, device_id=device_id)


def fill_device(device: Daemon, messages: int) -> float:
    """Publish `messages` to one log of the device with PublishBatch; the seconds it took."""
    stub = device.stub()
    payload = os.urandom(PAYLOAD_SIZE)
    started = time.perf_counter()
    for first in range(0, messages, FILL_BATCH):
        count = min(FILL_BATCH, messages - first)
        entries = [pb.PublishRequest(topic=CATCH_UP_TOPIC, payload=payload)] * count
        stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=300.0)
    return time.perf_counter() - started


def catch_up(
    processes: Processes,
    device: Daemon,
    directory: Path,
    server: PostgresServer | None,
    *,
    messages: int,
    timeout: float,
) -> CatchUp:
    """Start a fresh hub peering with `device`; time it until it holds the device's log."""
    storage = "sqlite" if server is None else "postgres"
    data = None if server is None else server.create_database()
    peer = ("--peer", f"{device.endpoint}={DEVICE_NODE}", *SYNC_ARGS)
    request = pb.GetHeadRequest(topic=CATCH_UP_TOPIC, origin=node_pb(DEVICE_NODE))

    def start_hub() -> Daemon:
        return processes.start(
            directory, storage=storage, data=data, node=HUB_NODE, extra_args=peer
        )

    launched = time.perf_counter()
    with processes.running([start_hub]) as (hub,):
        meter = CoreMeter([hub, device], server)
        meter.start()
        stub = hub.stub()
        deadline = launched + timeout
        while stub.GetHead(request, timeout=CALL_TIMEOUT_S).head_id < messages:
            if hub.poll() is not None:
                raise SystemExit(f"the {storage} hub exited during catch-up")
            if time.perf_counter() > deadline:
                raise SystemExit(f"the {storage} hub did not catch up within {timeout:.0f} s")
            time.sleep(CATCH_UP_POLL_S)
        seconds = time.perf_counter() - launched
        cores = meter.stop()
    return CatchUp(
        messages=messages,
        seconds=seconds,
        startup_s=hub.startup_s,
        rate=messages / seconds,
        cores=cores,
    )


# --- The run ---------------------------------------------------------------------------------


def postgres_facts(server: PostgresServer) -> tuple[str, dict[str, str]]:
    """The server's `SELECT version()` and the settings that matter here, as it reports them."""
    with server.connect() as conn:
        row = conn.execute("SELECT version()").fetchone()
        settings: dict[str, str] = {}
        for name in POSTGRES_SETTINGS:
            value = conn.execute(f"SHOW {name}").fetchone()
            settings[name] = str(value[0]) if value else "?"
    for name in ("fsync", "synchronous_commit"):
        if settings[name] != "on":
            raise SystemExit(f"PostgreSQL runs with {name}={settings[name]}, not on")
    return (str(row[0]) if row else "?"), settings


async def measure_target(
    name: str,
    daemons: list[Daemon],
    server: PostgresServer | None,
    args: argparse.Namespace,
) -> TargetResult:
    """Publish, PublishBatch and live latency on one store configuration."""
    publish = await publish_load(
        daemons,
        server,
        topic=PUBLISH_TOPIC,
        publishers=args.publishers,
        batch_size=1,
        warm_up_s=args.warm_up_seconds,
        seconds=args.seconds,
    )
    progress(f"{name}: Publish {publish.rate:,.0f} msg/s, p99 {publish.p99_ms:.1f} ms")
    batch = await publish_load(
        daemons,
        server,
        topic=BATCH_TOPIC,
        publishers=args.batch_publishers,
        batch_size=args.batch_size,
        warm_up_s=args.warm_up_seconds,
        seconds=args.seconds,
    )
    progress(f"{name}: PublishBatch {batch.rate:,.0f} msg/s, p99 {batch.p99_ms:.1f} ms")
    # With two processes, the subscriber is on B and the publisher on A.
    publisher, subscriber = daemons[0], daemons[-1]
    live = await live_latency(
        publisher, subscriber, server, rate=args.live_rate, seconds=args.live_seconds
    )
    path = "across processes" if publisher is not subscriber else "same process"
    progress(f"{name}: live {path} p50 {live.p50_ms:.2f} ms, p99 {live.p99_ms:.2f} ms")
    return TargetResult(publish=publish, batch=batch, live=live, live_path=path)


async def run(
    directory: Path, server: PostgresServer, processes: Processes, args: argparse.Namespace
) -> tuple[dict[str, TargetResult], dict[str, CatchUp]]:
    """Every phase, in order: the three store configurations, then catch-up."""
    results: dict[str, TargetResult] = {}

    def sqlite_daemon() -> Daemon:
        return processes.start(directory / "sqlite", storage="sqlite", node=HUB_NODE)

    pg_one_dsn = server.create_database("bench_one")
    pg_two_dsn = server.create_database("bench_two")

    def postgres_daemon(dsn: str, name: str) -> Callable[[], Daemon]:
        return lambda: processes.start(
            directory / name, storage="postgres", data=dsn, node=HUB_NODE
        )

    layouts: dict[str, tuple[list[Callable[[], Daemon]], PostgresServer | None]] = {
        SQLITE: ([sqlite_daemon], None),
        PG_ONE: ([postgres_daemon(pg_one_dsn, "pg-one")], server),
        PG_TWO: (
            [postgres_daemon(pg_two_dsn, "pg-a"), postgres_daemon(pg_two_dsn, "pg-b")],
            server,
        ),
    }
    for name, (starts, target_server) in layouts.items():
        with processes.running(starts) as daemons:
            results[name] = await measure_target(name, daemons, target_server, args)

    catch_ups: dict[str, CatchUp] = {}
    device_start = [
        lambda: processes.start(directory / "device", storage="sqlite", node=DEVICE_NODE)
    ]
    with processes.running(device_start) as (device,):
        fill_s = fill_device(device, args.catch_up)
        progress(f"the device holds {args.catch_up:,} messages after {fill_s:.1f} s")
        hubs = (("SQLite hub", "sqlite-hub", None), ("PostgreSQL hub", "pg-hub", server))
        for hub_name, folder, hub_server in hubs:
            catch_ups[hub_name] = result = catch_up(
                processes,
                device,
                directory / folder,
                hub_server,
                messages=args.catch_up,
                timeout=args.catch_up_timeout,
            )
            progress(f"{hub_name}: caught up in {result.seconds:.1f} s, {result.rate:,.0f} msg/s")
    return results, catch_ups


# --- The table -------------------------------------------------------------------------------


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base > 0 else "-"


def cores_text(cores: Cores) -> str:
    return f"{cores.msgbusd:.2f} / {cores.postgres:.2f} / {cores.client:.2f} / {cores.others:.2f}"


def print_table(
    machine: Machine,
    started: datetime.datetime,
    results: dict[str, TargetResult],
    catch_ups: dict[str, CatchUp],
    args: argparse.Namespace,
) -> None:
    """The run's figures as Markdown, ready for the README."""
    sqlite, one, two = (results[name] for name in TARGETS)
    settings = ", ".join(f"{k}={v}" for k, v in machine.postgres_settings.items())
    print(
        f"\nRun {started:%Y-%m-%d %H:%M} UTC on {machine.cpus} CPUs (shared), Linux "
        f"{machine.kernel}, Python {machine.python}; {machine.postgres} ({settings}) on the "
        f"same machine; SQLite with synchronous=FULL. {PAYLOAD_SIZE}-byte payloads, "
        f"{args.seconds:g} s windows after {args.warm_up_seconds:g} s of warm-up.\n"
    )
    print(
        f"| figure | {SQLITE} | {PG_ONE} | {PG_TWO} | PostgreSQL 1 / SQLite "
        f"| PostgreSQL 2 / SQLite |"
    )
    print("|---|---:|---:|---:|---:|---:|")

    def row(name: str, cells: Sequence[str], ratios: Sequence[str]) -> None:
        print(f"| {name} | " + " | ".join([*cells, *ratios]) + " |")

    loads = (
        (f"Publish, {args.publishers} publishers", [r.publish for r in (sqlite, one, two)]),
        (
            f"PublishBatch of {args.batch_size}, {args.batch_publishers} publishers",
            [r.batch for r in (sqlite, one, two)],
        ),
    )
    for label, figures in loads:
        row(
            f"{label}: msg/s",
            [f"{f.rate:,.0f}" for f in figures],
            [ratio(figures[1].rate, figures[0].rate), ratio(figures[2].rate, figures[0].rate)],
        )
        row(
            f"{label}: call p50 / p99",
            [f"{f.p50_ms:.1f} / {f.p99_ms:.1f} ms" for f in figures],
            [
                f"{ratio(f.p50_ms, figures[0].p50_ms)} / {ratio(f.p99_ms, figures[0].p99_ms)}"
                for f in figures[1:]
            ],
        )
        row(
            f"{label}: cores msgbusd / postgres / bench / others",
            [cores_text(f.cores) for f in figures],
            ["", ""],
        )
    lives = [r.live for r in (sqlite, one, two)]
    row(
        f"live latency at {args.live_rate}/s for {args.live_seconds:g} s, "
        f"{sqlite.live_path} / {one.live_path} / {two.live_path}: p50 / p99 / max",
        [f"{x.p50_ms:.2f} / {x.p99_ms:.2f} / {x.max_ms:.1f} ms" for x in lives],
        [
            f"{ratio(x.p50_ms, lives[0].p50_ms)} / {ratio(x.p99_ms, lives[0].p99_ms)}"
            for x in lives[1:]
        ],
    )
    base, hub = catch_ups["SQLite hub"], catch_ups["PostgreSQL hub"]
    row(
        f"catch-up of {args.catch_up:,} messages from a device (SQLite) into a fresh hub: msg/s",
        [
            f"{base.rate:,.0f} ({base.seconds:.1f} s)",
            f"{hub.rate:,.0f} ({hub.seconds:.1f} s)",
            "-",
        ],
        [ratio(hub.rate, base.rate), "-"],
    )
    row(
        "catch-up: cores msgbusd (hub + device) / postgres / bench / others",
        [cores_text(base.cores), cores_text(hub.cores), "-"],
        ["", ""],
    )
    print(
        "\nRatios: throughput over SQLite's (above 1 is faster), latency over SQLite's (above 1 "
        "is slower). Catch-up is timed from the hub's launch (startup "
        f"{base.startup_s:.1f} s SQLite, {hub.startup_s:.1f} s PostgreSQL), with the sync "
        f"settings {' '.join(SYNC_ARGS) or '(the defaults)'}. Live latency runs from just "
        "before the Publish call to the subscriber's receipt; across processes, the subscriber "
        "is on process B and the publisher on process A.",
        flush=True,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--publishers", type=int, default=32, help="concurrent Publish callers")
    parser.add_argument(
        "--batch-publishers", type=int, default=8, help="concurrent PublishBatch callers"
    )
    parser.add_argument("--batch-size", type=int, default=100, help="entries per PublishBatch")
    parser.add_argument("--seconds", type=float, default=10.0, help="each timed publish window")
    parser.add_argument(
        "--warm-up-seconds", type=float, default=2.0, help="load before each window, not counted"
    )
    parser.add_argument("--live-rate", type=int, default=200, help="live publishes a second")
    parser.add_argument("--live-seconds", type=float, default=10.0, help="live latency duration")
    parser.add_argument(
        "--catch-up", type=int, default=100_000, help="messages the device holds for catch-up"
    )
    parser.add_argument(
        "--catch-up-timeout", type=float, default=1_800.0, help="seconds a catch-up may take"
    )
    parser.add_argument("--dir", default=None, help="where the SQLite files go (default: tmp)")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warm_up_seconds, args.live_seconds = 3.0, 1.0, 3.0
        args.catch_up = 10_000
    for name, low in (
        ("publishers", 1),
        ("batch_publishers", 1),
        ("batch_size", 2),
        ("live_rate", 1),
        ("catch_up", 1),
    ):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}")
    if args.batch_size > FILL_BATCH:
        parser.error(f"--batch-size must be at most {FILL_BATCH:,} (the daemon's largest batch)")
    for name in ("seconds", "live_seconds", "catch_up_timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    if args.warm_up_seconds < 0:
        parser.error("--warm-up-seconds must not be negative")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends the run like Ctrl-C does: the daemons and the server are stopped on the way
    # out, instead of the default exit that would leave the daemons running.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    bin_dir = find_binaries()
    if bin_dir is None:
        print(f"hub_bench: {postgres_unavailable()}", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="msgbus-hub-bench-", dir=args.dir))
    started = datetime.datetime.now(datetime.UTC)
    processes = Processes()
    print(f"# msgbus hub benchmark, {started:%Y-%m-%d %H:%M} UTC", flush=True)
    try:
        with PostgresServer(bin_dir, settings=POSTGRES_SETTINGS) as server:
            version, settings = postgres_facts(server)
            machine = Machine(
                cpus=os.cpu_count() or 0,
                kernel=platform.release(),
                python=platform.python_version(),
                postgres=version.split(" on ")[0],
                postgres_settings=settings,
            )
            progress(f"{version}, port {server.port}; files in {directory}")
            results, catch_ups = asyncio.run(run(directory, server, processes, args))
    except (psycopg.Error, OSError) as error:
        print(f"hub_bench failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hub_bench interrupted: no figures", file=sys.stderr)
        return 130
    finally:
        # Ctrl-C or a failure can leave daemons of an unfinished phase running.
        processes.kill_all()
        shutil.rmtree(directory, ignore_errors=True)
    print_table(machine, started, results, catch_ups, args)
    if args.output is not None:
        report = {
            "started": started.isoformat(),
            "argv": sys.argv,
            "machine": asdict(machine),
            "targets": {name: asdict(result) for name, result in results.items()},
            "catch_up": {name: asdict(result) for name, result in catch_ups.items()},
        }
        args.output.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nfigures written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
