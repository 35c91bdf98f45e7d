"""The sync state book: one peer's sync state, what was persisted and what to persist next.

Sync state is advisory (it is served by ListPeerSyncStates and never drives replication), but a
durable write costs an fsync. So the book keeps the last written record of the peer and of each
of its logs in memory, seeded from the store at startup, and emits a new record only when
something an operator cares about changed: a head, the last synced head, the failure count or
the error. An idle pass, where every log is already in sync, writes nothing. The timestamps
therefore say when the state last changed, not when the peer was last polled.

A log that is simply in sync needs no record at all: when a pass finds a log's local head at or
above the peer's and stored nothing from this peer beyond the `last_synced_head` already
recorded, nothing is written for it, whether or not it has a record. So a log has a record only
once data was pulled from this peer (the record says up to where, and when it last arrived) or
once it failed with this peer (the record is rewritten when the failure changes or ends). The
heads of a record are those of its last write. The peer-level record is kept as before.

The book also keeps what this run of the daemon decided about the peer's logs but never
persists: when a failing log may be tried again, and which errors were already announced in the
log output (each is logged when it starts or changes, not on every retry).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from msgbus_core import MsgbusError, NodeId, PeerSyncState, RecordSyncStateOp
from msgbus_server.clock import now_ms

if TYPE_CHECKING:
    from msgbus_server.pipeline import CommitPipeline

log = logging.getLogger("msgbus_server.sync")

__all__ = [
    "PULL",
    "PUSH",
    "PUSHED",
    "Heads",
    "LogId",
    "StateKey",
    "SyncStateBook",
    "direction_of",
    "flush_book",
    "now_ms",
    "push_record_peer",
    "pushed_record_peer",
    "state_key",
]

PULL = "pull"
PUSH = "push"
PUSHED = "pushed"
"""The directions of `PeerSyncState.direction` on the wire: this daemon pulls from the peer,
pushes to the upstream, or the peer (a device) pushes to this daemon."""

_DIRECTION_MARK = "+"
"""Sync state is stored without a direction column (no schema change): the records of pushes
are stored under `push+ENDPOINT` (this daemon pushing to an --upstream) and
`pushed+tenant/bl/device` (a device pushing here), pull records under the plain endpoint. No
endpoint holds a `+` (`peers._HOST_PORT`), so the three never collide, and the pull and push
records of one upstream are kept apart."""

StateKey = tuple[str, str, str]
"""(peer endpoint, topic, origin key); topic and origin key are "" for the peer-level record."""

LogId = tuple[str, NodeId]
"""(topic, origin): one log."""

_MAX_FAILURES = 2**32 - 1
"""consecutive_failures is a uint32 on the wire."""


def push_record_peer(endpoint: str) -> str:
    """The stored `peer` of this daemon's push records for the upstream `endpoint`."""
    return f"{PUSH}{_DIRECTION_MARK}{endpoint}"


def pushed_record_peer(pusher: NodeId) -> str:
    """The stored `peer` of the records of what the device `pusher` pushed to this daemon."""
    return f"{PUSHED}{_DIRECTION_MARK}{pusher.key}"


def direction_of(stored_peer: str) -> tuple[str, str]:
    """(direction, peer as shown) of a stored record's `peer`; plain endpoints are pulls."""
    for direction in (PUSHED, PUSH):
        prefix = f"{direction}{_DIRECTION_MARK}"
        if stored_peer.startswith(prefix):
            return direction, stored_peer[len(prefix) :]
    return PULL, stored_peer


def state_key(peer: str, topic: str = "", origin: NodeId | None = None) -> StateKey:
    """The book key of a peer-level (no topic, no origin) or log-level record."""
    return (peer, topic, origin.key if origin is not None else "")


@dataclass(frozen=True, slots=True)
class Heads:
    """A log's heads as one attempt saw them."""

    local: int = 0
    remote: int = 0
    synced: int | None = None
    """The last head stored from this peer; None keeps the one already recorded."""


_NO_HEADS = Heads()


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
    """One peer's sync states: the last written ones, and the records still to be written.

    `backoff(failures)` gives the seconds a log waits after its n-th consecutive counted
    failure before `retry_due` lets it be tried again; `clock` is the monotonic clock it
    counts on.
    """

    def __init__(
        self,
        peer: str,
        seed: Iterable[PeerSyncState] = (),
        *,
        backoff: Callable[[int], float] = lambda failures: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peer = peer
        self._backoff = backoff
        self._clock = clock
        self._written: dict[StateKey, PeerSyncState] = {}
        self._pending: dict[StateKey, PeerSyncState] = {}
        self._retry_at: dict[StateKey, float] = {}
        self._announced: dict[StateKey, str] = {}
        self._invalid_heads: set[str] = set()
        for state in seed:
            self._written[state_key(state.peer, state.topic, state.origin)] = state

    def key(self, log: LogId | None = None) -> StateKey:
        """The key of the peer-level record (`log` None) or of one log's record."""
        if log is None:
            return state_key(self.peer)
        return state_key(self.peer, log[0], log[1])

    def current(self, key: StateKey) -> PeerSyncState | None:
        """The newest record for `key`: pending if there is one, else the last written."""
        return self._pending.get(key) or self._written.get(key)

    # -- attempts -------------------------------------------------------------------------------

    def success(
        self, log: LogId | None = None, heads: Heads = _NO_HEADS, *, progressed: bool = False
    ) -> None:
        """Note a successful attempt (or an in-sync observation) of the peer or of a log.

        `progressed` forces a write even when nothing else changed, so that
        `last_success_at_ms` tells when data last arrived. A success ends any backoff. A log
        that is simply in sync (see the module docstring) records nothing.
        """
        key = self.key(log)
        self._retry_at.pop(key, None)
        if log is not None and self._simply_in_sync(key, heads):
            return
        self._put(key, self._record(log, heads, 0, "", None), force=progressed)

    def _simply_in_sync(self, key: StateKey, heads: Heads) -> bool:
        """True for a log in sync whose record (if any) has no failure and no newer pull."""
        if heads.local < heads.remote:
            return False
        previous = self.current(key)
        if previous is None:
            return not heads.synced
        if previous.consecutive_failures or previous.last_error:
            return False  # a recovery: the failure must not stay on record
        return heads.synced is None or heads.synced <= previous.last_synced_head

    def failure(
        self, error: str, log: LogId | None = None, heads: Heads = _NO_HEADS, *, count: bool = True
    ) -> PeerSyncState:
        """Note a failed attempt; returns the record (pending or unchanged).

        A counted failure of a log holds it back (see `retry_due`) for `backoff(failures)`.
        `count` False is for permanent refusals that are noted but not retried (a log of the
        local node): the failure count then stays where it is while the error repeats, so a
        repeated refusal writes nothing.
        """
        key = self.key(log)
        previous = self.current(key)
        failures = previous.consecutive_failures if previous else 0
        if count or previous is None or previous.last_error != error:
            failures = min(failures + 1, _MAX_FAILURES)
        # A failure keeps the time of the last success, so an operator sees how long a peer or
        # log has been failing.
        success_at = previous.last_success_at_ms if previous else 0
        state = self._record(log, heads, failures, error, success_at)
        self._put(key, state)
        if count and log is not None:
            self._retry_at[key] = self._clock() + self._backoff(failures)
        return self.current(key) or state

    def retry_due(self, log: LogId) -> bool:
        """False while a log is backing off after a counted failure."""
        return self._clock() >= self._retry_at.get(self.key(log), 0.0)

    def _record(
        self, log: LogId | None, heads: Heads, failures: int, error: str, success_at: int | None
    ) -> PeerSyncState:
        """A record of an attempt made now; `success_at` None means it succeeded."""
        key = self.key(log)
        attempt_at = now_ms()
        previous = self.current(key)
        synced = heads.synced
        if synced is None:
            synced = previous.last_synced_head if previous else 0
        return PeerSyncState(
            peer=self.peer,
            topic=key[1],
            origin=log[1] if log is not None else None,
            local_head=heads.local,
            remote_head=heads.remote,
            last_synced_head=synced,
            last_attempt_at_ms=attempt_at,
            last_success_at_ms=attempt_at if success_at is None else success_at,
            consecutive_failures=failures,
            last_error=error,
        )

    def _put(self, key: StateKey, state: PeerSyncState, *, force: bool = False) -> None:
        previous = self.current(key)
        if not force and previous is not None and _substance(previous) == _substance(state):
            return
        self._pending[key] = state

    # -- what was announced in the log output ---------------------------------------------------

    def announce_failure(self, key: StateKey, error: str) -> bool:
        """Remember `error` as announced for `key`; True when it is new (so log it)."""
        if self._announced.get(key) == error:
            return False
        self._announced[key] = error
        return True

    def announce_recovery(self, key: StateKey) -> bool:
        """Forget the error announced for `key`; True when there was one (so log the recovery)."""
        return self._announced.pop(key, None) is not None

    def announce_invalid_head(self, error: str) -> bool:
        """True the first time the peer lists a head this invalid (no record can name it)."""
        if error in self._invalid_heads:
            return False
        self._invalid_heads.add(error)
        return True

    # -- persisting -----------------------------------------------------------------------------

    @property
    def has_pending(self) -> bool:
        """True while some record waits to be written."""
        return bool(self._pending)

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


async def flush_book(pipeline: CommitPipeline, book: SyncStateBook, who: str) -> None:
    """Write the book's changed records in one transaction; `who` names them in warnings.

    Sync state is advisory: a failed write is logged and its records are kept for the next.
    """
    states = book.take_pending()
    if not states:
        return
    try:
        outcomes = await pipeline.submit_many([RecordSyncStateOp(state) for state in states])
    except MsgbusError as error:
        log.warning("%s: cannot record sync state: %s", who, error)
        book.restore(states)
        return
    done = [s for s, o in zip(states, outcomes, strict=True) if not isinstance(o, Exception)]
    book.written(done)
    failed = [s for s, o in zip(states, outcomes, strict=True) if isinstance(o, Exception)]
    if failed:
        log.warning("%s: %d sync state records not written", who, len(failed))
        book.restore(failed)
