"""`ReadGate`: the daemon-wide cap on bytes read from the store and not yet handed to gRPC.

Every Fetch and Subscribe chunk (sync's Fetch from peers included) reserves its bytes here
before it reads, and gives each message's bytes back as it hands the message's response to
gRPC. When less than a whole read budget is free, a reader gets what is free, down to a single
message: the store returns one message whatever its size, so a read always progresses, and the
gate may run over its cap by less than that one message until bytes come back.

A stream whose client stopped reading waits inside gRPC with the rest of its chunk unsent. That
rest is *reclaimable*: the log is the source of truth, so when the gate is full, the streams
that have waited longest drop what they have not sent and read it again once their client
reads. Slow clients therefore never hold the gate against the others: a reader waits only for
chunks being read or sent right now.

Everything runs on the event loop thread, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Protocol

__all__ = ["ReadGate", "Reclaimable"]


class Reclaimable(Protocol):
    """Read bytes that can be dropped and read again later (a stalled stream's unsent rest)."""

    def reclaim(self) -> int:
        """Drop what is not sent yet; return how many reserved bytes that frees."""
        ...


class ReadGate:
    """Bytes read and not yet handed to gRPC, across every stream of the daemon."""

    def __init__(self, capacity: int) -> None:
        """A gate that lets `capacity` bytes (at least 1) be in flight at once."""
        if capacity < 1:
            raise ValueError(f"a read gate needs a capacity of at least 1 byte, got {capacity}")
        self.capacity = capacity
        self._held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._passing = 0
        """Waiters woken but not yet resumed: newcomers queue behind them."""
        self._stalled: dict[Reclaimable, None] = {}
        """Reclaimable bytes, the longest-waiting first."""

    @property
    def held(self) -> int:
        """Bytes reserved now (above `capacity` only by one oversized message at most)."""
        return self._held

    async def reserve(self, wanted: int) -> int:
        """Wait for free bytes, then reserve up to `wanted` of them; returns how many (>= 1).

        Give them back with `settle` once the read knows its size, and `release` as its
        responses are handed over.
        """
        self._reclaim()
        if self._waiters or self._passing or self._held >= self.capacity:
            await self._wait_turn()
        granted = max(min(wanted, self.capacity - self._held), 1)
        self._held += granted
        self._wake()
        return granted

    def settle(self, granted: int, used: int) -> None:
        """Turn a reservation of `granted` bytes into the `used` bytes the read returned."""
        self._held += used - granted
        self._wake()

    def release(self, size: int) -> None:
        """Give back `size` bytes that were handed to gRPC (or that will never be)."""
        if size:
            self._held -= size
            self._wake()

    def stall(self, unsent: Reclaimable) -> None:
        """`unsent` waits for its client: it may be reclaimed until `resume(unsent)`."""
        self._stalled[unsent] = None
        if self._waiters:
            self._reclaim()
            self._wake()

    def resume(self, unsent: Reclaimable) -> None:
        """`unsent` is being sent again: it is no longer reclaimable."""
        self._stalled.pop(unsent, None)

    def _reclaim(self) -> None:
        """Drop unsent bytes of stalled streams, longest-waiting first, until some are free."""
        while self._held >= self.capacity and self._stalled:
            unsent = next(iter(self._stalled))
            del self._stalled[unsent]
            self._held -= unsent.reclaim()

    async def _wait_turn(self) -> None:
        """Queue until this reader is first and bytes are free."""
        front = False
        while True:
            waiter = asyncio.get_running_loop().create_future()
            if front:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._passing -= 1
                    self._wake()  # it was this reader's turn: pass it on
                else:
                    with contextlib.suppress(ValueError):  # skipped by `_wake` already
                        self._waiters.remove(waiter)
                raise
            self._passing -= 1
            self._reclaim()
            if self._held < self.capacity:
                return
            front = True  # an oversized read took the bytes meanwhile: stay first

    def _wake(self) -> None:
        """Let the first waiter in, while bytes are free and no one else is on the way."""
        while self._waiters and not self._passing and self._held < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._passing += 1
                return
