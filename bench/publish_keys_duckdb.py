"""DuckDB's `publish_keys` layouts at a large table: what a write batch's key lookup, its key
insert and a prune cost with each set of indexes.

Not a test: run it by hand; the figures back the comment on `_PUBLISH_KEYS` in
`msgbus_store_duckdb.schema`.

    uv run python bench/publish_keys_duckdb.py                  # 1,000,000 keys
    uv run python bench/publish_keys_duckdb.py --keys 200000

For each layout a fresh DuckDB file is filled with `--keys` rows (UUID4 keys spread over four
logs, appended in created_at_ms order, then a CHECKPOINT), and then 30 write transactions each
look up 256 new keys of one log (one `IN (...)` query, with the log in the filter and without)
and append their 256 rows with one appender flush; the last step removes the 10,000 oldest keys
as the dedup worker does, and asks for expired keys when none are. Medians, in ms. The layouts:

- `pk + age index`: PRIMARY KEY (log_id, idempotency_key) and an index on
  (created_at_ms, idempotency_key), schema 3 as first written;
- `pk + key index`: the primary key and an index on idempotency_key alone (the schema now);
- `key index only`: no primary key.

DuckDB scans an ART index only for a single column, and only when the filter names no other
column: the `EXPLAIN ANALYZE` of each lookup says whether it used one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import duckdb

COLUMNS = (
    "log_id BIGINT NOT NULL, idempotency_key VARCHAR NOT NULL, head_id BIGINT NOT NULL, "
    "message_id VARCHAR NOT NULL, created_at_ms BIGINT NOT NULL"
)
PRIMARY_KEY = ", PRIMARY KEY (log_id, idempotency_key)"
LAYOUTS = {
    "pk + age index": (
        f"CREATE TABLE publish_keys ({COLUMNS}{PRIMARY_KEY})",
        "CREATE INDEX by_age ON publish_keys (created_at_ms, idempotency_key)",
    ),
    "pk + key index": (
        f"CREATE TABLE publish_keys ({COLUMNS}{PRIMARY_KEY})",
        "CREATE INDEX by_key ON publish_keys (idempotency_key)",
    ),
    "key index only": (
        f"CREATE TABLE publish_keys ({COLUMNS})",
        "CREATE INDEX by_key ON publish_keys (idempotency_key)",
    ),
}
BATCH = 256
TRANSACTIONS = 30
FIND = "SELECT log_id, idempotency_key, head_id, message_id, created_at_ms FROM publish_keys "
DROP = (
    "DELETE FROM publish_keys WHERE (log_id, idempotency_key) IN (SELECT log_id, "
    "idempotency_key FROM publish_keys{where} ORDER BY created_at_ms, idempotency_key LIMIT ?)"
)


class Rows:
    """Key rows in created_at_ms order."""

    def __init__(self) -> None:
        self.head = 0

    def make(self, count: int, log_id: int) -> list[tuple[object, ...]]:
        rows: list[tuple[object, ...]] = []
        for _ in range(count):
            self.head += 1
            key, message = str(uuid.uuid4()), str(uuid.uuid4())
            rows.append((log_id, key, self.head, message, 1_700_000_000_000 + self.head))
        return rows


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.2f}"


def measure(path: Path, layout: str, keys: int) -> list[str]:
    """One table row for `layout`."""
    con = duckdb.connect(str(path))
    try:
        for statement in LAYOUTS[layout]:
            con.execute(statement)
        rows = Rows()
        for start in range(0, keys, 20_000):
            chunk = rows.make(min(20_000, keys - start), 1 + (start // 20_000) % 4)
            con.begin()
            appender = con.appender("publish_keys")
            appender.append_rows(chunk)
            appender.flush()
            con.commit()
        con.execute("CHECKPOINT")
        marks = ", ".join("?" * BATCH)
        by_log = f"{FIND}WHERE log_id = ? AND idempotency_key IN ({marks})"
        by_key = f"{FIND}WHERE idempotency_key IN ({marks})"
        appender = con.appender("publish_keys")
        with_log, without_log, insert, commit = [], [], [], []
        for _ in range(TRANSACTIONS):
            batch = rows.make(BATCH, 1)
            wanted = [row[1] for row in batch]
            con.begin()
            began = time.perf_counter()
            con.execute(by_log, [1, *wanted]).fetchall()
            looked = time.perf_counter()
            con.execute(by_key, wanted).fetchall()
            looked_again = time.perf_counter()
            appender.append_rows(batch)
            appender.flush()
            inserted = time.perf_counter()
            con.commit()
            committed = time.perf_counter()
            with_log.append(looked - began)
            without_log.append(looked_again - looked)
            insert.append(inserted - looked_again)
            commit.append(committed - inserted)
        # The scan's kind is chosen when the query runs: EXPLAIN ANALYZE tells it.
        plans = []
        for sql, parameters in ((by_log, [1, *wanted]), (by_key, wanted)):
            plan = str(con.execute(f"EXPLAIN ANALYZE {sql}", parameters).fetchall())
            plans.append("index" if "Index Scan" in plan else "scan")
        con.begin()
        began = time.perf_counter()
        con.execute(DROP.format(where=""), [10_000]).fetchall()
        pruned = time.perf_counter() - began
        con.commit()
        began = time.perf_counter()
        con.execute(DROP.format(where=" WHERE created_at_ms < ?"), [0, 10_000]).fetchall()
        nothing = time.perf_counter() - began
    finally:
        con.close()
    return [
        layout,
        f"{ms(with_log)} ({plans[0]})",
        f"{ms(without_log)} ({plans[1]})",
        ms(insert),
        ms(commit),
        f"{pruned * 1e3:.1f}",
        f"{nothing * 1e3:.1f}",
    ]


def main() -> None:
    """Fill and measure each layout; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"# {args.keys:,} keys, DuckDB {duckdb.__version__}, ms (medians of {TRANSACTIONS})")
    print(
        f"| layout | find {BATCH} keys, log in filter | find {BATCH} keys by key | "
        f"append {BATCH} rows | commit | remove 10,000 oldest | ask for expired, none |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="mb-keys-") as folder:
        for number, layout in enumerate(LAYOUTS):
            row = measure(Path(folder) / f"{number}.duckdb", layout, args.keys)
            print(f"| {' | '.join(row)} |", flush=True)


if __name__ == "__main__":
    main()
