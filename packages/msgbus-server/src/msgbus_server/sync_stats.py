"""What one peer's sync worker counts: passes, failures, refusals, pulls, and how far behind it is.

The worker notes here what its passes find and do (`sync_peer.PeerWorker.stats`); the status
snapshot (`daemon_status`) reads it for the metrics and the status page. Plain values on the event
loop thread, where the worker runs, so sync imports nothing of the metrics. Unlike the sync state
book, nothing here is persisted: the counters start at 0 with the daemon.

Two lags, in messages:

- `lag`: what the peer has listed and this node has not stored yet, summed over the peer's logs
  (its head minus the local head). It is noted for every log a pass looks at, and updated as
  batches commit, so a log being pulled shows its remaining lag while it transfers; a log that
  is found or brought in sync drops out.
- `unsynced`: how much of this node's own logs the peer has not listed as held (the local head
  minus the peer's); `daemon_status` works it out from `own_held`, what the peer's last listings
  said of those logs, and the local heads. It tells how far behind a peer that pulls from this
  node is, also when it is down: its last listing stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from msgbus_server.clock import now_ms
from msgbus_server.sync_state import LogId

__all__ = ["PeerStats"]


@dataclass(slots=True)
class PeerStats:
    """The counters and lag of one peer (see the module docstring)."""

    passes: int = 0
    """Sync passes that completed."""
    failed_passes: int = 0
    """Sync passes that failed (the peer is down, or refused us)."""
    pass_seconds: float = 0.0
    """The time all passes took, completed and failed."""
    last_pass_seconds: float = 0.0
    """How long the last pass took."""
    last_success_at_ms: int = 0
    """When the last pass completed (0: none yet in this run)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failures by reason (`sync_fetch.FailureKind` name, lower case): of whole passes and of
    single logs. A refusal repeated unchanged on every pass counts once."""
    refused: int = 0
    """Transfers refused by an accept rule: a conflict, a gap, a malformed or suppressed delete,
    a payload above the limit, a log of this node, a history that diverged. A log refused again
    on a retry counts again."""
    pulled_messages: int = 0
    """Messages pulled from the peer and stored (inserted, or newly deleted)."""
    pulled_bytes: int = 0
    """Their payload bytes."""
    failing: dict[LogId, str] = field(default_factory=dict)
    """The logs that failed with this peer and have not synced since, with their last error."""
    own_held: dict[str, int] | None = None
    """The head the peer listed of each of this node's own logs (by topic); None before the
    peer's first listing."""
    _behind: dict[LogId, int] = field(default_factory=dict)
    _lag: int = 0

    @property
    def lag(self) -> int:
        """Messages the peer has listed that this node has not stored yet (see the module)."""
        return self._lag

    def note_heads(self, log: LogId, local_head: int, remote_head: int) -> None:
        """A log stands at `local_head` here and at `remote_head` on the peer."""
        behind = max(remote_head - local_head, 0)
        before = self._behind.pop(log, 0) if not behind else self._behind.get(log, 0)
        if behind:
            self._behind[log] = behind
        self._lag += behind - before

    def note_own_heads(self, heads: dict[str, int]) -> None:
        """One listing page's heads of this node's own logs (`{}` when it had none)."""
        if self.own_held is None:
            self.own_held = {}
        for topic, head in heads.items():
            if head > self.own_held.get(topic, 0):
                self.own_held[topic] = head

    def pass_done(self, seconds: float, failure: str | None = None) -> None:
        """A pass ended after `seconds`; `failure` is its reason when it failed."""
        self.pass_seconds += seconds
        self.last_pass_seconds = seconds
        if failure is None:
            self.passes += 1
            self.last_success_at_ms = now_ms()
        else:
            self.failed_passes += 1
            self.fail(failure)

    def fail(self, reason: str) -> None:
        """Count one failure for `reason`."""
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def log_failed(self, log: LogId, error: str) -> None:
        """A log failed with this peer."""
        self.failing[log] = error

    def log_in_sync(self, log: LogId, local_head: int, remote_head: int) -> None:
        """A log is in sync with the peer (its failure, if any, is over)."""
        self.failing.pop(log, None)
        self.note_heads(log, local_head, remote_head)
