"""The sync state book: what peer sync last persisted, and what it has to persist next.

Sync state is advisory (it is served by ListPeerSyncStates and never drives replication), but a
durable write costs an fsync. So the book keeps the last written record of every
(peer, topic, origin) in memory, seeded from the store at startup, and emits a new record only
when something an operator cares about changed: a head, the last synced head, the failure count
or the error. An idle pass, where every log is already in sync, writes nothing. The timestamps
therefore say when the state last changed, not when the peer was last polled.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace

from msgbus_core import NodeId, PeerSyncState

StateKey = tuple[str, str, str]
"""(peer endpoint, topic, origin key); topic and origin key are "" for the peer-level record."""


def now_ms() -> int:
    """Wall-clock milliseconds, as stored in sync state."""
    return int(time.time() * 1000)


def state_key(peer: str, topic: str = "", origin: NodeId | None = None) -> StateKey:
    """The book key of a peer-level (no topic, no origin) or log-level record."""
    return (peer, topic, origin.key if origin is not None else "")


def _substance(state: PeerSyncState) -> tuple[int, int, int, int, str]:
    # Everything but the timestamps: a record whose substance is unchanged is not rewritten.
    return (
        state.local_head,
        state.remote_head,
        state.last_synced_head,
        state.consecutive_failures,
        state.last_error,
    )


class SyncStateBook:
    """Last written sync states, and the records that still have to be written."""

    def __init__(self, seed: Iterable[PeerSyncState] = ()) -> None:
        self._written: dict[StateKey, PeerSyncState] = {}
        self._pending: dict[StateKey, PeerSyncState] = {}
        for state in seed:
            self._written[state_key(state.peer, state.topic, state.origin)] = state

    def current(self, key: StateKey) -> PeerSyncState | None:
        """The newest record for `key`: pending if there is one, else the last written."""
        return self._pending.get(key) or self._written.get(key)

    def last_synced_head(self, key: StateKey) -> int:
        """The last synced head recorded for a log, 0 when none."""
        state = self.current(key)
        return state.last_synced_head if state else 0

    def failures(self, key: StateKey) -> int:
        """The consecutive failures recorded for `key`."""
        state = self.current(key)
        return state.consecutive_failures if state else 0

    def _put(self, key: StateKey, state: PeerSyncState, *, force: bool = False) -> None:
        previous = self.current(key)
        if not force and previous is not None and _substance(previous) == _substance(state):
            return
        self._pending[key] = state

    def success(
        self,
        peer: str,
        topic: str = "",
        origin: NodeId | None = None,
        *,
        local_head: int = 0,
        remote_head: int = 0,
        last_synced_head: int | None = None,
        progressed: bool = False,
    ) -> None:
        """Note a successful attempt (or an in-sync observation) of a peer or a log.

        `last_synced_head` None keeps the previous value. `progressed` forces a write even when
        nothing else changed, so that `last_success_at_ms` tells when data last arrived.
        """
        key = state_key(peer, topic, origin)
        previous = self.current(key)
        now = now_ms()
        synced = (
            last_synced_head
            if last_synced_head is not None
            else (previous.last_synced_head if previous else 0)
        )
        state = PeerSyncState(
            peer=peer,
            topic=topic,
            origin=origin,
            local_head=local_head,
            remote_head=remote_head,
            last_synced_head=synced,
            last_attempt_at_ms=now,
            last_success_at_ms=now,
            consecutive_failures=0,
            last_error="",
        )
        self._put(key, state, force=progressed)

    def failure(
        self,
        peer: str,
        error: str,
        topic: str = "",
        origin: NodeId | None = None,
        *,
        local_head: int = 0,
        remote_head: int = 0,
        last_synced_head: int | None = None,
        count: bool = True,
    ) -> PeerSyncState:
        """Note a failed attempt; returns the record (pending or unchanged).

        `count` False is for permanent refusals that are noted but not retried (a log of the
        local node): the failure count then stays where it is while the error repeats, so a
        repeated refusal writes nothing.
        """
        key = state_key(peer, topic, origin)
        previous = self.current(key)
        failures = previous.consecutive_failures if previous else 0
        if count or previous is None or previous.last_error != error:
            failures += 1
        state = PeerSyncState(
            peer=peer,
            topic=topic,
            origin=origin,
            local_head=local_head,
            remote_head=remote_head,
            last_synced_head=(
                last_synced_head
                if last_synced_head is not None
                else (previous.last_synced_head if previous else 0)
            ),
            last_attempt_at_ms=now_ms(),
            # A failure keeps the time of the last success, so an operator sees how long a
            # peer or log has been failing.
            last_success_at_ms=previous.last_success_at_ms if previous else 0,
            consecutive_failures=min(failures, 2**32 - 1),
            last_error=error,
        )
        self._put(key, state)
        return self.current(key) or state

    def take_pending(self) -> list[PeerSyncState]:
        """The records to write now; the caller calls `written` once they are committed."""
        pending = list(self._pending.values())
        self._pending.clear()
        return pending

    def written(self, states: Iterable[PeerSyncState]) -> None:
        """Mark records as durably written."""
        for state in states:
            self._written[state_key(state.peer, state.topic, state.origin)] = state

    def restore(self, states: Iterable[PeerSyncState]) -> None:
        """Put back records whose write failed, unless a newer one is pending."""
        for state in states:
            key = state_key(state.peer, state.topic, state.origin)
            self._pending.setdefault(key, replace(state))
