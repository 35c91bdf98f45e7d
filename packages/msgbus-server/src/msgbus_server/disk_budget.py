"""`DiskBudget`: how much of `--max-disk-bytes` the store uses, and whether it may grow.

The retention worker measures the store (`MsgbusStore.disk_usage`) on every pass; between two
measurements, the bytes that writes were accepted for are added, so a burst of publishes cannot
run far past the budget before the next measurement. With `--discard new` a write is refused
while the budget is used up (RESOURCE_EXHAUSTED, naming the budget); with `--discard old` writes
always go on and the retention worker trims the oldest messages instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from msgbus_core.errors import StorageFullError
from msgbus_core.store import DiskUsage
from msgbus_server.retention_rules import DISCARD_POLICIES

__all__ = ["DISCARD_NEW", "DISCARD_OLD", "DiskBudget", "format_bytes"]

log = logging.getLogger("msgbus_server.retention")

DISCARD_OLD: Final = DISCARD_POLICIES[0]
"""Over the budget, trim the oldest messages (across the logs that may be trimmed)."""
DISCARD_NEW: Final = DISCARD_POLICIES[1]
"""Over the budget, refuse writes until retention frees space."""
LOW_WATER: Final = 0.95
"""Trimming for the budget starts above this share of it and frees space to below it (less
room for the growth until the next pass), so it does not run on every pass for a few bytes."""


def format_bytes(count: int) -> str:
    """`count` bytes for a person: `512 B`, `1.5 MiB`, `2.0 GiB`."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class DiskBudget:
    """The daemon-wide disk budget; all methods run on the event loop."""

    def __init__(self, max_bytes: int, discard: str) -> None:
        """A budget of `max_bytes` with the `--discard` policy `discard` (old or new)."""
        self.max_bytes = max_bytes
        self.discard = discard
        self._measured = 0
        self._since = 0
        self._refusing = False
        self.pressure = asyncio.Event()
        """Set when accepted writes bring the budget near its limit: the retention worker
        wakes up for it instead of waiting for its next pass."""

    @property
    def used_bytes(self) -> int:
        """The last measurement plus the bytes accepted for writing since."""
        return self._measured + self._since

    def measured(self, usage: DiskUsage) -> None:
        """Take a fresh measurement of the store."""
        self._measured = usage.used_bytes
        self._since = 0
        if self.discard == DISCARD_NEW:
            full = self.used_bytes >= self.max_bytes
            if full != self._refusing:
                self._refusing = full
                if full:
                    log.warning(
                        "disk budget used up (%s of --max-disk-bytes %s): refusing writes "
                        "until retention frees space (--discard new)",
                        format_bytes(self.used_bytes),
                        format_bytes(self.max_bytes),
                    )
                else:
                    log.info(
                        "disk budget has room again (%s of %s): accepting writes",
                        format_bytes(self.used_bytes),
                        format_bytes(self.max_bytes),
                    )

    def check_writable(self, incoming_bytes: int) -> None:
        """Account for a write of about `incoming_bytes`; refuse it when the policy says so.

        Raises:
            StorageFullError: `--discard new` and the budget is used up (RESOURCE_EXHAUSTED).
        """
        if self.discard == DISCARD_NEW and self.used_bytes >= self.max_bytes:
            self._refusing = True
            self.pressure.set()
            raise StorageFullError(
                f"disk budget used up: the store takes {format_bytes(self.used_bytes)} of "
                f"--max-disk-bytes {self.max_bytes} ({format_bytes(self.max_bytes)}); writes are "
                "refused until retention frees space (--discard new)"
            )
        self._since += incoming_bytes
        if self.used_bytes >= self.max_bytes * LOW_WATER:
            self.pressure.set()
