"""One long-lived PublishStream per endpoint, shared by the asyncio client's publishes.

A sequential publisher pays one stream message per publish instead of a unary call's set-up.
Concurrent publishes share the stream: each request carries its own ``request_id``, a writer
task writes the requests in the order they were sent, and a reader task hands each response
to the publish that waits for it. A publish still returns only after its response, so the
durability promise is that of Publish.

The writes and reads happen in the stream's own two tasks, never in a publisher's: grpc.aio
cancels the whole call when a task is cancelled inside ``write()`` or ``read()``, so a caller
cancelled there would fail every other publish on the stream. A cancelled caller only stops
waiting; a request it sent and the writer has not yet written is dropped (nothing of it is
stored), one already written is answered and the answer discarded.

When the stream breaks, every publish waiting on it fails with the stream's gRPC error (the
client translates it, as for a unary call), and the next publish opens a new stream. The
blocking client's twin is ``_sync_stream_publisher``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import grpc
import grpc.aio

from msgbus_proto import pb

from ._errors import DeadlineExceededError, StatusCode, UnavailableError

if TYPE_CHECKING:
    from msgbus.v1.msgbus_pb2_grpc import MsgbusServiceAsyncStub

__all__ = ["StreamPublisher"]

_ENDED = "the PublishStream ended before answering every publish"

_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]

_Answer = asyncio.Future[pb.PublishStreamResponse]


class _Stream:
    """One PublishStream call, the requests still to write on it and the publishes it owes."""

    def __init__(self, stub: MsgbusServiceAsyncStub) -> None:
        # No request iterator: the writer task writes to the call itself.
        self.call: Any = cast("Any", stub.PublishStream)()
        self.outbox: deque[tuple[pb.PublishStreamRequest, _Answer]] = deque()
        self.waiting: dict[int, _Answer] = {}
        self.wake: asyncio.Future[None] | None = None
        """Set while the writer waits for an empty outbox to fill."""
        self.refused_write = False
        """A write was refused: core had ended the call before its reader saw it end."""
        self.tasks: list[asyncio.Task[None]] = []
        """The writer and the reader (held here: the loop keeps only weak references)."""


class StreamPublisher:
    """The PublishStream of one endpoint: opened on first use, reopened after a failure."""

    def __init__(self) -> None:
        self._stream: _Stream | None = None
        self._next_id = 1

    async def send(
        self,
        stub: MsgbusServiceAsyncStub,
        request: pb.PublishStreamRequest,
        timeout: float | None,  # noqa: ASYNC109 - the client's per-call deadline
    ) -> pb.PublishStreamResponse:
        """Send one request on the stream and return its response.

        Raises the stream's ``grpc.RpcError`` when the stream fails (UNIMPLEMENTED from a
        daemon without PublishStream), and :class:`DeadlineExceededError` when no response
        came within ``timeout``.
        """
        stream = self._stream
        if stream is None:
            stream = self._open(stub)
        request_id = self._next_id
        self._next_id += 1
        request.request_id = request_id
        loop = asyncio.get_running_loop()
        answer: _Answer = loop.create_future()
        stream.waiting[request_id] = answer
        stream.outbox.append((request, answer))
        wake = stream.wake
        if wake is not None:
            stream.wake = None
            wake.set_result(None)
        try:
            if timeout is None:
                return await answer
            # A timer that fails the answer, not asyncio.timeout(): no context manager and no
            # cancel-and-uncancel of the caller's task on every publish.
            expiry = loop.call_later(timeout, _expire, answer, timeout)
            try:
                return await answer
            finally:
                expiry.cancel()
        finally:
            stream.waiting.pop(request_id, None)

    def close(self) -> None:
        """End the stream (the client closes): waiting publishes fail with the channel."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.call.cancel()

    def _open(self, stub: MsgbusServiceAsyncStub) -> _Stream:
        stream = self._stream = _Stream(stub)
        loop = asyncio.get_running_loop()
        stream.tasks = [
            loop.create_task(self._write(stream), name="msgbus-publish-stream-writer"),
            loop.create_task(self._read(stream), name="msgbus-publish-stream"),
        ]
        return stream

    @staticmethod
    async def _write(stream: _Stream) -> None:
        outbox = stream.outbox
        try:
            while True:
                while outbox:
                    request, answer = outbox.popleft()
                    if answer.done():
                        continue  # its caller stopped waiting before it was written
                    await stream.call.write(request)
                wake = stream.wake = asyncio.get_running_loop().create_future()
                await wake
        except (grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            # A stream that is over refuses the write; its reader fails the publishes.
            stream.refused_write = True
        except Exception as error:
            # Never leave a publish waiting on requests that will not be written.
            for answer in stream.waiting.values():
                if not answer.done():
                    answer.set_exception(error)
            stream.call.cancel()

    async def _read(self, stream: _Stream) -> None:
        call = stream.call
        error: BaseException
        try:
            while True:
                response = await call.read()
                if response is _EOF:
                    error = UnavailableError(_ENDED, StatusCode.UNAVAILABLE)
                    break
                answered = cast("pb.PublishStreamResponse", response)
                answer = stream.waiting.pop(answered.request_id, None)
                if answer is not None and not answer.done():
                    answer.set_result(answered)
        except grpc.RpcError as failed:
            # A write refused by a call that core had already ended replaces the call's status
            # with INTERNAL ("Internal error from Core"); what ended it is lost, and the stream
            # ended as surely as at EOF.
            refused = stream.refused_write and failed.code() is grpc.StatusCode.INTERNAL
            error = UnavailableError(_ENDED, StatusCode.UNAVAILABLE) if refused else failed
        except asyncio.CancelledError as cancelled:
            error = cancelled
        if self._stream is stream:
            self._stream = None
        with contextlib.suppress(Exception):
            call.cancel()
        stream.tasks[0].cancel()  # the writer
        # Only the publishes sent on this call wait for it: the next publish opens a new
        # stream with its own outbox, since this one was dropped before any await.
        waiting, stream.waiting = stream.waiting, {}
        stream.outbox.clear()
        for answer in waiting.values():
            if not answer.done():
                if isinstance(error, asyncio.CancelledError):
                    answer.cancel()
                else:
                    answer.set_exception(error)


def _expire(answer: _Answer, timeout: float) -> None:
    if not answer.done():
        answer.set_exception(
            DeadlineExceededError(
                f"no answer to the publish within {timeout} s", StatusCode.DEADLINE_EXCEEDED
            )
        )
