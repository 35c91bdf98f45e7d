"""`HeadChanges`: which logs' heads changed, in order, so a peer can ask "what changed since?".

Every commit that moves a log's head notes the log here (the commit pipeline does, in commit
order). A change gets the next sequence number; a log keeps only its latest. `since(seq)` then
lists the logs changed after `seq` in change order, at O(log n + the page), which is what lets a
peer's idle sync pass cost O(changed logs) instead of O(all logs).

The index lives in memory, seeded with every log at startup, and names itself with a random
epoch: a cursor from an earlier run of the daemon cannot be honoured (its sequence numbers mean
nothing now), so `cursor_after` refuses it and the peer lists everything once more. Memory is one
entry per log plus a journal of at most about twice that, compacted as it grows.
"""

from __future__ import annotations

import base64
import bisect
import secrets
from collections.abc import Iterable
from typing import Final

from msgbus_core.errors import FailedPreconditionError, InvalidArgumentError
from msgbus_core.model import NodeId

__all__ = ["HeadChanges"]

LogKey = tuple[str, NodeId]

_JOURNAL_SLACK: Final = 1024
"""Stale journal entries tolerated beyond one per log before the journal is compacted."""


class HeadChanges:
    """The change sequence of every log's head; used on the event loop only."""

    def __init__(self, logs: Iterable[LogKey] = ()) -> None:
        """An index in which every log of `logs` (the store's, at startup) has changed once."""
        self.epoch = secrets.token_hex(8)
        """Names this run of the daemon in every cursor."""
        self._seq = 0
        self._latest: dict[LogKey, int] = {}
        # (seq, log) in ascending seq; an entry is stale once its log changed again.
        self._journal: list[tuple[int, LogKey]] = []
        for key in logs:
            self.note(*key)

    @property
    def seq(self) -> int:
        """The sequence number of the latest change (0 before any)."""
        return self._seq

    def note(self, topic: str, origin: NodeId) -> None:
        """The head of the log (topic, origin) changed."""
        self._seq += 1
        key = (topic, origin)
        self._latest[key] = self._seq
        self._journal.append((self._seq, key))
        if len(self._journal) > 2 * len(self._latest) + _JOURNAL_SLACK:
            self._journal = [(s, k) for s, k in self._journal if self._latest.get(k) == s]

    def since(self, seq: int, limit: int) -> list[tuple[int, LogKey]]:
        """Up to `limit` logs whose latest change comes after `seq`, in change order."""
        start = bisect.bisect_right(self._journal, seq, key=lambda entry: entry[0])
        changed: list[tuple[int, LogKey]] = []
        latest = self._latest
        for index in range(start, len(self._journal)):
            entry = self._journal[index]
            if latest.get(entry[1]) == entry[0]:
                changed.append(entry)
                if len(changed) >= limit:
                    break
        return changed

    def recent(self, seq: int, limit: int) -> list[LogKey]:
        """Up to `limit` logs whose latest change comes after `seq`, the latest first.

        For the status survey's "most active" logs; it walks the journal back from its end.
        """
        latest = self._latest
        found: list[LogKey] = []
        for index in range(len(self._journal) - 1, -1, -1):
            entry_seq, key = self._journal[index]
            if entry_seq <= seq or len(found) >= limit:
                break
            if latest.get(key) == entry_seq:
                found.append(key)
        return found

    def cursor(self, seq: int) -> str:
        """The opaque cursor that stands for "everything up to change `seq` of this run"."""
        return base64.urlsafe_b64encode(f"{self.epoch}:{seq}".encode()).decode()

    def cursor_after(self, cursor: str) -> int:
        """The sequence number a cursor of this run stands for.

        Raises:
            InvalidArgumentError: the cursor is malformed (naming changed_since).
            FailedPreconditionError: the cursor is from another run of the daemon.
        """
        try:
            epoch, _, number = (
                base64.urlsafe_b64decode(cursor.encode("ascii")).decode().partition(":")
            )
            seq = int(number)
        except (ValueError, UnicodeError):
            raise InvalidArgumentError(
                "changed_since is malformed: pass a cursor from a ListHeads response unchanged",
                field="changed_since",
            ) from None
        if epoch != self.epoch or not 0 <= seq <= self._seq:
            raise FailedPreconditionError(
                "changed_since is a cursor from an earlier run of this daemon: list every head "
                "again (without changed_since) and use the cursor of that listing",
                field="changed_since",
            )
        return seq
