"""`TombstoneSet` against a plain Python set of heads, the model it must agree with."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgbus_core.intervals import TombstoneSet

# Small heads so that random ranges overlap, touch and nest often.
_RANGE = st.tuples(st.integers(-3, 40), st.integers(0, 8)).map(lambda r: (r[0], r[0] + r[1]))
_RANGES = st.lists(_RANGE, max_size=25)


def _naive(ranges: list[tuple[int, int]]) -> set[int]:
    return {head for first, last in ranges for head in range(first, last + 1)}


def _runs(heads: set[int]) -> list[tuple[int, int]]:
    """The maximal runs of consecutive heads: what the merged ranges must be."""
    runs: list[tuple[int, int]] = []
    for head in sorted(heads):
        if runs and runs[-1][1] + 1 == head:
            runs[-1] = (runs[-1][0], head)
        else:
            runs.append((head, head))
    return runs


def _added(ranges: list[tuple[int, int]]) -> TombstoneSet:
    tombstones = TombstoneSet()
    for first, last in ranges:
        tombstones.add(first, last)
    return tombstones


@given(_RANGES, st.integers(-10, 60))
def test_covers_exactly_the_heads_of_the_ranges_added(
    ranges: list[tuple[int, int]], head: int
) -> None:
    assert _added(ranges).covers(head) == (head in _naive(ranges))


@given(_RANGES)
def test_the_ranges_are_the_maximal_runs_of_covered_heads(ranges: list[tuple[int, int]]) -> None:
    tombstones = _added(ranges)
    assert list(tombstones) == _runs(_naive(ranges))
    assert len(tombstones) == len(_runs(_naive(ranges)))
    assert bool(tombstones) == bool(ranges)


@given(_RANGES, st.randoms())
def test_building_from_ranges_does_not_depend_on_their_order(
    ranges: list[tuple[int, int]], rng: random.Random
) -> None:
    shuffled = list(ranges)
    rng.shuffle(shuffled)
    assert TombstoneSet(shuffled) == _added(ranges)


@pytest.mark.parametrize(
    ("ranges", "merged"),
    [
        ([(1, 2), (3, 4)], [(1, 4)]),  # adjacent
        ([(3, 4), (1, 2)], [(1, 4)]),  # adjacent, added in reverse
        ([(1, 2), (4, 5)], [(1, 2), (4, 5)]),  # one head apart: not merged
        ([(1, 5), (3, 8)], [(1, 8)]),  # overlapping
        ([(1, 10), (3, 4)], [(1, 10)]),  # inside another
        ([(3, 4), (1, 10)], [(1, 10)]),  # swallowing another
        ([(1, 1), (3, 3), (5, 5), (2, 4)], [(1, 5)]),  # bridging several
        ([(1, 1), (3, 3), (7, 7), (4, 4)], [(1, 1), (3, 4), (7, 7)]),
        ([(5, 5), (5, 5)], [(5, 5)]),  # a duplicate
    ],
)
def test_merges_overlapping_adjacent_and_nested_ranges(
    ranges: list[tuple[int, int]], merged: list[tuple[int, int]]
) -> None:
    assert list(_added(ranges)) == merged
    assert list(TombstoneSet(ranges)) == merged


def test_consecutive_single_head_deletes_collapse_to_one_range() -> None:
    tombstones = TombstoneSet()
    for head in range(1, 100_001):
        tombstones.add(head, head)
    assert list(tombstones) == [(1, 100_000)]
    assert tombstones.covers(1)
    assert tombstones.covers(100_000)
    assert not tombstones.covers(100_001)


def test_every_other_head_stays_one_range_each() -> None:
    tombstones = TombstoneSet((head, head) for head in range(1, 20_001, 2))
    assert len(tombstones) == 10_000
    assert tombstones.covers(19_999)
    assert not tombstones.covers(20_000)
    tombstones.add(2, 19_998)
    assert list(tombstones) == [(1, 19_999)]


def test_an_empty_set_covers_nothing() -> None:
    tombstones = TombstoneSet()
    assert not tombstones
    assert not tombstones.covers(0)
    assert list(tombstones) == []
    assert repr(tombstones) == "TombstoneSet([])"


def test_a_reversed_range_is_refused() -> None:
    tombstones = TombstoneSet([(1, 2)])
    with pytest.raises(ValueError, match=r"first <= last, got \[4, 3\]"):
        tombstones.add(4, 3)
    with pytest.raises(ValueError, match="first <= last"):
        TombstoneSet([(2, 1)])
    assert list(tombstones) == [(1, 2)]


def test_a_set_equals_only_a_set_with_the_same_ranges() -> None:
    assert TombstoneSet([(1, 2), (3, 3)]) == TombstoneSet([(1, 3)])
    assert TombstoneSet([(1, 2)]) != TombstoneSet([(1, 3)])
    assert TombstoneSet([(1, 2)]) != [(1, 2)]


@pytest.mark.parametrize(
    ("head", "left"),
    [
        (1, [(2, 4), (7, 9)]),
        (3, [(3, 4), (7, 9)]),
        (5, [(7, 9)]),
        (9, [(9, 9)]),
        (10, []),
    ],
)
def test_dropping_a_trimmed_prefix_keeps_only_the_heads_at_or_above_it(
    head: int, left: list[tuple[int, int]]
) -> None:
    tombstones = TombstoneSet([(2, 4), (7, 9)])
    tombstones.drop_below(head)
    assert list(tombstones) == left
    assert not tombstones.covers(head - 1)
    # The set still merges and bisects as before.
    tombstones.add(20, 21)
    assert tombstones.covers(20)
