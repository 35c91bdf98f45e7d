"""The asyncio subscription: replay then live, resumed across daemon restarts.

The blocking :class:`Subscription` is generated from this module by ``tools/unasync.py``;
edit this one and regenerate. The resume point and the duplicate/gap guard are
``_subscription.Cursor``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

import tenacity

from . import _async_transport as transport
from ._config import ReconnectPolicy
from ._convert import subscribe_envelopes
from ._errors import MsgbusError, translate_rpc_error
from ._generated.msgbus.v1 import MessageEnvelope
from ._subscription import (
    Cursor,
    LogCursors,
    LogKey,
    StreamClosed,
    StreamEnded,
    retry_while_open,
)

__all__ = ["AsyncSubscription"]


class AsyncSubscription:
    """An async iterator over one log: the backlog from ``from_head_id``, then live messages.

    Returned by :meth:`AsyncMsgbusClient.subscribe`. Iterate it with ``async for``; it ends only
    when closed (``aclose()``, ``async with``, or closing the client). With reconnect enabled,
    a broken stream (daemon restart, network error) is reopened at the last delivered
    head_id + 1 after a backoff, on the client's next endpoint when the one in use is gone;
    other errors, or running out of attempts, raise a :class:`MsgbusError`.

    When retention trimmed heads before the subscription reached them, the daemon says so and
    the subscription's ``on_trim`` policy handles the :class:`Trim` (see
    :meth:`AsyncMsgbusClient.subscribe`); delivery goes on at the log's new first head.

    A pattern subscription (:meth:`AsyncMsgbusClient.subscribe_pattern`) follows many logs
    the same way, with one resume point per log (``positions``).
    """

    def __init__(
        self,
        open_stream: Callable[[], tuple[int, transport.SubscribeCall]],
        cursor: Cursor | LogCursors,
        policy: ReconnectPolicy | None,
        is_client_closed: Callable[[], bool],
        fail_over: Callable[[int, MsgbusError], Awaitable[bool]],
    ) -> None:
        """Used by the client's ``subscribe``; ``policy`` ``None`` means no reconnect.

        ``open_stream()`` opens Subscribe where ``cursor`` stands, on the client's endpoint in
        use, and returns that endpoint's index with the call; ``fail_over(index, error)``
        moves the client off an endpoint a stream broke on.
        """
        self._open_stream = open_stream
        self._fail_over = fail_over
        self._cursor = cursor
        self._is_client_closed = is_client_closed
        self._call: transport.SubscribeCall | None = None
        self._endpoint = 0
        self._closed = False
        self._opened_once = False
        self._retrying: tenacity.AsyncRetrying | None = None
        if policy is not None:
            self._retrying = tenacity.AsyncRetrying(
                wait=policy.wait_strategy(),
                stop=policy.stop_strategy(),
                retry=retry_while_open(self._is_closed),
                reraise=True,
            )

    @property
    def next_head_id(self) -> int:
        """The head_id the subscription will deliver next (its resume point).

        Raises:
            AttributeError: a pattern subscription, which resumes per log (``positions``).
        """
        cursor = self._cursor
        if isinstance(cursor, LogCursors):
            raise AttributeError("a pattern subscription has a resume point per log: positions")
        return cursor.next_head_id

    @property
    def positions(self) -> dict[LogKey, int]:
        """A pattern subscription's last delivered head_id per ``(topic, origin key)``.

        Pass it as ``resume_after`` to a later ``subscribe_pattern`` to go on exactly there.

        Raises:
            AttributeError: a single-log subscription (``next_head_id``).
        """
        cursor = self._cursor
        if not isinstance(cursor, LogCursors):
            raise AttributeError("a single-log subscription resumes at next_head_id")
        return cursor.positions

    @property
    def trims(self) -> int:
        """How many trims the subscription has seen (heads retention removed before delivery)."""
        return self._cursor.trims

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MessageEnvelope:
        env = self._cursor.deliver()
        if env is not None:
            return env
        if self._closed:
            raise StopAsyncIteration
        if self._call is not None:
            # The common path: a healthy stream, no tenacity involved.
            try:
                return await self._read()
            except StreamClosed:
                raise StopAsyncIteration from None
            except MsgbusError as exc:
                if self._is_closed():
                    raise StopAsyncIteration from None
                if self._retrying is None and isinstance(exc, StreamEnded):
                    raise StopAsyncIteration from None
                if not exc.retryable or self._retrying is None:
                    raise
        if self._retrying is None:
            # Without reconnect the first stream is the only one.
            if self._opened_once:
                raise StopAsyncIteration
            try:
                return await self._open_and_read()
            except StreamClosed:
                raise StopAsyncIteration from None
        try:
            async for attempt in self._retrying:
                with attempt:
                    return await self._open_and_read()
        except StreamClosed:
            raise StopAsyncIteration from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _open_and_read(self) -> MessageEnvelope:
        if self._is_closed():
            raise StreamClosed
        if self._call is None:
            self._opened_once = True
            self._endpoint, self._call = self._open_stream()
        return await self._read()

    async def _read(self) -> MessageEnvelope:
        call = self._call
        assert call is not None
        while True:
            try:
                response = await transport.read(call)
            except transport.RpcError as exc:
                self._drop_call()
                if self._is_closed():
                    raise StreamClosed from None
                raise await self._broken(translate_rpc_error(exc)) from None
            except BaseException as exc:
                self._drop_call()
                if self._is_closed() and transport.cancelled_by_channel(exc):
                    raise StreamClosed from None
                raise
            if response is None:
                self._drop_call()
                if self._is_closed():
                    raise StreamClosed
                raise await self._broken(StreamEnded())
            try:
                self._cursor.take(subscribe_envelopes(response), response.first_head_id)
            except BaseException:
                # A protocol error, or the trim policy (or a caller's on_trim) raising: the
                # response is not delivered, so the stream must not go on after it.
                self._drop_call()
                raise
            env = self._cursor.deliver()
            if env is not None:
                return env

    async def _broken(self, error: MsgbusError) -> MsgbusError:
        """Move the client off the stream's endpoint if ``error`` says it is gone; ``error``.

        The reopened stream, and the client's other calls, then go to an endpoint that answers.
        """
        await self._fail_over(self._endpoint, error)
        return error

    def _is_closed(self) -> bool:
        return self._closed or self._is_client_closed()

    def _drop_call(self) -> None:
        # Swapped out first: close() may run in another thread (blocking client) meanwhile.
        call, self._call = self._call, None
        if call is not None:
            transport.cancel(call)

    async def aclose(self) -> None:
        """Stop the subscription and cancel its stream. Iteration then ends."""
        self._closed = True
        self._drop_call()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
