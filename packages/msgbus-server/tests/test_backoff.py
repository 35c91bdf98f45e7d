"""Sync backoff: exponential growth, the cap, jitter bounds, and the reset after a success."""

from __future__ import annotations

import random

import pytest

from msgbus_core import NodeId
from msgbus_server.backoff import backoff_delay, default_backoff_cap
from msgbus_server.sync_peer import SyncSettings
from msgbus_server.sync_state import Heads, SyncStateBook


class NoJitter(random.Random):
    """Always draws 0, so a delay shows its exponential part alone."""

    def random(self) -> float:
        return 0.0


class MostJitter(random.Random):
    """Always draws just below 1, the largest jitter `random()` can give."""

    def random(self) -> float:
        return 1.0 - 2**-53


LOG = ("events", NodeId("t", "b", "remote"))


def test_the_wait_doubles_with_each_failure_from_one_interval() -> None:
    waits = [backoff_delay(n, 0.5, 1000.0, NoJitter()) for n in range(1, 7)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_a_count_below_one_waits_like_the_first_failure() -> None:
    assert backoff_delay(0, 0.5, 1000.0, NoJitter()) == 0.5
    assert backoff_delay(-3, 0.5, 1000.0, NoJitter()) == 0.5


def test_the_wait_stops_growing_at_the_cap_even_after_billions_of_failures() -> None:
    assert backoff_delay(6, 1.0, 30.0, NoJitter()) == 30.0  # 32 s, capped
    assert backoff_delay(2**32 - 1, 1.0, 30.0, NoJitter()) == 30.0  # no float overflow


def test_jitter_adds_less_than_one_interval() -> None:
    # The largest draw: just under one interval (the sum may round up to it, never beyond).
    assert 8.0 + 1.99 < backoff_delay(3, 2.0, 1000.0, MostJitter()) <= 8.0 + 2.0
    assert 60.0 + 1.99 < backoff_delay(40, 2.0, 60.0, MostJitter()) <= 60.0 + 2.0
    rng = random.Random(7)
    for failures in range(1, 12):
        base = min(0.25 * 2 ** (failures - 1), 5.0)
        for _ in range(50):
            assert base <= backoff_delay(failures, 0.25, 5.0, rng) < base + 0.25


def test_the_default_cap_is_30_intervals_and_at_most_a_minute() -> None:
    assert default_backoff_cap(1.0) == 30.0
    assert default_backoff_cap(0.1) == pytest.approx(3.0)
    assert default_backoff_cap(5.0) == 60.0
    assert default_backoff_cap(120.0) == 120.0  # never shorter than one interval


def test_settings_apply_the_default_cap_and_bounds() -> None:
    settings = SyncSettings.of(interval_s=0.0, batch_limit=0)
    assert settings.interval_s == 0.01
    assert settings.batch_limit == 1
    assert settings.backoff_cap_s == pytest.approx(0.3)
    assert settings.fetch_packing == 1  # a whole batch per response
    assert SyncSettings.of(interval_s=1, batch_limit=10**9).batch_limit == 10_000
    assert SyncSettings.of(interval_s=1, batch_limit=5, fetch_packing=-1).fetch_packing == 0
    explicit = SyncSettings.of(interval_s=1, batch_limit=5, backoff_cap_s=2.5)
    assert explicit.backoff(10, NoJitter()) == 2.5


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failing_log_waits_longer_each_time_and_a_success_resets_the_wait() -> None:
    clock = Clock()
    settings = SyncSettings.of(interval_s=1.0, batch_limit=10)
    book = SyncStateBook("peer:1", backoff=lambda n: settings.backoff(n, NoJitter()), clock=clock)
    assert book.retry_due(LOG)
    waits = []
    for _ in range(7):
        book.failure("conflict", LOG, Heads(1, 9))
        start = clock.now
        while not book.retry_due(LOG):
            clock.now += 0.5
        waits.append(clock.now - start)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    book.success(LOG, Heads(9, 9))
    assert book.retry_due(LOG)  # a success ends the backoff at once
    book.failure("conflict again", LOG, Heads(9, 12))
    assert not book.retry_due(LOG)
    clock.now += 1.0
    assert book.retry_due(LOG)  # and the next failure waits one interval again


def test_an_uncounted_refusal_does_not_hold_the_log_back() -> None:
    clock = Clock()
    book = SyncStateBook("peer:1", backoff=lambda n: 10.0, clock=clock)
    book.failure("refused", LOG, Heads(1, 9), count=False)
    assert book.retry_due(LOG)
