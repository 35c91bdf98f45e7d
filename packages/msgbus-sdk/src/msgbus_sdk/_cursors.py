"""Durable cursors in the SDK: the commit policy and the per-log commit rule, for both clients.

A durable consumer (``subscribe(topic, durable="billing")``) keeps one cursor per log it reads,
``(name, topic, origin) -> head_id``, in the daemon. :class:`DurableCommits` is the one place
that decides what may be committed, so every durable subscription (one log, or a pattern over
many logs) commits by the same rule:

- only a head the application has processed is committed (at-least-once: a restarted consumer
  sees again what it had not finished, never what it committed);
- the committed head of a log only moves up: a commit at or below it is not sent;
- with a :class:`CommitPolicy`, processed heads are committed every ``every`` messages and/or
  once ``interval_s`` passed since the last commit; without one, only when asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from msgbus_proto import pb

from ._convert import node_id, node_key
from ._errors import ConfigurationError
from ._generated.msgbus.v1 import Cursor, MessageEnvelope, NodeId

__all__ = ["CommitPolicy", "DurableCommits", "PendingCommit", "cursor"]


@dataclass(frozen=True, slots=True)
class CommitPolicy:
    """When a durable subscription commits by itself (auto-commit).

    A message counts as processed once the application asks for the next one (or leaves the
    subscription's ``with`` block without an error). Processed heads are then committed when
    ``every`` of them have gathered since the last commit, or when ``interval_s`` passed since
    the last commit, whichever comes first; at least one of the two must be set. The time is
    checked as messages are asked for, so an idle subscription commits at its next message or
    when it is closed.

    Attributes:
        every: commit after this many processed messages (1 commits each one).
        interval_s: commit when this many seconds passed since the last commit.
    """

    every: int | None = None
    interval_s: float | None = None

    def __post_init__(self) -> None:
        if self.every is None and self.interval_s is None:
            raise ConfigurationError("CommitPolicy needs every, interval_s or both")
        if self.every is not None and self.every < 1:
            raise ConfigurationError(f"CommitPolicy.every must be at least 1, got {self.every}")
        if self.interval_s is not None and not self.interval_s > 0:
            raise ConfigurationError(
                f"CommitPolicy.interval_s must be above 0, got {self.interval_s}"
            )


@dataclass(frozen=True, slots=True)
class PendingCommit:
    """A processed head of one log that is not committed yet."""

    topic: str
    origin: NodeId | None
    head_id: int


class DurableCommits:
    """The commit state of one durable name over the logs it reads (one cursor per log)."""

    def __init__(
        self,
        name: str,
        policy: CommitPolicy | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._committed: dict[tuple[str, str], int] = {}
        """The highest head committed (or resumed from) per (topic, origin key)."""
        self._processed: dict[tuple[str, str], PendingCommit] = {}
        """The highest head processed and not committed, per log."""
        self._since_commit = 0
        self._last_commit = clock()

    def resumed(self, topic: str, origin: NodeId | None, head_id: int) -> None:
        """The stored cursor a subscription resumes after: heads up to it count as committed."""
        key = (topic, node_key(origin))
        self._committed[key] = max(self._committed.get(key, 0), head_id)

    def committed_head(self, topic: str, origin: NodeId | None) -> int:
        """The highest head committed for a log (0: none)."""
        return self._committed.get((topic, node_key(origin)), 0)

    def processed(self, message: MessageEnvelope) -> None:
        """The application finished ``message``: its head (and every one before it) may commit."""
        key = (message.topic, node_key(message.origin))
        if message.head_id <= self._committed.get(key, 0):
            return
        held = self._processed.get(key)
        if held is not None and message.head_id <= held.head_id:
            return
        self._since_commit += 1
        self._processed[key] = PendingCommit(message.topic, message.origin, message.head_id)

    def due(self) -> bool:
        """True when the policy says the processed heads should be committed now."""
        policy = self.policy
        if policy is None or not self._processed:
            return False
        if policy.every is not None and self._since_commit >= policy.every:
            return True
        return policy.interval_s is not None and self._clock() - self._last_commit >= (
            policy.interval_s
        )

    def pending(self) -> list[PendingCommit]:
        """Every processed head not committed yet, one per log."""
        return list(self._processed.values())

    def done(self, commit: PendingCommit) -> None:
        """``commit`` is durable in the daemon."""
        key = (commit.topic, node_key(commit.origin))
        self._committed[key] = max(self._committed.get(key, 0), commit.head_id)
        held = self._processed.get(key)
        if held is not None and held.head_id <= commit.head_id:
            del self._processed[key]
        if not self._processed:
            self._since_commit = 0
        self._last_commit = self._clock()


def cursor(p: pb.Cursor) -> Cursor:
    """Convert a decoded Cursor."""
    origin = node_id(p.origin) if p.HasField("origin") else None
    return Cursor(
        name=p.name, topic=p.topic, origin=origin, head_id=p.head_id, updated_at_ms=p.updated_at_ms
    )
