"""Tombstone benchmark: the publish rate on a log with no tombstones and with 100,000 of them.

Not a test: run it by hand and copy the table into the README.

    uv run python bench/tombstone_bench.py                        # the full run
    uv run python bench/tombstone_bench.py --tombstones 10000     # a quicker run
    uv run python bench/tombstone_bench.py --stores sqlite --no-daemon

For every store, three logs of 2 x N messages (256-byte payloads) are built in fresh databases:

- `none`: no delete;
- `disjoint`: every other message deleted, one DeleteRange each: N tombstones that no merge can
  join, so the writer holds N separate ranges;
- `adjacent`: the first N messages deleted one at a time: N tombstones that merge into one range.

The store is then closed and reopened (so the tombstones are loaded the way a restart loads
them; the memory store keeps its instance), one message is appended (what that and the reopen
take has its own column) and appends are timed as `--writes` durable `write`
calls of B AppendOps each, for every B of `--batches`. With `--daemon` (the default) msgbusd is
then started on the same SQLite or DuckDB file and the same is timed through the SDK: sequential
`publish` calls and `publish_batch` calls of 100 messages. Every rate is also given as a ratio
to the `none` log of the same store.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb

from msgbus_core import AppendOp, DeleteRangeOp, MemoryStore, MsgbusStore, NodeId
from msgbus_store_duckdb import DuckdbStore
from msgbus_store_sqlite import SqliteStore

ORIGIN = NodeId("bench", "default", "node-a")
TOPIC = "bench.events"
PAYLOAD = b"x" * 256
SHAPES = ("none", "disjoint", "adjacent")
BUILD_BATCH = 1000

FACTORIES: dict[str, Callable[[str], MsgbusStore]] = {
    "memory": MemoryStore.open,
    "sqlite": SqliteStore.open,
    "duckdb": DuckdbStore.open,
}


class Ids:
    """Unique message and marker ids for one database."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, prefix: str) -> str:
        self._next += 1
        return f"{prefix}{self._next}"


def _appends(ids: Ids, count: int) -> list[AppendOp]:
    now = int(time.time() * 1000)
    return [AppendOp(TOPIC, ORIGIN, PAYLOAD, {}, ids("m"), now) for _ in range(count)]


def _deleted_heads(shape: str, tombstones: int) -> Iterator[int]:
    """The heads deleted one DeleteRange each, in the order they are deleted."""
    if shape == "disjoint":
        return iter(range(1, 2 * tombstones, 2))
    if shape == "adjacent":
        return iter(range(1, tombstones + 1))
    return iter(())


def build(store: MsgbusStore, ids: Ids, shape: str, tombstones: int) -> None:
    """Fill `store` with a log of 2 x `tombstones` messages and `shape`'s deletes."""
    for start in range(0, 2 * tombstones, BUILD_BATCH):
        store.write(_appends(ids, min(BUILD_BATCH, 2 * tombstones - start)))
    heads = list(_deleted_heads(shape, tombstones))
    now = int(time.time() * 1000)
    for start in range(0, len(heads), BUILD_BATCH):
        ops = [
            DeleteRangeOp(TOPIC, ORIGIN, head, head, ids("d"), now)
            for head in heads[start : start + BUILD_BATCH]
        ]
        for outcome in store.write(ops):
            assert not isinstance(outcome, Exception), outcome
    assert len(store.list_tombstones()) == len(heads)


def time_appends(store: MsgbusStore, ids: Ids, batch: int, writes: int) -> float:
    """Appended messages per second at `batch` AppendOps per durable `write`."""
    calls = [_appends(ids, batch) for _ in range(writes)]
    before = store.get_head(TOPIC, ORIGIN)
    gc.collect()
    started = time.perf_counter()
    for ops in calls:
        store.write(ops)
    elapsed = time.perf_counter() - started
    assert store.get_head(TOPIC, ORIGIN) == before + batch * writes
    return batch * writes / elapsed


def time_daemon(data_dir: Path, storage: str, publishes: int, batches: int) -> tuple[float, float]:
    """(sequential publishes per second, messages per second in batches of 100) via msgbusd."""
    # Imported here: the store-only run needs neither the server nor the SDK.
    from msgbus_sdk import MsgbusClient
    from msgbus_server.testing import Daemon

    daemon = Daemon.start(data_dir, storage=storage, node=ORIGIN.key)
    try:
        with MsgbusClient.connect(daemon.endpoint) as client:
            client.publish(TOPIC, PAYLOAD)  # opens the channel: not part of the measurement
            started = time.perf_counter()
            for _ in range(publishes):
                client.publish(TOPIC, PAYLOAD)
            sequential = publishes / (time.perf_counter() - started)
            entries = [(TOPIC, PAYLOAD)] * 100
            started = time.perf_counter()
            for _ in range(batches):
                client.publish_batch(entries)
            batched = 100 * batches / (time.perf_counter() - started)
    finally:
        daemon.stop()
    return sequential, batched


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tombstones", type=int, default=100_000, help="N, deletes per log")
    parser.add_argument("--stores", default="memory,sqlite,duckdb", help="stores to measure")
    parser.add_argument("--batches", default="1,100", help="AppendOps per write call")
    parser.add_argument("--writes", type=int, default=1000, help="write calls timed per batch")
    parser.add_argument("--daemon", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--publishes", type=int, default=1000, help="sequential daemon publishes")
    parser.add_argument("--publish-batches", type=int, default=200, help="daemon batches of 100")
    parser.add_argument("--dir", default=None, help="where the database files go (default: tmp)")
    args = parser.parse_args(argv)

    batches = [int(b) for b in args.batches.split(",") if b]
    stores = [s for s in args.stores.split(",") if s]
    for name in stores:
        if name not in FACTORIES:
            parser.error(f"unknown store {name!r}; choose from {', '.join(FACTORIES)}")
    directory = Path(tempfile.mkdtemp(prefix="msgbus-tombstone-bench-", dir=args.dir))
    print(
        f"# msgbus tombstone benchmark, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
        f"\n\n{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, DuckDB {duckdb.__version__}; logs of "
        f"{2 * args.tombstones:,} messages, N = {args.tombstones:,} tombstones; "
        f"{args.writes} timed writes per batch size; files in {directory}\n",
        flush=True,
    )
    columns = [f"append, batch {b} (msg/s)" for b in batches]
    if args.daemon:
        columns += ["msgbusd publish (msg/s)", "msgbusd publish_batch 100 (msg/s)"]
    header = ["store", "log", "tombstones", "build (s)", "reopen + first append (s)", *columns]
    rows: list[list[str]] = []
    try:
        for name in stores:
            baseline: list[float] = []
            for shape in SHAPES:
                data_dir = directory / f"{name}-{shape}"
                data_dir.mkdir()
                path = str(data_dir / f"msgbus.{name}")
                ids = Ids()
                store = FACTORIES[name](path)
                started = time.perf_counter()
                build(store, ids, shape, args.tombstones)
                built = time.perf_counter() - started
                tombstones = len(store.list_tombstones())
                started = time.perf_counter()
                if name != "memory":
                    store.close()
                    store = FACTORIES[name](path)
                # DuckDB loads every log's tombstones at open, SQLite on the log's first use:
                # either way before the timed appends, and shown in its own column.
                store.write(_appends(ids, 1))
                reopen = f"{time.perf_counter() - started:.3f}"
                try:
                    rates = [time_appends(store, ids, batch, args.writes) for batch in batches]
                finally:
                    store.close()
                if args.daemon and name != "memory":
                    rates += time_daemon(data_dir, name, args.publishes, args.publish_batches)
                if shape == "none":
                    baseline = rates
                cells = [
                    _rate(rate) if shape == "none" else f"{_rate(rate)} ({rate / base:.2f}x)"
                    for rate, base in zip(rates, baseline, strict=True)
                ]
                cells += ["-"] * (len(columns) - len(cells))
                print(f"  {name} {shape}: built in {built:.1f} s, {cells}", file=sys.stderr)
                rows.append([name, shape, f"{tombstones:,}", f"{built:.1f}", reopen, *cells])
                shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
