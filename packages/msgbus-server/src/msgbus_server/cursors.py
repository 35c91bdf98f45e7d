"""The durable cursor RPCs: CommitCursor, GetCursor, ListCursors and DeleteCursor.

A commit goes through the commit pipeline like a publish (it batches with publishes and is
durable before it is answered); reads go to the reader executor. Cursors are this daemon's own
state: the sync never reads or sends them. What a commit may store (at most the log's head,
at most `--max-cursors` cursors) is decided by the store (`msgbus_core.cursors`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

from msgbus_core.cursors import CommitCursorOp, Cursor, CursorKey, DeleteCursorOp
from msgbus_core.model import NodeId
from msgbus_core.validation import validate_name, validate_topic
from msgbus_proto import pb
from msgbus_server import convert
from msgbus_server.clock import now_ms
from msgbus_server.page_tokens import key_after, keyset_page
from msgbus_server.pipeline import CommitPipeline

T = TypeVar("T")

PAGE_DEFAULT: Final = 1_000
"""Cursors per ListCursors page for page_size 0."""
PAGE_MAX: Final = 10_000
"""The largest page_size honoured; a larger one is clamped."""

Read = Callable[[Callable[[], T]], Awaitable[T]]


def cursor_to_pb(cursor: Cursor) -> pb.Cursor:
    """A cursor as the contract's message."""
    return pb.Cursor(
        name=cursor.name,
        topic=cursor.topic,
        origin=convert.node_to_pb(cursor.origin),
        head_id=cursor.head_id,
        updated_at_ms=cursor.updated_at_ms,
    )


def cursor_log(node: NodeId, request: Any) -> tuple[str, str, NodeId]:
    """The (name, topic, origin) a cursor request names, validated; INVALID_ARGUMENT if not.

    `request` is a Commit-, Get- or DeleteCursorRequest with a topic. An absent or all-empty
    origin is the local node `node`.
    """
    name = validate_name("name", request.name)
    topic = validate_topic(request.topic)
    origin = convert.node_or_local(request.HasField("origin"), request.origin, node, "origin")
    return name, topic, origin


class CursorRpcs:
    """The four cursor handlers, given what they need of `MsgbusService`."""

    def __init__(
        self,
        *,
        node: NodeId,
        store: Any,
        pipeline: CommitPipeline,
        read: Read[Any],
        fail: Callable[[Any, Exception], Awaitable[NoReturn]],
        max_cursors: int,
        page_budget_bytes: int,
    ) -> None:
        """`page_budget_bytes` bounds a ListCursors response (below clients' receive limit)."""
        self._node = node
        self._store = store
        self._pipeline = pipeline
        self._read = read
        self._fail = fail
        self._max_cursors = max_cursors
        self._page_budget = page_budget_bytes

    async def commit(
        self, request: pb.CommitCursorRequest, context: Any
    ) -> pb.CommitCursorResponse:
        """Store the cursor once the commit is durable; FAILED_PRECONDITION above the head."""
        try:
            name, topic, origin = cursor_log(self._node, request)
            cursor = Cursor(name, topic, origin, request.head_id, now_ms())
            stored = await self._pipeline.submit(CommitCursorOp(cursor, self._max_cursors))
            assert isinstance(stored, Cursor)
        except Exception as error:
            await self._fail(context, error)
        return pb.CommitCursorResponse(cursor=cursor_to_pb(stored))

    async def get(self, request: pb.GetCursorRequest, context: Any) -> pb.GetCursorResponse:
        """The cursor, or `found` false."""
        try:
            name, topic, origin = cursor_log(self._node, request)
            cursor = await self._read(
                functools.partial(self._store.get_cursor, name, topic, origin)
            )
        except Exception as error:
            await self._fail(context, error)
        if cursor is None:
            return pb.GetCursorResponse(found=False)
        return pb.GetCursorResponse(cursor=cursor_to_pb(cursor), found=True)

    async def list(self, request: pb.ListCursorsRequest, context: Any) -> pb.ListCursorsResponse:
        """One keyset page of cursors by name, topic and origin; of one name when given.

        At most page_size cursors and about the page budget of bytes: only an empty
        next_page_token ends the listing.
        """
        try:
            name = validate_name("name", request.name) if request.name else None
            after: CursorKey | None = None
            if request.page_token:
                first, topic, origin_key = key_after(request.page_token, 3)
                after = (first, topic, origin_key)
            limit = min(request.page_size or PAGE_DEFAULT, PAGE_MAX)
            # One more than the page, to tell whether another page follows.
            read = functools.partial(self._store.list_cursors, name, after, limit + 1)
            cursors: list[Cursor] = await self._read(read)
        except Exception as error:
            await self._fail(context, error)
        # Names of 255 bytes make a cursor about 560 bytes: 10,000 of them would not fit a
        # client's 4 MiB receive limit, so a page also ends at the byte budget.
        page, token = keyset_page(
            cursors, limit, cursor_to_pb, lambda cursor: cursor.key, self._page_budget
        )
        return pb.ListCursorsResponse(cursors=page, next_page_token=token)

    async def delete(
        self, request: pb.DeleteCursorRequest, context: Any
    ) -> pb.DeleteCursorResponse:
        """Delete one cursor, or every cursor of the name when topic is empty."""
        try:
            if request.topic:
                name, topic, origin = cursor_log(self._node, request)
                op = DeleteCursorOp(name, topic, origin)
            else:
                op = DeleteCursorOp(validate_name("name", request.name), None, self._node)
            deleted = await self._pipeline.submit(op)
            assert isinstance(deleted, int)
        except Exception as error:
            await self._fail(context, error)
        return pb.DeleteCursorResponse(deleted_count=deleted)


__all__ = ["PAGE_DEFAULT", "PAGE_MAX", "CursorRpcs", "cursor_log", "cursor_to_pb"]
