"""How long peer sync waits before it tries a failing peer or log again.

Exponential with jitter: the wait doubles with each consecutive failure up to a cap, plus up to
one sync interval of random jitter so that daemons restarted together do not retry in lockstep.
A success resets the failure count, and with it the wait.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay", "default_backoff_cap"]

_MAX_EXPONENT = 62
"""2**62 intervals exceeds any cap; a larger exponent would only risk a float overflow."""


def default_backoff_cap(interval_s: float) -> float:
    """The default longest wait: 30 intervals, at most a minute, never less than one interval."""
    return max(interval_s, min(60.0, 30 * interval_s))


def backoff_delay(failures: int, interval_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait after `failures` consecutive failures (a count below 1 counts as 1).

    The wait is `interval_s * 2**(failures - 1)`, at most `cap_s`, plus a jitter drawn from
    `rng` in [0, interval_s). So the first retry comes after one or two intervals, and no
    retry waits longer than `cap_s + interval_s`.
    """
    exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
    return min(interval_s * 2.0**exponent, cap_s) + rng.random() * interval_s
