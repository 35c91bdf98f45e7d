"""`TombstoneSet`: the heads one log's tombstones cover, as merged closed ranges.

Every append and every replicated message asks whether a tombstone covers its head. A log that
is consumed and then deleted one message at a time gathers one tombstone per message, so the
stores answer from this set instead of scanning the tombstones: lookups bisect, and memory grows
with the number of disjoint ranges, not with the number of deletes (100,000 deletes of
consecutive heads are one range).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class TombstoneSet:
    """A set of integers (heads) kept as sorted, disjoint, non-adjacent closed ranges.

    Invariant: `_firsts[i] <= _lasts[i]` and `_lasts[i] + 1 < _firsts[i + 1]`, so the ranges
    are in order, and two ranges that overlap or touch are always one range.
    """

    __slots__ = ("_firsts", "_lasts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        """A set covering each `(first, last)` of `ranges`, in any order and overlapping."""
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        # Sorted, every range lands at the end: loading n ranges costs O(n log n).
        for first, last in sorted(ranges):
            self.add(first, last)

    def add(self, first: int, last: int) -> None:
        """Cover heads `first..last` (inclusive), merging with the ranges it overlaps or touches.

        Raises:
            ValueError: `first > last`.
        """
        if first > last:
            raise ValueError(f"a range needs first <= last, got [{first}, {last}]")
        # The ranges to merge are those ending at or after first - 1 and starting at or before
        # last + 1: a contiguous run lo..hi-1 of the sorted lists.
        lo = bisect.bisect_left(self._lasts, first - 1)
        hi = bisect.bisect_right(self._firsts, last + 1, lo)
        if lo < hi:
            first = min(first, self._firsts[lo])
            last = max(last, self._lasts[hi - 1])
        self._firsts[lo:hi] = [first]
        self._lasts[lo:hi] = [last]

    def drop_below(self, head: int) -> None:
        """Forget the heads below `head` (a trimmed prefix: no message can arrive there)."""
        cut = bisect.bisect_left(self._lasts, head)
        del self._firsts[:cut], self._lasts[:cut]
        if self._firsts and self._firsts[0] < head:
            self._firsts[0] = head

    def covers(self, head: int) -> bool:
        """True when `head` lies in one of the ranges."""
        index = bisect.bisect_right(self._firsts, head) - 1
        return index >= 0 and head <= self._lasts[index]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """The merged ranges as `(first, last)` pairs, in ascending order."""
        return zip(self._firsts, self._lasts, strict=True)

    def __len__(self) -> int:
        """How many disjoint ranges the set holds."""
        return len(self._firsts)

    def __bool__(self) -> bool:
        return bool(self._firsts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TombstoneSet):
            return NotImplemented
        return self._firsts == other._firsts and self._lasts == other._lasts

    def __repr__(self) -> str:
        return f"TombstoneSet({list(self)!r})"


__all__ = ["TombstoneSet"]
