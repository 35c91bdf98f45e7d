"""Reconnecting subscriptions: replay then live, resumed across daemon restarts.

Invariant: a subscription delivers head_ids ``from_head_id, from_head_id + 1, ...`` in order,
each exactly once. The daemon promises the same, but the guard is repeated here because a
reconnect is where duplicates and gaps come from: after a broken stream the subscription
reopens at the last delivered head_id + 1, drops anything below it (a duplicate) and treats
anything above it as a gap, which it repairs by reopening the stream at the missing head_id.

Reconnecting is driven by tenacity. The common path (an open, healthy stream) does not enter
tenacity at all; only a failure does, and each delivered message starts a fresh retry state,
so ``max_attempts`` counts consecutive failures.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc
import grpc.aio
import tenacity

from msgbus_proto import pb

from ._config import ReconnectPolicy
from ._convert import subscribe_envelopes
from ._errors import MsgbusError, ProtocolError, UnavailableError, translate_rpc_error
from ._generated.msgbus.v1 import MessageEnvelope

if TYPE_CHECKING:
    from msgbus.v1.msgbus_pb2_grpc import MsgbusServiceAsyncStub, MsgbusServiceStub

__all__ = ["AsyncSubscription", "Subscription"]

# grpc.aio's end-of-stream sentinel; grpc-stubs does not declare it.
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class _StreamEnded(UnavailableError):
    """The daemon ended the stream without an error (it never does while serving)."""

    def __init__(self) -> None:
        super().__init__("subscription stream ended")


class _GapError(ProtocolError):
    """A head_id arrived above the next expected one: reopen at the missing head_id."""

    retryable = True


class _Closed(Exception):
    """The subscription or its client was closed while (re)opening the stream.

    Raised instead of StopIteration/StopAsyncIteration inside tenacity's loop, which would
    otherwise read them as the end of its own iteration.
    """


class _Cursor:
    """The resume point and the duplicate/gap guard, shared by both subscription kinds."""

    __slots__ = ("next_head_id", "pending")

    def __init__(self, from_head_id: int) -> None:
        # The daemon treats 0 as 1; so does the cursor, so the guard matches what arrives.
        self.next_head_id = max(from_head_id, 1)
        self.pending: deque[MessageEnvelope] = deque()

    def take(self, envelopes: list[MessageEnvelope]) -> None:
        """Queue the envelopes of one response for delivery, dropping duplicates."""
        for env in envelopes:
            head = env.head_id
            if head < self.next_head_id:
                continue  # already delivered before a reconnect
            if head > self.next_head_id:
                raise _GapError(
                    f"subscription expected head_id {self.next_head_id}, daemon sent {head}"
                )
            self.pending.append(env)
            self.next_head_id = head + 1

    def deliver(self) -> MessageEnvelope | None:
        return self.pending.popleft() if self.pending else None


def _retry_predicate(is_closed: Callable[[], bool]) -> tenacity.retry_base:
    return tenacity.retry_if_exception(
        lambda exc: isinstance(exc, MsgbusError) and exc.retryable and not is_closed()
    )


class AsyncSubscription:
    """An async iterator over one log: the backlog from ``from_head_id``, then live messages.

    Returned by :meth:`AsyncMsgbusClient.subscribe`. Iterate it with ``async for``; it ends only
    when closed (``aclose()``, ``async with``, or closing the client). With reconnect enabled,
    a broken stream (daemon restart, network error) is reopened at the last delivered
    head_id + 1 after a backoff; other errors, or running out of attempts, raise
    a :class:`MsgbusError`.
    """

    def __init__(
        self,
        stub: MsgbusServiceAsyncStub,
        make_request: Callable[[int], pb.SubscribeRequest],
        from_head_id: int,
        policy: ReconnectPolicy | None,
        is_client_closed: Callable[[], bool],
    ) -> None:
        self._stub = stub
        self._make_request = make_request
        self._cursor = _Cursor(from_head_id)
        self._policy = policy
        self._is_client_closed = is_client_closed
        self._call: grpc.aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse] | None
        self._call = None
        self._closed = False
        self._opened_once = False
        self._retrying: tenacity.AsyncRetrying | None = None
        if policy is not None:
            self._retrying = tenacity.AsyncRetrying(
                wait=policy.wait_strategy(),
                stop=policy.stop_strategy(),
                retry=_retry_predicate(self._is_closed),
                reraise=True,
            )

    @property
    def next_head_id(self) -> int:
        """The head_id the subscription will deliver next (its resume point)."""
        return self._cursor.next_head_id

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
            except _Closed:
                raise StopAsyncIteration from None
            except MsgbusError as exc:
                if self._is_closed():
                    raise StopAsyncIteration from None
                if self._retrying is None and isinstance(exc, _StreamEnded):
                    raise StopAsyncIteration from None
                if not exc.retryable or self._retrying is None:
                    raise
        if self._retrying is None:
            # Without reconnect the first stream is the only one.
            if self._opened_once:
                raise StopAsyncIteration
            try:
                return await self._open_and_read()
            except _Closed:
                raise StopAsyncIteration from None
        try:
            async for attempt in self._retrying:
                with attempt:
                    return await self._open_and_read()
        except _Closed:
            raise StopAsyncIteration from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _open_and_read(self) -> MessageEnvelope:
        if self._is_closed():
            raise _Closed
        if self._call is None:
            self._opened_once = True
            self._call = self._stub.Subscribe(self._make_request(self._cursor.next_head_id))
        return await self._read()

    async def _read(self) -> MessageEnvelope:
        call = self._call
        assert call is not None
        while True:
            try:
                response = await call.read()
            except grpc.aio.AioRpcError as exc:
                self._drop_call()
                if self._is_closed():
                    raise _Closed from None
                raise translate_rpc_error(exc) from None
            except asyncio.CancelledError:
                self._drop_call()
                # Closing the channel cancels its calls with asyncio.CancelledError; that ends
                # the iteration. A cancellation of the consuming task itself still propagates.
                task = asyncio.current_task()
                if self._is_closed() and (task is None or not task.cancelling()):
                    raise _Closed from None
                raise
            except BaseException:
                self._drop_call()
                raise
            if response is _EOF:
                self._drop_call()
                raise _StreamEnded()
            try:
                self._cursor.take(subscribe_envelopes(response))  # type: ignore[arg-type]
            except MsgbusError:
                self._drop_call()
                raise
            env = self._cursor.deliver()
            if env is not None:
                return env

    def _is_closed(self) -> bool:
        return self._closed or self._is_client_closed()

    def _drop_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

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


class Subscription:
    """A blocking iterator over one log: the backlog from ``from_head_id``, then live messages.

    Returned by :meth:`MsgbusClient.subscribe`; it behaves like :class:`AsyncSubscription`
    (resume at the last delivered head_id + 1, backoff, no duplicate, no gap). Close it with
    ``close()`` or a ``with`` block; iteration blocks while waiting for new messages.
    """

    def __init__(
        self,
        stub: MsgbusServiceStub,
        make_request: Callable[[int], pb.SubscribeRequest],
        from_head_id: int,
        policy: ReconnectPolicy | None,
        is_client_closed: Callable[[], bool],
    ) -> None:
        self._stub = stub
        self._make_request = make_request
        self._cursor = _Cursor(from_head_id)
        self._policy = policy
        self._is_client_closed = is_client_closed
        self._call: Any = None  # grpc's sync stream: an iterator that is also a grpc.Call
        self._closed = False
        self._opened_once = False
        self._retrying: tenacity.Retrying | None = None
        if policy is not None:
            self._retrying = tenacity.Retrying(
                wait=policy.wait_strategy(),
                stop=policy.stop_strategy(),
                retry=_retry_predicate(self._is_closed),
                reraise=True,
            )

    @property
    def next_head_id(self) -> int:
        """The head_id the subscription will deliver next (its resume point)."""
        return self._cursor.next_head_id

    def __iter__(self) -> Iterator[MessageEnvelope]:
        return self

    def __next__(self) -> MessageEnvelope:
        env = self._cursor.deliver()
        if env is not None:
            return env
        if self._closed:
            raise StopIteration
        if self._call is not None:
            try:
                return self._read()
            except _Closed:
                raise StopIteration from None
            except MsgbusError as exc:
                if self._is_closed():
                    raise StopIteration from None
                if self._retrying is None and isinstance(exc, _StreamEnded):
                    raise StopIteration from None
                if not exc.retryable or self._retrying is None:
                    raise
        if self._retrying is None:
            # Without reconnect the first stream is the only one.
            if self._opened_once:
                raise StopIteration
            try:
                return self._open_and_read()
            except _Closed:
                raise StopIteration from None
        try:
            for attempt in self._retrying:
                with attempt:
                    return self._open_and_read()
        except _Closed:
            raise StopIteration from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _open_and_read(self) -> MessageEnvelope:
        if self._is_closed():
            raise _Closed
        if self._call is None:
            self._opened_once = True
            self._call = self._stub.Subscribe(self._make_request(self._cursor.next_head_id))
        return self._read()

    def _read(self) -> MessageEnvelope:
        while True:
            try:
                response = next(self._call)
            except StopIteration:
                self._drop_call()
                if self._is_closed():
                    raise _Closed from None
                raise _StreamEnded() from None
            except grpc.RpcError as exc:
                self._drop_call()
                if self._is_closed():
                    raise _Closed from None
                raise translate_rpc_error(exc) from None
            except BaseException:
                self._drop_call()
                raise
            try:
                self._cursor.take(subscribe_envelopes(response))
            except MsgbusError:
                self._drop_call()
                raise
            env = self._cursor.deliver()
            if env is not None:
                return env

    def _is_closed(self) -> bool:
        return self._closed or self._is_client_closed()

    def _drop_call(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def close(self) -> None:
        """Stop the subscription and cancel its stream. Safe to call from another thread."""
        self._closed = True
        self._drop_call()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
