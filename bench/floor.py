"""The floor on this machine: what one durable write and one gRPC round trip cost, without msgbus.

Not a test: run it by hand and copy the table into bench/README.md ("The floor on this machine").

    uv run python bench/floor.py            # about a minute and a half
    uv run python bench/floor.py --quick    # a smoke run

Each case runs back to back and paced (one operation every 1, 5, 50 and 200 ms), because a VM's
fsync costs more after idleness and a paced publisher, like (d)'s, sees that cost:

- `fdatasync`: append 256 bytes to a file and fdatasync it (what a write-ahead log pays);
- `sqlite commit`: insert one 256-byte row and commit, WAL with `synchronous=FULL` (what msgbusd's
  SQLite store pays per transaction);
- `unary tcp` / `unary unix`: a grpc.aio unary call with a 256-byte request and answer, to a
  server in another process, over loopback TCP and over a Unix socket;
- `stream tcp` / `stream unix`: a ping-pong of the same body on one open bidirectional stream.

The floor of a sequential durable publish (scenario a) is one stream round trip plus one
fdatasync; live delivery (scenario d) adds at least a second stream hop to the subscriber.
The JSON goes to bench/results/floor-*.json; the markdown table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from bench_common import PAYLOAD_SIZE, CpuWatch, free_port, percentile

PACES_S = [0.0, 0.001, 0.005, 0.05, 0.2]
"""Back to back, then one operation every 1, 5, 50 and 200 ms."""
IDLE_BUDGET_S = 4.0
"""About how long each paced run lasts (so the 200 ms pace takes 20 samples)."""
SERVICE = "floor.Echo"
BODY = b"x" * PAYLOAD_SIZE


def _identity(data: bytes) -> bytes:
    return data


# -- the echo server, run in a child process (`floor.py --serve ADDRESS...`) -----------------------


async def _unary(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
    del context
    return request


async def _stream(
    requests: AsyncIterator[bytes], context: aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    del context
    async for request in requests:
        yield request


async def serve(addresses: list[str]) -> None:
    server = aio.server()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            _unary, request_deserializer=_identity, response_serializer=_identity
        ),
        "Stream": grpc.stream_stream_rpc_method_handler(
            _stream, request_deserializer=_identity, response_serializer=_identity
        ),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    for address in addresses:
        server.add_insecure_port(address)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


@contextlib.contextmanager
def echo_server(directory: Path) -> Iterator[tuple[dict[str, str], int]]:
    """An echo server in another process; its targets by transport, and its pid."""
    targets = {
        "tcp": f"127.0.0.1:{free_port()}",
        "unix": f"unix:{directory / 'floor.sock'}",
    }
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", *targets.values()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit("the echo server did not start")
        yield targets, process.pid
    finally:
        process.terminate()
        process.wait(10)


# -- the cases ---------------------------------------------------------------------------------


async def paced(operation: Callable[[], Awaitable[None]], count: int, pace_s: float) -> list[float]:
    """Latencies of `count` operations, started `pace_s` apart (0: back to back)."""
    samples: list[float] = []
    began = time.perf_counter()
    for index in range(count):
        delay = began + index * pace_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        start = time.perf_counter()
        await operation()
        samples.append(time.perf_counter() - start)
    return samples


def fdatasync_case(directory: Path) -> tuple[Callable[[], Awaitable[None]], Callable[[], None]]:
    descriptor = os.open(directory / "append.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    async def append() -> None:
        os.write(descriptor, BODY)
        os.fdatasync(descriptor)

    return append, lambda: os.close(descriptor)


def sqlite_case(directory: Path) -> tuple[Callable[[], Awaitable[None]], Callable[[], None]]:
    connection = sqlite3.connect(directory / "floor.sqlite", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, payload BLOB)")

    async def commit() -> None:
        connection.execute("BEGIN")
        connection.execute("INSERT INTO m (payload) VALUES (?)", (BODY,))
        connection.execute("COMMIT")

    return commit, connection.close


async def unary_case(target: str) -> tuple[Callable[[], Awaitable[None]], Callable[[], Any]]:
    channel = aio.insecure_channel(target)
    call = channel.unary_unary(
        f"/{SERVICE}/Unary", request_serializer=_identity, response_deserializer=_identity
    )
    await call(BODY)  # connect before measuring

    async def round_trip() -> None:
        await call(BODY)

    return round_trip, lambda: channel.close(None)


async def stream_case(target: str) -> tuple[Callable[[], Awaitable[None]], Callable[[], Any]]:
    channel = aio.insecure_channel(target)
    stream = channel.stream_stream(
        f"/{SERVICE}/Stream", request_serializer=_identity, response_deserializer=_identity
    )()  # type: ignore[call-arg]  # no iterator: the stream is written with write()

    async def ping_pong() -> None:
        await stream.write(BODY)
        await stream.read()

    await ping_pong()  # open the stream before measuring

    async def close() -> None:
        await stream.done_writing()
        await channel.close(None)

    return ping_pong, close


async def measure(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="msgbus-floor-", dir=args.dir) as name:
        directory = Path(name)
        with echo_server(directory) as (targets, server_pid):
            cases: list[tuple[str, Callable[[], Awaitable[tuple[Any, Any]]]]] = [
                ("fdatasync", lambda: _ready(fdatasync_case(directory))),
                ("sqlite commit", lambda: _ready(sqlite_case(directory))),
                ("unary tcp", lambda: unary_case(targets["tcp"])),
                ("unary unix", lambda: unary_case(targets["unix"])),
                ("stream tcp", lambda: stream_case(targets["tcp"])),
                ("stream unix", lambda: stream_case(targets["unix"])),
            ]
            for case, make in cases:
                operation, close = await make()
                results[case] = {}
                for pace in PACES_S:
                    count = args.back_to_back if pace == 0 else max(int(args.idle_s / pace), 10)
                    watch = CpuWatch()
                    watch.start([server_pid])
                    samples = await paced(operation, count, pace)
                    results[case][pace_name(pace)] = {
                        "p50_ms": percentile(samples, 0.5) * 1e3,
                        "p99_ms": percentile(samples, 0.99) * 1e3,
                        "count": len(samples),
                        "other_cores": watch.stop(),
                        # CPU per operation on each side: what grpc's Python layer costs per
                        # message before msgbus does anything (the echo server does nothing).
                        "client_us": watch.client_s / len(samples) * 1e6,
                        "server_us": watch.daemon_s / len(samples) * 1e6,
                    }
                    print(
                        f"{case} {pace_name(pace)}: {results[case][pace_name(pace)]}",
                        file=sys.stderr,
                        flush=True,
                    )
                outcome = close()
                if asyncio.iscoroutine(outcome):
                    await outcome
    return results


async def _ready(pair: tuple[Any, Any]) -> tuple[Any, Any]:
    return pair


def pace_name(pace_s: float) -> str:
    return "back to back" if pace_s == 0 else f"every {pace_s * 1e3:g} ms"


def markdown(results: dict[str, dict[str, dict[str, float]]], run: dict[str, str]) -> str:
    paces = [pace_name(p) for p in PACES_S]
    lines = [
        f"Run {run['date']} on {run['machine']}; p50 / p99 in ms; the most cores other "
        "processes used during any one case in brackets (the machine is shared).",
        "",
        "| case | " + " | ".join(paces) + " |",
        "|---" * (1 + len(paces)) + "|",
    ]
    for case, by_pace in results.items():
        cells = [f"{by_pace[p]['p50_ms']:.3f} / {by_pace[p]['p99_ms']:.3f}" for p in paces]
        busiest = max(by_pace[p].get("other_cores", 0.0) for p in paces)
        lines.append(f"| {case} [{busiest:.2f}] | " + " | ".join(cells) + " |")
    lines += [
        "",
        "CPU per operation back to back, client / echo server, in µs: "
        + ", ".join(
            f"{case} {by_pace[paces[0]].get('client_us', 0.0):.0f} / "
            f"{by_pace[paces[0]].get('server_us', 0.0):.0f}"
            for case, by_pace in results.items()
            if case.startswith(("unary", "stream"))
        ),
    ]
    lines += ["", "Floor of one durable round trip (stream p50 + fdatasync p50):", ""]
    for transport in ("tcp", "unix"):
        cells = [
            f"{results[f'stream {transport}'][p]['p50_ms'] + results['fdatasync'][p]['p50_ms']:.3f}"
            for p in paces
        ]
        lines.append(
            f"- {transport}: " + ", ".join(f"{p} {c} ms" for p, c in zip(paces, cells, strict=True))
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small counts for a smoke run")
    parser.add_argument("--back-to-back", type=int, default=3000, help="samples back to back")
    parser.add_argument("--idle-s", type=float, default=IDLE_BUDGET_S, help="seconds per pace")
    parser.add_argument("--dir", default=None, help="where the files go (default: the temp dir)")
    parser.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    if args.quick:
        args.back_to_back, args.idle_s = 200, 0.5
    results = asyncio.run(measure(args))
    run = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, grpcio {grpc.__version__}",
    }
    table = markdown(results, run)
    print(table)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"floor-{stamp}.json").write_text(json.dumps({"run": run, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
