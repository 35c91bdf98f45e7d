"""Fleet hub benchmark (issue 17): what devices pushing to a hub cost it.

Not a test: run it by hand and copy the table into the README ("Fleet", "Hub figures").

    uv run python bench/fleet_hub_bench.py            # 1,000 idle devices, 100 pushing
    uv run python bench/fleet_hub_bench.py --quick    # small sizes, a smoke run

The load generator speaks the Push protocol through raw gRPC (grpc.aio), with no daemon on the
device side: each simulated device has its own channel, hence its own TCP connection to the hub
(`grpc.use_local_subchannel_pool`, or gRPC would share one connection between channels of the
same target), and one Push stream on it. Devices are spread over `--processes` worker processes.
They connect on loopback in plaintext, so the hub takes each device's hello as its identity
(the development path; mTLS adds a TLS session per connection, not measured here).

Two phases, on an SQLite hub and on a PostgreSQL hub (a server this run starts, with
`fsync=on` and `synchronous_commit=on`, `msgbus_testkit.postgres.PostgresServer`):

1. idle: `--idle` devices each say hello, offer `--logs` logs and push their `--messages` messages
   (acknowledged), then stay connected doing nothing. The hub's RSS before any device and with
   every device idle, and its CPU (and PostgreSQL's) over `--idle-seconds` of idleness.
2. ingest: `--pushers` devices push at once, each its own log, batches of `--batch` messages of
   256 bytes, one batch in flight per device, for `--seconds`; acknowledged messages a second,
   and the CPU of the hub and of PostgreSQL over the window.

The machine is shared, so single figures move between runs; the CPU of everything else on it
is reported next to them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import multiprocessing
import multiprocessing.connection
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench_common import PAYLOAD_SIZE, machine_busy_seconds, process_cpu_seconds
from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon

# The PostgreSQL test server lives in the shared test package (tests/msgbus_testkit), which
# pytest and mypy find through their path settings; a script run by hand has to add it.
_TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(_TESTS) not in sys.path:
    sys.path.append(str(_TESTS))

from msgbus_testkit.postgres import (  # noqa: E402
    PostgresServer,
    cluster_processes,
    postgres_unavailable,
)

HUB_NODE = "fleet/default/hub"
CALL_TIMEOUT_S = 120.0
POSTGRES_SETTINGS = {"fsync": "on", "synchronous_commit": "on", "shared_buffers": "256MB"}
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]
"""One TCP connection per device: without it, channels of one target share a connection."""


def node_pb(device: int) -> pb.NodeId:
    return pb.NodeId(tenant_id="fleet", bl_name="bench", device_id=f"dev-{device:05d}")


def batch_request(
    batch_id: int, topic: str, origin: pb.NodeId, first: int, count: int, payload: bytes
) -> pb.PushRequest:
    """Messages `first`..`first + count - 1` of one log, as a device sends them."""
    now = int(time.time() * 1000)
    messages = [
        pb.MessageEnvelope(
            id=uuid.uuid4().hex,
            topic=topic,
            origin=origin,
            head_id=head,
            payload=payload,
            created_at_ms=now,
        )
        for head in range(first, first + count)
    ]
    return pb.PushRequest(
        batch=pb.PushBatch(batch_id=batch_id, topic=topic, origin=origin, messages=messages)
    )


class Device:
    """One simulated device: its channel and its Push stream."""

    def __init__(self, endpoint: str, number: int) -> None:
        self.node = node_pb(number)
        self.channel = grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        # A stream written to as it goes (no request iterator); it lives as long as the run.
        push = rpc.MsgbusServiceStub(self.channel).Push
        self.call: grpc.aio.StreamStreamCall[pb.PushRequest, pb.PushResponse] = push()  # type: ignore[call-arg]
        self._batches = 0

    async def exchange(self, request: pb.PushRequest) -> pb.PushResponse:
        await self.call.write(request)
        response = await self.call.read()
        if not isinstance(response, pb.PushResponse):
            raise RuntimeError(f"{self.node.device_id}: the Push stream ended")
        return response

    async def hello(self) -> None:
        welcome = await self.exchange(pb.PushRequest(hello=pb.PushHello(node=self.node)))
        if not welcome.HasField("welcome"):
            raise RuntimeError(f"{self.node.device_id}: no welcome: {welcome}")

    async def push(self, topic: str, first: int, count: int, payload: bytes) -> None:
        """One batch, acknowledged; raises when the hub refused it."""
        self._batches += 1
        ack = (
            await self.exchange(
                batch_request(self._batches, topic, self.node, first, count, payload)
            )
        ).ack
        if ack.error_code:
            raise RuntimeError(f"{self.node.device_id}: batch refused: {ack.error_message}")

    async def settle_logs(self, logs: int, messages: int, payload: bytes) -> None:
        """Offer `logs` logs of `messages` messages each and push what the hub lacks."""
        topics = [f"idle.log{index}" for index in range(logs)]
        offer = pb.PushOffer(
            heads=[pb.TopicHead(topic=t, origin=self.node, head_id=messages) for t in topics]
        )
        reply = (await self.exchange(pb.PushRequest(offer=offer))).offer_reply
        for topic, head in zip(topics, reply.heads, strict=True):
            if head.head_id < messages:
                await self.push(topic, head.head_id + 1, messages - head.head_id, payload)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close(None)


async def idle_worker(
    endpoint: str,
    numbers: range,
    logs: int,
    messages: int,
    pipe: multiprocessing.connection.Connection,
) -> None:
    payload = b"i" * PAYLOAD_SIZE
    devices = [Device(endpoint, number) for number in numbers]
    # Connect in waves: a thousand TLS-less handshakes at once are still a burst.
    for start in range(0, len(devices), 50):
        wave = devices[start : start + 50]
        await asyncio.gather(*(d.hello() for d in wave))
        await asyncio.gather(*(d.settle_logs(logs, messages, payload) for d in wave))
    pipe.send("idle")
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until told to stop
    await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)


async def ingest_worker(
    endpoint: str,
    numbers: range,
    batch: int,
    seconds: float,
    pipe: multiprocessing.connection.Connection,
) -> None:
    payload = b"p" * PAYLOAD_SIZE
    devices = [Device(endpoint, number) for number in numbers]
    await asyncio.gather(*(d.hello() for d in devices))
    pipe.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # the start signal
    deadline = time.monotonic() + seconds

    async def pusher(device: Device) -> int:
        head = 1
        while time.monotonic() < deadline:
            await device.push("ingest.log", head, batch, payload)
            head += batch
        return head - 1

    counts = await asyncio.gather(*(pusher(d) for d in devices))
    pipe.send(sum(counts))
    await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)


def _run_worker(kind: str, args: tuple[object, ...]) -> None:
    worker = idle_worker if kind == "idle" else ingest_worker
    asyncio.run(worker(*args))  # type: ignore[arg-type]


@contextlib.contextmanager
def workers(
    kind: str, per_worker: Sequence[tuple[object, ...]]
) -> Iterator[list[multiprocessing.connection.Connection]]:
    """Start one worker process per argument tuple; yield the pipes to them."""
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for args in per_worker:
        mine, theirs = context.Pipe()
        process = context.Process(target=_run_worker, args=(kind, (*args, theirs)), daemon=True)
        process.start()
        pipes.append(mine)
        processes.append(process)
    try:
        yield pipes
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.kill()


def split(count: int, parts: int, offset: int = 0) -> list[range]:
    size = -(-count // parts)
    return [
        range(offset + i, min(offset + i + size, offset + count)) for i in range(0, count, size)
    ]


def receive_all(pipes: list[multiprocessing.connection.Connection], timeout: float) -> list[object]:
    deadline = time.monotonic() + timeout
    answers = []
    for pipe in pipes:
        if not pipe.poll(max(deadline - time.monotonic(), 0.1)):
            raise RuntimeError("a load worker did not answer in time")
        answers.append(pipe.recv())
    return answers


@dataclass(frozen=True)
class Cpu:
    hub: float
    postgres: float
    others: float


class CpuWindow:
    """Average cores the hub, PostgreSQL and everyone else used over a window."""

    def __init__(self, hub: Daemon, server: PostgresServer | None) -> None:
        self._hub = hub.pid
        self._pg = cluster_processes(server.data_dir) if server is not None else []

    def _read(self) -> tuple[float, float, float, float]:
        hub = process_cpu_seconds(self._hub)
        pg = sum(process_cpu_seconds(pid) for pid in self._pg)
        return hub, pg, machine_busy_seconds(), time.monotonic()

    def __enter__(self) -> CpuWindow:
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._read()
        wall = end[3] - self._start[3]
        hub, pg, busy = ((end[i] - self._start[i]) / wall for i in range(3))
        self.result = Cpu(hub=hub, postgres=pg, others=max(busy - hub - pg, 0.0))


@dataclass(frozen=True)
class HubFigures:
    rss_before_mib: float
    rss_idle_mib: float
    idle_cpu: Cpu
    ingest_rate: float
    ingest_cpu: Cpu


def measure(hub: Daemon, server: PostgresServer | None, args: argparse.Namespace) -> HubFigures:
    endpoint = hub.endpoint
    time.sleep(2)
    before = hub.rss_kib() / 1024
    idle_args = [(endpoint, r, args.logs, args.messages) for r in split(args.idle, args.processes)]
    with workers("idle", idle_args) as pipes:
        receive_all(pipes, timeout=600)
        time.sleep(3)  # let the last acks' writes and the stream state flushes settle
        with CpuWindow(hub, server) as idle_window:
            time.sleep(args.idle_seconds)
        idle_rss = hub.rss_kib() / 1024
    print(
        f"  idle: {args.idle} devices, RSS {before:.0f} -> {idle_rss:.0f} MiB, "
        f"hub {idle_window.result.hub:.3f} cores",
        flush=True,
    )
    pushers = split(args.pushers, args.processes, offset=args.idle)
    ingest_args = [(endpoint, r, args.batch, args.seconds) for r in pushers]
    with workers("ingest", ingest_args) as pipes:
        receive_all(pipes, timeout=300)
        with CpuWindow(hub, server) as ingest_window:
            began = time.monotonic()
            for pipe in pipes:
                pipe.send("go")
            counts = receive_all(pipes, timeout=args.seconds + CALL_TIMEOUT_S)
            # Until the last device's last batch was acknowledged, a little past `seconds`.
            elapsed = time.monotonic() - began
    total = sum(int(c) for c in counts)  # type: ignore[call-overload]
    rate = total / elapsed
    print(
        f"  ingest: {args.pushers} devices, {rate:,.0f} msg/s, "
        f"hub {ingest_window.result.hub:.2f} cores",
        flush=True,
    )
    return HubFigures(before, idle_rss, idle_window.result, rate, ingest_window.result)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--logs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--pushers", type=int, default=100)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--hubs", default="sqlite,postgres")
    args = parser.parse_args()
    if args.quick:
        args.idle, args.pushers, args.idle_seconds, args.seconds = 40, 8, 3.0, 3.0
    started = datetime.datetime.now(datetime.UTC)
    results: dict[str, HubFigures] = {}
    with tempfile.TemporaryDirectory(prefix="fleet-hub-bench-") as tmp:
        directory = Path(tmp)
        if "sqlite" in args.hubs:
            print("SQLite hub", flush=True)
            with Daemon.start(directory / "sqlite", node=HUB_NODE) as hub:
                results["SQLite"] = measure(hub, None, args)
        if "postgres" in args.hubs:
            problem = postgres_unavailable()
            if problem is not None:
                print(f"PostgreSQL hub skipped: {problem}", flush=True)
            else:
                with PostgresServer(settings=POSTGRES_SETTINGS) as server:
                    dsn = server.create_database("fleet_hub")
                    print("PostgreSQL hub", flush=True)
                    with Daemon.start(
                        directory / "pg", storage="postgres", data=dsn, node=HUB_NODE
                    ) as hub:
                        results["PostgreSQL"] = measure(hub, server, args)
    print(
        f"\nRun {started:%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs (shared), Linux "
        f"{platform.release()}, Python {platform.python_version()}; {args.processes} load "
        f"processes; {PAYLOAD_SIZE}-byte payloads.\n"
    )
    print(
        f"| hub | RSS, no device | RSS, {args.idle:,} idle devices | hub CPU idle (cores) "
        f"| ingest, {args.pushers} devices pushing | hub / PostgreSQL CPU while ingesting |"
    )
    print("|---|---|---|---|---|---|")
    for name, figures in results.items():
        print(
            f"| {name} | {figures.rss_before_mib:.0f} MiB | {figures.rss_idle_mib:.0f} MiB | "
            f"{figures.idle_cpu.hub:.3f} | {figures.ingest_rate:,.0f} msg/s | "
            f"{figures.ingest_cpu.hub:.2f} / {figures.ingest_cpu.postgres:.2f} "
            f"(rest, load generator included, {figures.ingest_cpu.others:.2f}) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
