"""What Fetch and Subscribe streams delivered, and how far behind the open Subscribe streams are.

The service notes every response it hands to gRPC here (`StreamTally.delivered`), and a
Subscribe stream says when it waits for new commits (`StreamTally.waiting`): a stream that is
not waiting is still reading what was committed before, and is behind by the age of the last
message it delivered. Plain counters on the event loop thread, read there by the status
snapshot (`daemon_status`), so the publish and delivery paths import nothing of the metrics.

A tally lives as long as its stream's handler holds it: the open ones are kept in a weak set,
so a stream that ends, however it ends, drops out without a `finally`.
"""

from __future__ import annotations

import weakref
from typing import Final

__all__ = ["FETCH", "SUBSCRIBE", "StreamStats", "StreamTally"]

FETCH: Final = "Fetch"
SUBSCRIBE: Final = "Subscribe"


class StreamTally:
    """One open stream: how far it got, and whether it is waiting for new commits."""

    __slots__ = ("__weakref__", "_stats", "method", "position_ms", "waiting")

    def __init__(self, stats: StreamStats, method: str) -> None:
        self._stats = stats
        self.method = method
        self.position_ms = 0
        """The creation time of the last message delivered (0 before the first)."""
        self.waiting = False
        """True while a Subscribe stream has read everything and waits for the next commit."""

    def delivered(self, count: int, last_created_at_ms: int) -> None:
        """Note one response of `count` messages, the last one created at `last_created_at_ms`."""
        self._stats.delivered[self.method] = self._stats.delivered.get(self.method, 0) + count
        self.position_ms = last_created_at_ms

    def behind_ms(self, now_ms: int) -> int:
        """How far behind the log's head this stream is: 0 while it waits for new commits."""
        if self.waiting or not self.position_ms:
            return 0
        return max(now_ms - self.position_ms, 0)


class StreamStats:
    """Every stream's deliveries, by method, and the open Subscribe streams (event loop only)."""

    def __init__(self) -> None:
        self.delivered: dict[str, int] = {}
        """Messages handed to gRPC since startup, by method (Fetch, Subscribe)."""
        self._open: weakref.WeakSet[StreamTally] = weakref.WeakSet()

    def open(self, method: str) -> StreamTally:
        """A tally for a new stream of `method`; the stream holds it while it runs."""
        tally = StreamTally(self, method)
        if method == SUBSCRIBE:
            self._open.add(tally)
        return tally

    def subscribers(self) -> list[StreamTally]:
        """The Subscribe streams open now."""
        return list(self._open)
