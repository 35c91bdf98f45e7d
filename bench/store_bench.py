"""Storage micro-benchmark: durable append and range-read throughput of every msgbus store.

Not a test: run it by hand and copy the table into the store READMEs.

    uv run python bench/store_bench.py                       # the full run (1,000,000 messages)
    uv run python bench/store_bench.py --messages 100000     # a quicker run while iterating
    uv run python bench/store_bench.py --stores sqlite --batches 100

Appends: for each batch size B, a fresh database receives `--append-messages` messages as
`write` calls of B AppendOps each; every call is one durable (fsynced) transaction. Reads: a
log of `--messages` messages is built (in batches of 1000), then `--read-pages` pages of
`--page` messages are fetched from random starting heads.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import duckdb

from msgbus_core import AppendOp, MemoryStore, MsgbusStore, NodeId
from msgbus_store_duckdb import DuckdbStore
from msgbus_store_sqlite import SqliteStore

ORIGIN = NodeId("bench", "default", "node-a")
TOPIC = "bench.events"

FACTORIES: dict[str, Callable[[str], MsgbusStore]] = {
    "memory": MemoryStore.open,
    "sqlite": SqliteStore.open,
    "duckdb": DuckdbStore.open,
}


def _ops(count: int, payload_bytes: int, headers: dict[str, str]) -> list[AppendOp]:
    # A distinct random payload per message: identical payloads would let DuckDB's compression
    # shrink the table to a fraction of its real size and flatter its reads.
    now = int(time.time() * 1000)
    return [
        AppendOp(TOPIC, ORIGIN, os.urandom(payload_bytes), headers, str(uuid.uuid4()), now)
        for _ in range(count)
    ]


def _fresh(name: str, directory: Path, label: str) -> MsgbusStore:
    path = directory / f"{name}-{label}.db"
    return FACTORIES[name](str(path))


def bench_append(
    name: str, directory: Path, batch: int, total: int, payload_bytes: int, headers: dict[str, str]
) -> float:
    """Appended messages per second at `batch` AppendOps per durable `write`."""
    store = _fresh(name, directory, f"append-{batch}")
    try:
        calls = max(1, total // batch)
        batches = [_ops(batch, payload_bytes, headers) for _ in range(calls)]
        store.write(batches.pop())  # creates the log: not part of the measurement
        gc.collect()
        started = time.perf_counter()
        for ops in batches:
            store.write(ops)
        elapsed = time.perf_counter() - started
        assert store.get_head(TOPIC, ORIGIN) == calls * batch
        return (calls - 1) * batch / elapsed
    finally:
        store.close()


def bench_read(
    name: str,
    directory: Path,
    messages: int,
    page: int,
    pages: int,
    payload_bytes: int,
    headers: dict[str, str],
) -> tuple[float, float]:
    """(messages read per second, seconds spent building the log)."""
    store = _fresh(name, directory, "read")
    try:
        started = time.perf_counter()
        written = 0
        while written < messages:
            count = min(1000, messages - written)
            store.write(_ops(count, payload_bytes, headers))
            written += count
        build = time.perf_counter() - started
        rng = random.Random(42)
        starts = [rng.randint(1, max(1, messages - page + 1)) for _ in range(pages)]
        store.fetch(TOPIC, ORIGIN, 1, page)  # opens the reader: not part of the measurement
        gc.collect()
        started = time.perf_counter()
        read = 0
        for start in starts:
            read += len(store.fetch(TOPIC, ORIGIN, start, page))
        elapsed = time.perf_counter() - started
        assert read == pages * min(page, messages)
        return read / elapsed, build
    finally:
        store.close()


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="log size for reads")
    parser.add_argument(
        "--append-messages",
        type=int,
        default=None,
        help="messages appended per batch size (default: 200 x batch, at least 2,000)",
    )
    parser.add_argument("--batches", default="1,10,100,1000", help="AppendOps per write call")
    parser.add_argument("--stores", default="memory,sqlite,duckdb", help="stores to measure")
    parser.add_argument("--page", type=int, default=1000, help="messages per fetch")
    parser.add_argument("--read-pages", type=int, default=300, help="fetches to time")
    parser.add_argument("--payload-bytes", type=int, default=256)
    parser.add_argument("--headers", type=int, default=0, help="headers per message")
    parser.add_argument("--dir", default=None, help="where the database files go (default: tmp)")
    args = parser.parse_args(argv)

    batches = [int(b) for b in args.batches.split(",") if b]
    stores = [s for s in args.stores.split(",") if s]
    for name in stores:
        if name not in FACTORIES:
            parser.error(f"unknown store {name!r}; choose from {', '.join(FACTORIES)}")
    headers = {f"h{i}": f"value-{i}" for i in range(args.headers)}
    directory = Path(tempfile.mkdtemp(prefix="msgbus-store-bench-", dir=args.dir))

    print(
        f"# msgbus store benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, DuckDB {duckdb.__version__}; "
        f"{args.payload_bytes}-byte payloads, {args.headers} headers; reads: "
        f"{args.read_pages} pages of {args.page} from a log of {args.messages:,} messages; "
        f"files in {directory}\n",
        flush=True,
    )
    header = ["store", *[f"append, batch {b} (msg/s)" for b in batches], "range read (msg/s)"]
    rows: list[list[str]] = []
    try:
        for name in stores:
            row = [name]
            for batch in batches:
                total = args.append_messages or max(2_000, 200 * batch)
                rate = bench_append(name, directory, batch, total, args.payload_bytes, headers)
                print(f"  {name}: append batch {batch}: {_rate(rate)} msg/s", file=sys.stderr)
                row.append(_rate(rate))
            read_rate, build = bench_read(
                name,
                directory,
                args.messages,
                args.page,
                args.read_pages,
                args.payload_bytes,
                headers,
            )
            print(
                f"  {name}: read {_rate(read_rate)} msg/s "
                f"(log of {args.messages:,} built in {build:.1f} s)",
                file=sys.stderr,
            )
            row.append(_rate(read_rate))
            rows.append(row)
            for leftover in directory.iterdir():
                if leftover.is_file():
                    leftover.unlink()
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
