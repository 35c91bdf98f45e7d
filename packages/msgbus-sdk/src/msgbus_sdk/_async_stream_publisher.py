"""One long-lived PublishStream per endpoint, shared by the asyncio client's publishes.

A sequential publisher pays one stream message per publish instead of a unary call's set-up.
Concurrent publishes share the stream: each request carries its own ``request_id``, and a
reader task hands each response to the publish that waits for it. A publish still returns only
after its response, so the durability promise is that of Publish.

When the stream breaks, every publish waiting on it fails with the stream's gRPC error (the
client translates it, as for a unary call), and the next publish opens a new stream. The
blocking client's twin is ``_sync_stream_publisher``.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class StreamPublisher:
    """The PublishStream of one endpoint: opened on first use, reopened after a failure."""

    def __init__(self) -> None:
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[pb.PublishStreamResponse]] = {}
        self._next_id = 1
        self._writing = asyncio.Lock()

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
        call = self._call
        if call is None:
            call = self._open(stub)
        request_id = self._next_id
        self._next_id += 1
        request.request_id = request_id
        future: asyncio.Future[pb.PublishStreamResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[request_id] = future
        try:
            # A stream that is over refuses the write; its reader fails this publish with the
            # stream's status.
            stream_over = (grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError)
            async with self._writing:
                with contextlib.suppress(*stream_over):
                    await call.write(request)
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise DeadlineExceededError(
                    f"no answer to the publish within {timeout} s", StatusCode.DEADLINE_EXCEEDED
                ) from None
        finally:
            self._waiting.pop(request_id, None)

    def close(self) -> None:
        """End the stream (the client closes): waiting publishes fail with the channel."""
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _open(self, stub: MsgbusServiceAsyncStub) -> Any:
        # No request iterator: the publishes write to the call themselves.
        call = cast("Any", stub.PublishStream)()
        self._call = call
        self._reader = asyncio.get_running_loop().create_task(
            self._read(call), name="msgbus-publish-stream"
        )
        return call

    async def _read(self, call: Any) -> None:
        error: BaseException
        try:
            while True:
                response = await call.read()
                if response is _EOF:
                    error = UnavailableError(_ENDED, StatusCode.UNAVAILABLE)
                    break
                answered = cast("pb.PublishStreamResponse", response)
                future = self._waiting.pop(answered.request_id, None)
                if future is not None and not future.done():
                    future.set_result(answered)
        except grpc.RpcError as failed:
            error = failed
        except asyncio.CancelledError as cancelled:
            error = cancelled
        if self._call is call:
            self._call = None
        with contextlib.suppress(Exception):
            call.cancel()
        # Only the publishes sent on this call wait for it: a new stream starts with new ids
        # only after this point, since the call was dropped before any await.
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                if isinstance(error, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(error)
