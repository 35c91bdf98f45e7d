"""Durable named cursors: `(name, topic, origin) -> head_id`, the last head a consumer processed.

A cursor is local state of one daemon, never a log: it is not replicated and sync never sees it.
It is written through the store's `write` (the daemon's commit pipeline), so a commit is durable
before it is answered and batches with the publishes of the same transaction. The rules of a
commit (at most the log's head, the daemon's cap on how many cursors it keeps) are written once
here, in `CursorWriter`, which every store's `BatchWriter` inherits.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Final

from msgbus_core.errors import FailedPreconditionError, ResourceExhaustedError
from msgbus_core.model import NodeId
from msgbus_core.validation import validate_stored_int

DEFAULT_MAX_CURSORS: Final = 100_000
"""How many cursors a daemon keeps unless `--max-cursors` says otherwise."""

CursorKey = tuple[str, str, str]
"""(name, topic, origin key): how cursors are keyed and ordered (by code point)."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """One durable cursor: consumer `name` processed `topic`/`origin` up to `head_id`."""

    name: str
    topic: str
    origin: NodeId
    head_id: int
    """The last head processed; the consumer resumes at head_id + 1."""
    updated_at_ms: int
    """When it was last committed, in ms since the Unix epoch."""

    @property
    def key(self) -> CursorKey:
        """The cursor's identity and its place in ListCursors order."""
        return (self.name, self.topic, self.origin.key)


@dataclass(frozen=True, slots=True)
class CommitCursorOp:
    """Store `cursor`, replacing the one with the same key. Result: the stored `Cursor`.

    Refused with FAILED_PRECONDITION when `cursor.head_id` is above the log's head, and with
    RESOURCE_EXHAUSTED when the cursor is new and the store already keeps `max_cursors`.
    """

    cursor: Cursor
    max_cursors: int = DEFAULT_MAX_CURSORS


@dataclass(frozen=True, slots=True)
class DeleteCursorOp:
    """Delete the cursor (name, topic, origin), or every cursor of `name` when `topic` is None.

    Result: `int`, how many cursors were deleted.
    """

    name: str
    topic: str | None
    origin: NodeId


def page_of_cursors(
    cursors: list[Cursor], name: str | None, after: CursorKey | None, limit: int
) -> list[Cursor]:
    """`cursors` in ListCursors order, of `name` (any when None), past `after`, at most `limit`."""
    ordered = sorted((c for c in cursors if name is None or c.name == name), key=lambda c: c.key)
    if after is not None:
        ordered = [c for c in ordered if c.key > after]
    return ordered[: max(limit, 0)]


class CursorWriter(abc.ABC):
    """The cursor side of a store's write transaction; the rules here, the rows in the store."""

    def _commit_cursor(self, op: CommitCursorOp) -> Cursor:
        """Check a commit against the log's head and the cap, then store it."""
        cursor = op.cursor
        validate_stored_int("head_id", cursor.head_id)
        validate_stored_int("updated_at_ms", cursor.updated_at_ms)
        head = self._head(cursor.topic, cursor.origin)
        if cursor.head_id > head:
            raise FailedPreconditionError(
                f"head_id {cursor.head_id} is above the head {head} of topic {cursor.topic!r} "
                f"of origin {cursor.origin.key}: commit only heads that were delivered",
                field="head_id",
            )
        if not self._cursor_exists(cursor.key) and self._cursor_count() >= op.max_cursors:
            raise ResourceExhaustedError(
                f"this daemon keeps at most {op.max_cursors} cursors (--max-cursors) and has "
                "that many: delete cursors no consumer uses (DeleteCursor) or raise the limit",
                field="name",
            )
        self._store_cursor(cursor)
        return cursor

    @abc.abstractmethod
    def _head(self, topic: str, origin: NodeId) -> int:
        """The writer's current head of a log (0 when it does not exist)."""

    @abc.abstractmethod
    def _cursor_exists(self, key: CursorKey) -> bool:
        """True when the writer's transaction sees a cursor with this key."""

    @abc.abstractmethod
    def _cursor_count(self) -> int:
        """How many cursors the store keeps, in the writer's transaction."""

    @abc.abstractmethod
    def _store_cursor(self, cursor: Cursor) -> None:
        """Insert or replace the cursor with `cursor.key`."""

    @abc.abstractmethod
    def _delete_cursors(self, op: DeleteCursorOp) -> int:
        """Delete what `op` names; how many cursors there were."""


__all__ = [
    "DEFAULT_MAX_CURSORS",
    "CommitCursorOp",
    "Cursor",
    "CursorKey",
    "CursorWriter",
    "DeleteCursorOp",
    "page_of_cursors",
]
