"""`KeyFilter`: the idempotency keys a DuckDB file may hold, so that a new key skips its lookup.

Every keyed append asks `publish_keys` whether its key is stored, and nearly every key is new:
the SDK draws a random one per publish. On DuckDB that lookup is a statement of its own, about
a quarter of a keyed single-message commit's CPU (bench/README.md "DuckDB's single-message
commit"). One process owns a DuckDB file, so the writer sees every key row that is inserted or
deleted, and can keep a counting Bloom filter of them: a key the filter has never counted is
certainly not stored, and only the others are asked of the table.

The filter may answer "maybe" for a key that is not stored (another key shares its counters, or
a counter saturated), which costs the lookup it would have cost anyway; it must never answer
"no" for a stored key. So a key is counted before its row can exist, and uncounted only after
the transaction that deleted its row committed; a counter that reached its maximum is never
decremented again. Memory is fixed: `COUNTERS` bytes, whatever the number of keys.

The keys already stored are counted by `fill`, which the store runs on a thread of its own at
open (1,000,000 keys take seconds of Python): until it is `complete`, `may_hold` says True for
every key, so a publish looks its key up as it did without the filter. Counting a row twice
(the fill read it, and the writer added it) only raises a counter; a remove that comes before
the fill counted its row cannot leave a counter below the keys still stored at it once the fill
is complete, since by then every stored key has been added.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Final

COUNTERS: Final = 1 << 23
"""One byte each: 8 MiB. At the default --dedup-max-keys (1,000,000 keys), with `HASHES`
counters per key, about 2.4% of new keys still take the lookup."""
HASHES: Final = 4
"""Counters per key."""
_SATURATED: Final = 255


class KeyFilter:
    """A counting Bloom filter over (log id, idempotency key)."""

    def __init__(self, counters: int = COUNTERS, hashes: int = HASHES) -> None:
        """An empty filter of `counters` one-byte counters (a power of two)."""
        if counters <= 0 or counters & (counters - 1):
            raise ValueError(f"counters must be a power of two, got {counters}")
        self._counts = bytearray(counters)
        self._mask = counters - 1
        self._hashes = hashes
        # The writer's adds and removes and the fill's pages change counters from two threads.
        self._lock = threading.Lock()
        self._complete = False

    @property
    def complete(self) -> bool:
        """Whether every key stored before the filter was made has been counted (`fill`)."""
        return self._complete

    def _slots(self, log_id: int, key: str) -> list[int]:
        # Double hashing from one 64-bit hash; the salt of Python's hash changes per process,
        # which is harmless: the filter lives in memory and is rebuilt at open.
        h = hash((log_id, key)) & 0xFFFF_FFFF_FFFF_FFFF
        first, step = h & self._mask, (h >> 32) | 1
        return [(first + i * step) & self._mask for i in range(self._hashes)]

    def add(self, log_id: int, key: str) -> None:
        """Count a key: from now on `may_hold` says True for it until it is removed."""
        with self._lock:
            self._add(log_id, key)

    def _add(self, log_id: int, key: str) -> None:
        counts = self._counts
        for slot in self._slots(log_id, key):
            if counts[slot] < _SATURATED:
                counts[slot] += 1

    def fill(self, pages: Iterable[Sequence[tuple[int, str]]]) -> None:
        """Count the stored (log id, key) rows, a page at a time; then the filter is complete.

        Every key stored before the filter was made must be in `pages`; keys stored since are
        counted by `add` and may be in them too.
        """
        for rows in pages:
            with self._lock:
                for log_id, key in rows:
                    self._add(log_id, key)
        self._complete = True

    def remove(self, log_id: int, key: str) -> None:
        """Uncount a key once counted by `add`, after its row is gone for good (committed)."""
        with self._lock:
            counts = self._counts
            for slot in self._slots(log_id, key):
                # A saturated counter no longer knows how many keys it counts: it stays.
                if 0 < counts[slot] < _SATURATED:
                    counts[slot] -= 1

    def may_hold(self, log_id: int, key: str) -> bool:
        """False only when the key is certainly not stored; True when it may be."""
        if not self._complete:
            return True
        counts = self._counts
        # Read without the lock: once complete, only the writer's thread changes counters.
        return all(counts[slot] for slot in self._slots(log_id, key))


__all__ = ["COUNTERS", "HASHES", "KeyFilter"]
