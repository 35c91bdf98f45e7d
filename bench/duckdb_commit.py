"""DuckDB's single-message commit: where one `write([AppendOp])` of the DuckDB store spends its
time, against DuckDB's own floor, and what it costs a daemon.

    uv run python bench/duckdb_commit.py store     # the store alone, keyed and unkeyed appends
    uv run python bench/duckdb_commit.py floor     # a bare duckdb connection, one row a commit
    uv run python bench/duckdb_commit.py daemon a d  # bench/publish_paths.py's (a), (d) on DuckDB

`store` opens a `DuckdbStore` on a fresh file and commits one 256-byte `AppendOp` per
transaction (with a random idempotency key, as the SDK sends by default, and without), in
rounds: per commit it prints the process CPU and the wall time (medians over the rounds), and
the statements DuckDB ran (counted and timed by a proxy around the writer connection: every
`execute`, `begin`, `commit` and appender `flush` is one statement). `floor` does what DuckDB
cannot go below for one durable row: an INSERT that commits by itself, and BEGIN, two appender
flushes (a message and its key) and COMMIT, on a connection with the store's settings.

`daemon` runs `bench/publish_paths.py`'s scenarios against a fresh `msgbusd --storage duckdb`.
A/B a change by running it with PYTHONPATH pointing at another build's packages, interleaved.
Prints one JSON line per mode.
"""

from __future__ import annotations

import asyncio
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import duckdb

from bench_common import free_port, stop_process, wait_for_port
from msgbus_core.model import NodeId
from msgbus_core.ops import AppendOp
from msgbus_store_duckdb.store import CONFIG, DuckdbStore
from publish_paths import scenario

ROUNDS = 7
COMMITS = 100
PAYLOAD = b"x" * 256
ORIGIN = NodeId("bench", "duckdb", "commit")


class Counted:
    """A DuckDB connection (or appender) whose statements are counted and timed, by kind."""

    def __init__(self, inner: Any, kind: str, tally: dict[str, list[float]]) -> None:
        self._inner, self._kind, self._tally = inner, kind, tally

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if name not in ("execute", "begin", "commit", "rollback", "appender", "flush"):
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            cpu, wall = time.process_time(), time.perf_counter()
            result = found(*args, **kwargs)
            if name == "appender":
                return Counted(result, f"appender {args[0]}", self._tally)
            label = f"{self._kind}.{name}"
            if name == "execute":
                label += f" {' '.join(str(args[0]).split()[:2])}"
            entry = self._tally.setdefault(label, [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += time.process_time() - cpu
            entry[2] += time.perf_counter() - wall
            return result

        return call


def append(keyed: bool, i: int) -> AppendOp:
    """One 256-byte append, keyed as the SDK keys it by default (a random key) or not."""
    key = str(uuid.uuid4()) if keyed else ""
    return AppendOp("bench", ORIGIN, PAYLOAD, {}, str(uuid.uuid4()), 1_700_000_000_000 + i, key)


def store_budget() -> dict[str, Any]:
    """Per-commit CPU, wall and statements of the store alone, keyed and unkeyed."""
    out: dict[str, Any] = {}
    for keyed in (True, False):
        directory = tempfile.mkdtemp()
        store = DuckdbStore.open(f"{directory}/store.duckdb")
        tally: dict[str, list[float]] = {}
        store._writer = Counted(store._writer, "writer", tally)  # type: ignore[assignment]
        for i in range(50):
            store.write([append(keyed, i)])
        tally.clear()
        cpu: list[float] = []
        wall: list[float] = []
        for r in range(ROUNDS):
            c0, w0 = time.process_time(), time.perf_counter()
            for i in range(COMMITS):
                store.write([append(keyed, r * COMMITS + i)])
            cpu.append((time.process_time() - c0) / COMMITS * 1e6)
            wall.append((time.perf_counter() - w0) / COMMITS * 1e6)
        store.close()
        n = ROUNDS * COMMITS
        out["keyed" if keyed else "unkeyed"] = {
            "cpu_us": round(statistics.median(cpu)),
            "wall_us": round(statistics.median(wall)),
            "statements": round(sum(v[0] for v in tally.values()) / n, 2),
            "by_statement": {
                label: {
                    "per_commit": round(count / n, 2),
                    "cpu_us": round(c / count * 1e6),
                    "wall_us": round(w / count * 1e6),
                }
                for label, (count, c, w) in sorted(tally.items())
            },
        }
    return out


MESSAGES = (
    "CREATE TABLE messages (log_id BIGINT NOT NULL, head_id BIGINT NOT NULL, id VARCHAR NOT "
    "NULL, payload BLOB NOT NULL, headers VARCHAR, created_at_ms BIGINT NOT NULL, deleted "
    "BOOLEAN NOT NULL)"
)
KEYS = (
    "CREATE TABLE publish_keys (log_id BIGINT NOT NULL, idempotency_key VARCHAR NOT NULL, "
    "head_id BIGINT NOT NULL, message_id VARCHAR NOT NULL, created_at_ms BIGINT NOT NULL, "
    "PRIMARY KEY (log_id, idempotency_key))"
)


def floor() -> dict[str, Any]:
    """DuckDB's own cost of one durable row per transaction, with the store's settings."""
    directory = tempfile.mkdtemp()
    con = duckdb.connect(f"{directory}/floor.duckdb", config=dict(CONFIG))
    con.execute(MESSAGES)
    con.execute(KEYS)
    con.execute("CREATE INDEX publish_keys_by_key ON publish_keys (idempotency_key)")
    messages, keys = con.appender("messages"), con.appender("publish_keys")
    head = 0

    def row() -> tuple[object, ...]:
        nonlocal head
        head += 1
        return (1, head, str(uuid.uuid4()), PAYLOAD, None, head, False)

    def insert_commit() -> None:
        con.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)", row())

    def select_one() -> None:
        con.execute("SELECT 1").fetchall()

    def begin_two_flushes_commit() -> None:
        con.begin()
        message = row()
        messages.append_rows([message])
        messages.flush()
        keys.append_rows([(1, str(uuid.uuid4()), message[1], message[2], message[5])])
        keys.flush()
        con.commit()

    cases = {
        "SELECT 1": select_one,
        "INSERT (autocommit)": insert_commit,
        "BEGIN, 2 appender flushes, COMMIT": begin_two_flushes_commit,
    }
    samples: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for _ in range(ROUNDS):  # the cases interleaved, round by round
        for label, case in cases.items():
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(COMMITS):
                case()
            samples[label].append(
                ((time.process_time() - c0) / COMMITS, (time.perf_counter() - w0) / COMMITS)
            )
    con.close()
    return {
        label: {
            "cpu_us": round(statistics.median(c for c, _ in runs) * 1e6),
            "wall_us": round(statistics.median(w for _, w in runs) * 1e6),
        }
        for label, runs in samples.items()
    }


def daemon(names: list[str]) -> dict[str, Any]:
    """publish_paths' scenarios `names` (a, b, d), each against a fresh DuckDB daemon."""
    res: dict[str, Any] = {}
    for name in names:
        directory = tempfile.mkdtemp()
        port = free_port()
        command = [sys.executable, "-m", "msgbus_server", "--listen", f"127.0.0.1:{port}"]
        command += ["--storage", "duckdb", "--data", f"{directory}/db.duckdb"]
        proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port)
            res[name] = asyncio.run(scenario(name, f"127.0.0.1:{port}", proc.pid))
        finally:
            stop_process(proc)
    return res


def main() -> None:
    """Run the mode named on the command line."""
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "store":
        result = store_budget()
    elif mode == "floor":
        result = floor()
    else:
        result = daemon(rest or ["a", "d"])
    print(json.dumps({mode: result}), flush=True)


if __name__ == "__main__":
    main()
