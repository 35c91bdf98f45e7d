"""One PublishStream: publishes and their acknowledgements on one open stream.

A sequential publisher pays one stream message per publish instead of a unary call. The stream
reads requests on its own task and queues each one's transaction at once, so the requests in
flight share group commits; the handler answers them strictly in request order, each only once
its transaction is durable (the durability promise of Publish).

Each request goes through the same steps as the unary RPC it carries: the authorization check
(`RequestCheck`, the policy's rule for Publish and PublishBatch), the write gate, validation and
the disk budget (`publishing.PublishPath`). A refused request is answered with the status code
and message the unary RPC would have answered; nothing of it is stored and the stream goes on.

Bounded: while MAX_IN_FLIGHT_BYTES of requests (their encoded size) or MAX_IN_FLIGHT_REQUESTS
requests are read and not yet answered, the stream stops reading, so HTTP/2 flow control holds
the client back. One request larger than the byte bound is still read when nothing else is in
flight (the receive limit bounds it).

At shutdown (the notifier closes) the stream stops reading, answers what it read, and ends
with UNAVAILABLE, so a client knows the requests without an answer were never read. A request
that does not decode ends the stream at once with INVALID_ARGUMENT (`decoding`): the client
broke the protocol, and the answers of the requests read before it may be lost with the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import grpc

from msgbus_core.errors import MsgbusError, StorageError
from msgbus_core.ops import AppendOp, Outcome
from msgbus_proto import pb
from msgbus_server.notify import LogNotifier
from msgbus_server.publishing import PublishPath, fill_stored, stored
from msgbus_server.status import failure

logger = logging.getLogger("msgbus_server.publish_stream")

MAX_IN_FLIGHT_BYTES: Final = 8 * 1024 * 1024
"""Encoded bytes of the requests one stream has read and not answered yet."""
MAX_IN_FLIGHT_REQUESTS: Final = 1024
"""Requests one stream has read and not answered yet."""

RequestCheck = Callable[
    [str, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[MsgbusError | None]
]
"""Authorizes one request of a stream (`authz.Authorizer.refusal`): the error that refuses it,
or None. It never ends the stream."""

WriteRefusal = Callable[[], Awaitable[str | None]]
"""Holds a write while the node recovers its logs; why it is refused, or None to go ahead."""


@dataclass(slots=True)
class _Answer:
    """A request read and not answered yet."""

    request_id: int
    size: int
    ops: list[AppendOp]
    commit: asyncio.Future[list[Outcome]] | None
    """None when the request was refused before anything was queued."""
    refusal: BaseException | None = None


class PublishStreamSession:
    """Reads, commits and answers the requests of one PublishStream call."""

    def __init__(
        self,
        publishing: PublishPath,
        *,
        check: RequestCheck | None,
        write_refusal: WriteRefusal,
        notifier: LogNotifier,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        self._publishing = publishing
        self._check = check
        self._write_refusal = write_refusal
        self._notifier = notifier
        self._context = context
        self._answers: deque[_Answer] = deque()
        self._in_flight_bytes = 0
        self._changed = asyncio.Event()
        """Set when an answer is sent (the reader waits for room on it)."""
        self._idle: asyncio.Future[list[Outcome]] | None = None
        """What the handler waits on while nothing is left to answer (`_wait_for_answer`)."""
        self._reading_done = False
        self._read_error: BaseException | None = None
        self.shut_down = False
        """True when the stream stopped reading because the daemon shuts down."""

    async def run(
        self, requests: AsyncIterator[pb.PublishStreamRequest]
    ) -> AsyncIterator[pb.PublishStreamResponse]:
        """The responses, in request order, until the client ends its side (or shutdown)."""
        reader = asyncio.create_task(self._read(requests), name="publish-stream-reader")
        closing = asyncio.create_task(self._notifier.wait_closed(), name="publish-stream-closing")
        closing.add_done_callback(lambda done: self._stop_reading(done, reader))
        try:
            while True:
                while not self._answers:
                    if self._reading_done:
                        if self._read_error is not None:
                            raise self._read_error
                        return
                    await self._wait_for_answer()
                answer = self._answers[0]
                response = await self._respond(answer)
                self._answers.popleft()
                self._in_flight_bytes -= answer.size
                self._changed.set()
                yield response
        finally:
            closing.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _wait_for_answer(self) -> None:
        """Wait until the reader queued an answer (or stopped), with nothing left to answer.

        The reader passes the future waited on here to the pipeline as the commit's own future
        when it queues the next publish (`_commit`), so the handler wakes once per publish,
        when its commit is durable, instead of once when it is read and again when it is
        durable. A refusal or the end of reading resolves it at once (`_wake_idle`).
        """
        idle = self._idle = asyncio.get_running_loop().create_future()
        try:
            await idle
        except asyncio.CancelledError:
            raise
        except Exception:
            pass  # the commit failed: answering it (`_respond`) raises it again
        finally:
            self._idle = None

    def _wake_idle(self) -> None:
        """Wake the handler if it still waits for an answer: a refusal, or reading ended."""
        idle = self._idle
        if idle is not None:
            self._idle = None
            if not idle.done():
                idle.set_result([])

    def _commit(self, ops: list[AppendOp]) -> asyncio.Future[list[Outcome]]:
        """Queue the ops of a request; the handler's idle future is theirs when it waits."""
        idle = self._idle
        commit = self._publishing.begin(ops, idle)
        if commit is idle:
            # Resolved by the pipeline once durable; `_wake_idle` must not resolve it now.
            self._idle = None
        return commit

    def _stop_reading(self, closing: asyncio.Future[None], reader: asyncio.Task[None]) -> None:
        """The notifier closed (daemon shutdown): read no more requests."""
        if not closing.cancelled() and not reader.done():
            self.shut_down = True
            reader.cancel()

    # -- reading --------------------------------------------------------------------------------

    async def _read(self, requests: AsyncIterator[pb.PublishStreamRequest]) -> None:
        try:
            async for request in requests:
                size = request.ByteSize()
                await self._room_for(size)
                self._answers.append(await self._begin(request, size))
                self._in_flight_bytes += size
                self._wake_idle()  # unless its commit took the idle future
        except asyncio.CancelledError:
            pass  # shutdown, or the call ended
        except BaseException as error:
            # A request that did not decode (the call is aborted already), or a transport
            # failure: the handler raises it where the answers reach it.
            self._read_error = error
        finally:
            self._reading_done = True
            self._wake_idle()

    async def _room_for(self, size: int) -> None:
        """Wait until the request fits the stream's bounds (or nothing else is in flight)."""
        while self._answers and (
            self._in_flight_bytes + size > MAX_IN_FLIGHT_BYTES
            or len(self._answers) >= MAX_IN_FLIGHT_REQUESTS
        ):
            self._changed.clear()
            await self._changed.wait()

    async def _begin(self, request: pb.PublishStreamRequest, size: int) -> _Answer:
        """Check one request and queue its transaction; a refusal is kept for its answer."""
        request_id = request.request_id
        batched = len(request.entries) > 0
        try:
            if self._check is not None:
                denied = await self._check("PublishStream", request, self._context)
                if denied is not None:
                    raise denied
            refusal = await self._write_refusal()
            if refusal is not None:
                return _Answer(request_id, size, [], None, StorageError(refusal))
            publishing = self._publishing
            ops = (
                publishing.batch(request.entries) if batched else publishing.single(request.publish)
            )
            return _Answer(request_id, size, ops, self._commit(ops))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            return _Answer(request_id, size, [], None, error)

    # -- answering ------------------------------------------------------------------------------

    async def _respond(self, answer: _Answer) -> pb.PublishStreamResponse:
        response = pb.PublishStreamResponse(request_id=answer.request_id)
        error = answer.refusal
        if answer.commit is not None:
            try:
                fill_stored(response, stored(answer.ops, await answer.commit))
                return response
            except Exception as problem:
                error = problem
        assert error is not None
        answered = failure(error)
        if answered.code is grpc.StatusCode.INTERNAL:
            logger.error("internal error (a bug): %r", error, exc_info=error)
        response.error_code = answered.code.value[0]
        response.error_message = answered.message
        return response
