"""FIFO leases on the SDK side: the wire conversions and the worker's timing rules.

Shared by the asyncio worker (``_async_worker``) and the blocking one generated from it.
"""

from __future__ import annotations

from typing import Final

from msgbus_proto import pb

from ._convert import fifo_message
from ._generated.msgbus.v1 import FifoLease

DEFAULT_VISIBILITY_MS: Final = 30_000
"""How long a worker's lease holds before it is extended (the daemon's default too)."""
MAX_POLL_MS: Final = 5_000
"""The longest a worker's LeaseFifo waits for a message (below the client's default timeout)."""


def fifo_lease(p: pb.FifoLease) -> FifoLease:
    """Convert a decoded FifoLease."""
    return FifoLease(
        message=fifo_message(p.message), lease_id=p.lease_id, expires_at_ms=p.expires_at_ms
    )


def keepalive_interval_s(visibility_ms: int) -> float:
    """How often a worker extends the leases of its running jobs: a third of the visibility.

    Two extensions can fail (a daemon restart) before a running job's lease runs out.
    """
    return max(visibility_ms, 300) / 3000


def poll_ms(timeout_s: float | None) -> int:
    """The wait_ms of a worker's LeaseFifo: MAX_POLL_MS, or less under a shorter client timeout."""
    if timeout_s is None:
        return MAX_POLL_MS
    return max(min(MAX_POLL_MS, int((timeout_s - 1) * 1000)), 0)


__all__ = ["DEFAULT_VISIBILITY_MS", "fifo_lease", "keepalive_interval_s", "poll_ms"]
