"""The wall clock as msgbus stores it: milliseconds since the Unix epoch."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall clock in milliseconds since the epoch (0 before the epoch, as the original).

    Message times, sync-state times and retention's ages all read it, so they agree.
    """
    return max(time.time_ns() // 1_000_000, 0)
