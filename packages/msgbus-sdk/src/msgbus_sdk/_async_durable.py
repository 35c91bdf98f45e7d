"""Durable subscriptions: resume after a stored cursor and commit what was processed.

The blocking one is generated from the asyncio one by ``tools/unasync.py``: edit the asyncio
module and regenerate. What may be committed, and when, is ``_cursors.DurableCommits``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ._async_subscription import AsyncSubscription
from ._convert import NodeLike
from ._cursors import CommitPolicy, DurableCommits
from ._errors import TransientError
from ._generated.msgbus.v1 import MessageEnvelope, NodeId

if TYPE_CHECKING:
    from ._async_client import AsyncMsgbusClient

__all__ = ["AsyncDurableSubscription"]

_log = logging.getLogger("msgbus_sdk")


class AsyncDurableSubscription:
    """A subscription that resumes after the durable cursor of its name and commits it.

    Returned by :meth:`AsyncMsgbusClient.subscribe` with ``durable=NAME``. Before its first
    message it reads the cursor (NAME, topic, origin) from the daemon and starts after it
    (``from_head_id`` applies only while no cursor was committed), then delivers as a plain
    subscription does, reconnecting across restarts.

    Committing says "every message of this log up to here is processed": a consumer restarted
    with the same name sees every message it did not commit at least once, and none it did.
    Without ``auto_commit`` the application commits: ``await subscription.commit(message)``
    (or ``commit()`` for the last message delivered). With a :class:`CommitPolicy` the
    subscription commits by itself: a message counts as processed once the next one is asked
    for, or when the ``async with`` block is left without an error; processed heads are
    committed by count and by time, and when the subscription is closed. A commit that fails
    with a transient error is retried at the next one (auto-commit) or raised (``commit``).
    """

    def __init__(
        self,
        client: AsyncMsgbusClient,
        name: str,
        topic: str,
        origin: NodeLike | None,
        from_head_id: int,
        open_subscription: Callable[[int], AsyncSubscription] | None,
        auto_commit: CommitPolicy | None,
        start: Callable[[DurableCommits], Awaitable[AsyncSubscription]] | None = None,
    ) -> None:
        """Used by the client's ``subscribe``; ``open_subscription(head)`` follows the log.

        A pattern subscription (``subscribe_pattern``) passes ``start`` instead: it loads the
        name's cursors into the commits (``resumed``) and opens the subscription after them.
        """
        self._start_with = start
        self._client = client
        self._cursors = DurableCommits(name, auto_commit)
        self._topic = topic
        self._origin = origin
        self._from_head_id = from_head_id
        self._open_subscription = open_subscription
        self._inner: AsyncSubscription | None = None
        self._last: MessageEnvelope | None = None
        """The message delivered last: processed once the next one is asked for."""
        self._log_origin: NodeId | None = None
        """The followed log's origin as the daemon names it, once known."""
        self._closed = False

    @property
    def name(self) -> str:
        """The durable name: the consumer the cursors belong to."""
        return self._cursors.name

    @property
    def committed_head_id(self) -> int:
        """The head committed last (or resumed after); 0 before any."""
        return self._cursors.committed_head(self._topic, self._log_origin)

    @property
    def next_head_id(self) -> int:
        """The head_id the subscription will deliver next (0 until it read its cursor)."""
        return self._inner.next_head_id if self._inner is not None else 0

    @property
    def positions(self) -> dict[tuple[str, str], int]:
        """A durable pattern subscription's last delivered head per (topic, origin key)."""
        return self._inner.positions if self._inner is not None else {}

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MessageEnvelope:
        if self._closed:
            raise StopAsyncIteration
        inner = self._inner if self._inner is not None else await self._start()
        last, self._last = self._last, None
        if last is not None and self._cursors.policy is not None:
            self._cursors.processed(last)
            if self._cursors.due():
                await self._flush(retry_later=True)
        message = await inner.__anext__()
        self._last, self._log_origin = message, message.origin
        return message

    async def _start(self) -> AsyncSubscription:
        if self._start_with is not None:
            self._inner = await self._start_with(self._cursors)
            return self._inner
        stored = await self._client.get_cursor(self.name, self._topic, self._origin)
        start = self._from_head_id
        if stored is not None:
            self._cursors.resumed(stored.topic, stored.origin, stored.head_id)
            self._log_origin = stored.origin
            start = stored.head_id + 1
        assert self._open_subscription is not None, "a single-log durable subscription"
        self._inner = self._open_subscription(start)
        return self._inner

    async def commit(self, message: MessageEnvelope | None = None) -> None:
        """Commit ``message`` (default: the one delivered last) and all processed before it.

        The commit is durable in the daemon when this returns. A head at or below the one
        committed already is not sent again.
        """
        target = message if message is not None else self._last
        if target is not None:
            self._cursors.processed(target)
        await self._flush(retry_later=False)

    async def _flush(self, *, retry_later: bool) -> None:
        for pending in self._cursors.pending():
            try:
                await self._client.commit_cursor(
                    self.name, pending.topic, pending.head_id, pending.origin
                )
            except TransientError as error:
                if not retry_later:
                    raise
                _log.warning(
                    "durable subscription %s: committing head %d of %s failed (%s); "
                    "retrying at the next commit",
                    self.name,
                    pending.head_id,
                    pending.topic,
                    error,
                )
                return
            self._cursors.done(pending)

    async def aclose(self) -> None:
        """Commit what was processed (with auto-commit), then stop the subscription."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._cursors.policy is not None and not self._client.closed:
                await self._flush(retry_later=True)
        finally:
            if self._inner is not None:
                await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self._last is not None and self._cursors.policy is not None:
            # Leaving the block without an error: the last message was processed too.
            self._cursors.processed(self._last)
        await self.aclose()
