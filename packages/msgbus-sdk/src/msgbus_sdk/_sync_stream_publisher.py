"""One long-lived PublishStream per endpoint, shared by the blocking client's publishes.

The blocking twin of ``_async_stream_publisher`` (same behaviour, threads instead of tasks):
requests go to gRPC through a queue that gRPC's own sending thread drains, and a reader thread
hands each response to the publishing thread that waits for it, by ``request_id``. A publish
returns only after its response. When the stream breaks, every publish waiting on it fails
with the stream's gRPC error, and the next publish opens a new stream.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, cast

import grpc

from msgbus_proto import pb, rpc

from ._errors import DeadlineExceededError, StatusCode, UnavailableError

__all__ = ["StreamPublisher"]

_ENDED = "the PublishStream ended before answering every publish"

_END = object()
"""Ends the request iterator: the client is done writing."""

_CLOSE_WAIT_S = 5.0
"""How long `close` waits for the reader thread to see the cancelled call end."""


class _Stream:
    """One PublishStream call and the publishes waiting on it."""

    def __init__(self, stub: rpc.MsgbusServiceStub) -> None:
        self.requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.waiting: dict[int, Future[pb.PublishStreamResponse]] = {}
        self.ended = False
        requests = cast("Iterator[pb.PublishStreamRequest]", iter(self.requests.get, _END))
        self.call: Any = stub.PublishStream(requests)
        self.reader: threading.Thread | None = None


class StreamPublisher:
    """The PublishStream of one endpoint: opened on first use, reopened after a failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._next_id = 1

    def send(
        self,
        stub: rpc.MsgbusServiceStub,
        request: pb.PublishStreamRequest,
        timeout: float | None,
    ) -> pb.PublishStreamResponse:
        """Send one request on the stream and return its response.

        Raises the stream's ``grpc.RpcError`` when the stream fails (UNIMPLEMENTED from a
        daemon without PublishStream), and :class:`DeadlineExceededError` when no response
        came within ``timeout``.
        """
        future: Future[pb.PublishStreamResponse] = Future()
        with self._lock:
            stream = self._stream
            if stream is None:
                stream = self._stream = _Stream(stub)
                stream.reader = threading.Thread(
                    target=self._read, args=(stream,), name="msgbus-publish-stream", daemon=True
                )
                stream.reader.start()
            request_id = self._next_id
            self._next_id += 1
            request.request_id = request_id
            stream.waiting[request_id] = future
            stream.requests.put(request)
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise DeadlineExceededError(
                f"no answer to the publish within {timeout} s", StatusCode.DEADLINE_EXCEEDED
            ) from None
        finally:
            with self._lock:
                stream.waiting.pop(request_id, None)

    def close(self) -> None:
        """End the stream (the client closes): waiting publishes fail with the channel.

        Returns once the reader thread has seen the call end (or after `_CLOSE_WAIT_S`), so
        that the call is finished and released here, while every thread still runs, rather
        than at the interpreter's exit, where a call's finalizer can wait for a lock held by a
        daemon thread that exit stopped (seen as a rare hang of `msgbus probe` at exit on a
        loaded machine; see the issue 20 note: this narrows it, the root cause is open).
        """
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.requests.put(_END)
            stream.call.cancel()
            if stream.reader is not None and stream.reader is not threading.current_thread():
                stream.reader.join(_CLOSE_WAIT_S)

    def _read(self, stream: _Stream) -> None:
        error: Exception
        try:
            for response in stream.call:
                with self._lock:
                    future = stream.waiting.pop(response.request_id, None)
                if future is not None and not future.done():
                    future.set_result(response)
            error = UnavailableError(_ENDED, StatusCode.UNAVAILABLE)
        except grpc.RpcError as failed:
            error = failed
        with self._lock:
            if self._stream is stream:
                self._stream = None
            waiting, stream.waiting = stream.waiting, {}
        stream.requests.put(_END)  # lets gRPC's sending thread finish
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)
