"""The `msgbus.v1.MsgbusService` gRPC service (grpc.aio).

Handlers validate, then write through the commit pipeline or read through a dedicated reader
executor, so the event loop never blocks on the database. Every `MsgbusError` becomes its status
code (see `status.py`); anything else is a bug and is answered INTERNAL and logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import NoReturn, Protocol, TypeVar

import grpc

from msgbus_core.cursors import DEFAULT_MAX_CURSORS
from msgbus_core.errors import (
    InvalidArgumentError,
    MsgbusError,
    NotFoundError,
    StorageError,
    StorageFullError,
)
from msgbus_core.limits import (
    DEFAULT_FETCH_LIMIT,
    MAX_FETCH_LIMIT,
    MAX_STORED_INT,
    READ_BUDGET_BYTES,
)
from msgbus_core.model import FifoMessage, Message, NodeId, TopicHead
from msgbus_core.ops import AckOp, DeleteRangeOp, DeleteResult, EnqueueOp, RejectOp
from msgbus_core.store import MsgbusStore, read_size
from msgbus_core.validation import (
    clamp_stored,
    ensure_application_topic,
    validate_headers,
    validate_name,
    validate_payload,
    validate_topic,
)
from msgbus_proto import pb, rpc
from msgbus_server import convert, page_tokens
from msgbus_server.clock import now_ms
from msgbus_server.cursors import CursorRpcs
from msgbus_server.disk_budget import DiskBudget
from msgbus_server.fifo_attempts import MaxAttempts
from msgbus_server.fifo_leases import FifoLeaseRpcs
from msgbus_server.health import Health, Subsystem, storage_reason
from msgbus_server.ids import new_id
from msgbus_server.notify import LogNotifier, LogWatch
from msgbus_server.page_tokens import key_after, key_part, keyset_page
from msgbus_server.pattern_subscription import (
    PatternRequest,
    follow_pattern,
    list_heads_reader,
    refuse_outside_pattern,
)
from msgbus_server.pipeline import CommitPipeline
from msgbus_server.publish_stream import PublishStreamSession, RequestCheck
from msgbus_server.publishing import PublishPath, fill_stored, owned_origin
from msgbus_server.push_intake import PushIntake
from msgbus_server.read_gate import ReadGate
from msgbus_server.recovery import WRITE_HOLD_S, WriteGate
from msgbus_server.status import failure
from msgbus_server.stream_stats import FETCH, SUBSCRIBE, StreamStats, StreamTally

logger = logging.getLogger("msgbus_server.service")

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
_Delivered = TypeVar("_Delivered", pb.FetchResponse, pb.SubscribeResponse)

MAX_CHUNK = 512
"""Most messages one store read returns; its bytes are bounded by the read budget and gate."""

PACK_BUDGET_BYTES = 3 * 1024 * 1024
"""Bytes per packed response: below the 4 MiB default receive limit of gRPC clients."""

SHUTTING_DOWN = "msgbusd is shutting down; reconnect later"

HEADS_PAGE_DEFAULT = 1_000
"""ListHeads heads per page when a page_token or changed_since is given with page_size 0."""
HEADS_PAGE_MAX = 10_000
"""The largest ListHeads page_size honoured; a larger one is clamped."""
HEADS_UNPAGED_MAX = 1_000_000
"""Heads answered to a request with no extension field: an original client expects every head
in one response."""
HEADS_UNPAGED_BUDGET_BYTES = 60 * 1024 * 1024
"""The most bytes of heads answered to a request with no extension field: today's answer, up to
what an original peer receives (its sync channels take 64 MiB; about 600,000 logs). A client
with gRPC's default 4 MiB limit fails beyond about 40,000 logs, as it always did; pages
(page_size) are about PACK_BUDGET_BYTES each."""

SYNC_STATES_PAGE_DEFAULT = 1_000
"""ListPeerSyncStates states per page when a page token is given with page_size 0."""
SYNC_STATES_PAGE_MAX = 10_000
"""The largest page_size honoured; a larger one is clamped."""
SYNC_STATES_UNPAGED_MAX = 100_000
"""States answered to a request with neither page_size nor page_token: an original client
expects every state in one response."""


@dataclass(slots=True, eq=False)
class _Chunk:
    """One store read on its way to a client; what is not sent yet is reserved in the gate."""

    messages: deque[Message]
    """Emptied as the responses go out, so a sent message is no longer referenced here."""
    sizes: deque[int]
    """The `read_size` of each message still in `messages`."""
    next_head: int
    """The head after the last message handed to gRPC: where the stream reads next."""
    sent: int = 0
    """How many messages were handed to gRPC."""
    trimmed_to: int = 0
    """The first message's head when retention trimmed the heads asked for before it: the
    first response says so (`first_head_id`), so the client can tell a trim from a gap."""

    def take(self) -> tuple[Message, int]:
        """The next message to send and its size; the stream goes on after it."""
        message = self.messages.popleft()
        self.next_head = message.head_id + 1
        self.sent += 1
        return message, self.sizes.popleft()

    def reclaim(self) -> int:
        """Drop what is not sent (the stream reads it again from `next_head`); its bytes."""
        freed = sum(self.sizes)
        self.messages.clear()
        self.sizes.clear()
        return freed


def _recent_chunk(watch: LogWatch, next_head: int, limit: int) -> _Chunk | None:
    """The kept just-committed messages from `next_head` on (`recent`); None: read the store.

    They hold no read-gate reservation: they are in memory anyway, bounded by `recent`.
    """
    messages = watch.recent_since(next_head, limit)
    if messages is None:
        return None
    return _Chunk(deque(messages), deque(0 for _ in messages), next_head)


def _take_group(chunk: _Chunk, pack: int) -> tuple[list[Message], int]:
    """Take the next response's messages off a non-empty `chunk`, and their `read_size` total.

    At most `pack` consecutive messages and about PACK_BUDGET_BYTES; a single message larger
    than the budget still travels, alone.
    """
    message, held = chunk.take()
    group = [message]
    wire = _wire_size(message)
    while chunk.messages and len(group) < pack:
        estimate = _wire_size(chunk.messages[0])
        if wire + estimate > PACK_BUDGET_BYTES:
            break
        message, size = chunk.take()
        group.append(message)
        held += size
        wire += estimate
    return group, held


def _wire_size(message: Message) -> int:
    """About what a message's envelope takes in a response (names up to 255 bytes each)."""
    estimate = len(message.payload) + len(message.topic) + len(message.origin.key) + 128
    if message.headers:
        estimate += sum(len(k) + len(v) + 4 for k, v in message.headers.items())
    return estimate


class _EnvelopeList(Protocol):
    """A response's repeated MessageEnvelope field (typed without protobuf's internal module)."""

    def add(self) -> pb.MessageEnvelope: ...


def _fill(envelopes: _EnvelopeList, messages: list[Message]) -> None:
    """Append messages to a response's repeated field, building each envelope in place."""
    add = envelopes.add
    for message in messages:
        convert.fill_envelope(add(), message)


def _fill_heads(
    response: pb.ListHeadsResponse, heads: list[TopicHead], budget: int = PACK_BUDGET_BYTES
) -> None:
    """Add heads to a ListHeads response while it stays below about `budget` bytes."""
    size = 0
    for count, head in enumerate(heads):
        entry = convert.head_to_pb(head)
        size += entry.ByteSize() + 8
        if count and size > budget:
            break
        response.heads.append(entry)


def _heads_page_token(key: tuple[str, str], seq: int, epoch: str) -> str:
    """The token of the page after log `key`, in a listing at change `seq` of run `epoch`."""
    return page_tokens.encode([key[0], key[1], seq, epoch])


def _heads_page_after(token: str) -> tuple[tuple[str, str], int, str]:
    """The log key, change sequence and run of a `_heads_page_token`; else INVALID_ARGUMENT."""
    value = page_tokens.decoded(token)
    valid = (
        isinstance(value, list)
        and len(value) == 4
        and key_part(value[0])
        and key_part(value[1])
        and isinstance(value[2], int)
        and not isinstance(value[2], bool)
        and isinstance(value[3], str)
    )
    if not valid:
        raise page_tokens.malformed()
    return (value[0], value[1]), value[2], value[3]


def _page_after(token: str) -> tuple[str, str, str]:
    """The sync state sort key a page token names; INVALID_ARGUMENT naming page_token if not."""
    peer, topic, origin_key = key_after(token, 3)
    return (peer, topic, origin_key)


class MsgbusService(rpc.MsgbusServiceServicer):
    """All 13 RPCs of msgbus.v1 for one daemon."""

    def __init__(
        self,
        *,
        node: NodeId,
        store: MsgbusStore,
        pipeline: CommitPipeline,
        health: Health,
        notifier: LogNotifier,
        readers: Executor,
        max_payload_bytes: int,
        read_gate: ReadGate,
        read_budget_bytes: int = READ_BUDGET_BYTES,
        disk_budget: DiskBudget | None = None,
        write_gate: WriteGate | None = None,
        push: PushIntake | None = None,
        max_cursors: int = DEFAULT_MAX_CURSORS,
        fifo_max_attempts: MaxAttempts | None = None,
    ) -> None:
        self._push = push
        """The Push RPC's hub side (`push_intake`); None answers UNIMPLEMENTED
        (`--no-push-service`, as an original daemon)."""
        self._node = node
        self._node_pb = convert.node_to_pb(node)
        self._store = store
        self._pipeline = pipeline
        self._notifier = notifier
        self._readers = readers
        self._max_payload = max_payload_bytes
        self._read_gate = read_gate
        self._read_budget = read_budget_bytes
        self._disk_budget = disk_budget
        self.publishing = PublishPath(
            node=node,
            pipeline=pipeline,
            max_payload_bytes=max_payload_bytes,
            disk_budget=disk_budget,
        )
        """Validation and submission of publishes, for Publish, PublishBatch and PublishStream."""
        self.stream_check: RequestCheck | None = None
        """Authorizes each request of a PublishStream (`authz.Authorizer.refusal`); None allows
        every request. The stream itself was admitted by the guard when it opened."""
        self._health = health
        self._write_gate = write_gate
        self._cursors = CursorRpcs(
            node=node,
            store=store,
            pipeline=pipeline,
            read=self._read,
            fail=self._fail,
            max_cursors=max_cursors,
            page_budget_bytes=PACK_BUDGET_BYTES,
        )
        """The durable cursor RPCs (`msgbus_server.cursors`)."""
        self.fifo_leases = FifoLeaseRpcs(
            store=store,
            pipeline=pipeline,
            read=self._read,
            fail=self._fail,
            max_attempts=fifo_max_attempts or MaxAttempts(),
        )
        """The FIFO lease RPCs and the queues' max_attempts (`msgbus_server.fifo_leases`)."""
        """Closed while this node recovers its own logs (`recovery`); None when it never is."""
        self.streams = StreamStats()
        """What Fetch and Subscribe streams delivered, for the metrics and the status page."""

    # -- helpers --------------------------------------------------------------------------------

    async def _read(self, fn: Callable[[], T]) -> T:
        """Run a blocking store read on the reader executor."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn)

    async def _read_chunk(
        self, topic: str, origin: NodeId, from_head_id: int, limit: int
    ) -> _Chunk:
        """Read up to `limit` messages and at most one read budget (see `ReadGate`).

        The store is asked for no more bytes than the gate granted, so a read never holds more
        than the budget, or one message larger than it. The bytes stay reserved until
        `_deliver` hands them to gRPC.
        """
        gate = self._read_gate
        granted = await gate.reserve(self._read_budget)
        try:
            messages = await self._read(
                functools.partial(self._store.fetch, topic, origin, from_head_id, limit, granted)
            )
        except BaseException:
            gate.release(granted)
            raise
        sizes = [read_size(m) for m in messages]
        gate.settle(granted, sum(sizes))
        # Logs are gap-free from their first head on, so a read that starts later than asked
        # started at the first head: the heads before it were trimmed.
        trimmed_to = messages[0].head_id if messages and messages[0].head_id > from_head_id else 0
        return _Chunk(deque(messages), deque(sizes), from_head_id, trimmed_to=trimmed_to)

    async def _deliver(
        self, chunk: _Chunk, pack: int, response_type: type[_Delivered], tally: StreamTally
    ) -> AsyncIterator[_Delivered]:
        """Yield a chunk as responses, giving each one's bytes back to the gate as it goes.

        While gRPC holds this generator at a yield (the client is not reading), the rest of
        the chunk may be reclaimed by the gate; the caller then reads on from
        `chunk.next_head`. If the stream ends early (the client went away), the rest is given
        back too.
        """
        gate = self._read_gate
        try:
            while chunk.messages:
                if pack:
                    group, size = _take_group(chunk, pack)
                    response = response_type()
                    _fill(response.messages, group)
                    tally.delivered(len(group), group[-1].created_at_ms)
                    del group
                else:
                    message, size = chunk.take()
                    response = response_type(message=convert.envelope(message))
                    tally.delivered(1, message.created_at_ms)
                    del message
                gate.release(size)
                if chunk.trimmed_to:
                    response.first_head_id, chunk.trimmed_to = chunk.trimmed_to, 0
                if chunk.messages:
                    gate.stall(chunk)
                yield response
                gate.resume(chunk)
        finally:
            gate.resume(chunk)
            gate.release(chunk.reclaim())

    async def _fail(
        self, context: grpc.aio.ServicerContext[Req, Resp], error: Exception
    ) -> NoReturn:
        """Answer the call with the status of `error` (code, message and field details)."""
        answer = failure(error)
        if answer.code is grpc.StatusCode.INTERNAL:
            logger.error("internal error (a bug): %r", error, exc_info=error)
        elif isinstance(error, StorageFullError):
            # A full disk budget refuses every write until it has room: the budget logs when it
            # starts and stops refusing, not each refusal.
            logger.debug("write refused with %s: %s", answer.code.name, error)
        elif isinstance(error, StorageError):
            logger.warning("storage error answered %s: %s", answer.code.name, error)
        await context.abort(answer.code, answer.message, answer.trailing_metadata)

    def _origin(self, present: bool, value: pb.NodeId, field: str = "origin") -> NodeId:
        return convert.node_or_local(present, value, self._node, field)

    def _owned(self, present: bool, value: pb.NodeId, field: str = "origin") -> NodeId:
        """A write's origin: it must resolve to the local node."""
        return owned_origin(self._node, present, value, field)

    # -- logs -----------------------------------------------------------------------------------

    async def _writable(self, context: grpc.aio.ServicerContext[Req, Resp]) -> None:
        """Hold a write while this node recovers its own logs; refuse it if that lasts.

        Refused with UNAVAILABLE and the reason (clients retry it) when recovery has not
        finished within `WRITE_HOLD_S`, or half of what is left of the call's deadline.
        """
        refusal = await self._write_refusal(context.time_remaining())
        if refusal is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, refusal)

    async def _write_refusal(self, remaining: float | None = None) -> str | None:
        """Why a write is refused after holding it while recovery runs; None to go ahead.

        `remaining` is what is left of the call's deadline (None: no deadline).
        """
        gate = self._write_gate
        if gate is None or gate.is_open:
            return None
        hold = WRITE_HOLD_S if remaining is None else min(WRITE_HOLD_S, remaining / 2)
        if await gate.wait(hold):
            return None
        return gate.reason

    def _admit(self, incoming_bytes: int) -> None:
        """Refuse a write when the disk budget says so (`--discard new`); else count it."""
        if self._disk_budget is not None:
            self._disk_budget.check_writable(incoming_bytes)

    async def Publish(
        self,
        request: pb.PublishRequest,
        context: grpc.aio.ServicerContext[pb.PublishRequest, pb.PublishResponse],
    ) -> pb.PublishResponse:
        """Append one message to a local log; answered after the commit is durable."""
        await self._writable(context)
        try:
            message, duplicate = await self.publishing.publish(request)
        except Exception as error:
            await self._fail(context, error)
        return pb.PublishResponse(message=convert.envelope(message), duplicate=duplicate)

    async def PublishBatch(
        self,
        request: pb.PublishBatchRequest,
        context: grpc.aio.ServicerContext[pb.PublishBatchRequest, pb.PublishBatchResponse],
    ) -> pb.PublishBatchResponse:
        """Publish up to 10,000 entries in one durable transaction, all or nothing.

        Every entry is validated before anything is submitted, so an invalid entry (named by its
        index) rejects the whole batch and nothing is stored.
        """
        await self._writable(context)
        try:
            stored = await self.publishing.publish_batch(request.entries)
        except Exception as error:
            await self._fail(context, error)
        response = pb.PublishBatchResponse()
        fill_stored(response, stored)
        return response

    async def PublishStream(
        self,
        requests: AsyncIterator[pb.PublishStreamRequest],
        context: grpc.aio.ServicerContext[pb.PublishStreamRequest, pb.PublishStreamResponse],
    ) -> AsyncIterator[pb.PublishStreamResponse]:
        """Publishes and batches on one stream, each answered in order once durable.

        Each request is authorized, held by the write gate, validated and committed like the
        unary RPC it carries; a refused one is answered with its error and the stream goes on.
        At daemon shutdown the requests already read are answered, then the stream ends with
        UNAVAILABLE.
        """
        session = PublishStreamSession(
            self.publishing,
            check=self.stream_check,
            write_refusal=self._write_refusal,
            notifier=self._notifier,
            context=context,
        )
        async for response in session.run(requests):
            yield response
        if session.shut_down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def Fetch(
        self,
        request: pb.FetchRequest,
        context: grpc.aio.ServicerContext[pb.FetchRequest, pb.FetchResponse],
    ) -> AsyncIterator[pb.FetchResponse]:
        """Stream up to `limit` messages (0 → 100, capped at 10,000) in head order.

        The page is read in chunks, so memory stays bounded whatever the limit.
        """
        try:
            topic = validate_topic(request.topic)
            origin = self._origin(request.HasField("origin"), request.origin)
        except Exception as error:
            await self._fail(context, error)
        remaining = min(request.limit or DEFAULT_FETCH_LIMIT, MAX_FETCH_LIMIT)
        pack = request.max_messages_per_response
        next_head = max(request.from_head_id, 1)
        tally = self.streams.open(FETCH)
        while remaining > 0 and next_head <= MAX_STORED_INT:
            try:
                chunk = await self._read_chunk(topic, origin, next_head, min(remaining, MAX_CHUNK))
            except Exception as error:
                await self._fail(context, error)
            # A short read may have stopped at the byte budget: only an empty one ends the log.
            if not chunk.messages:
                return
            async for fetched in self._deliver(chunk, pack, pb.FetchResponse, tally):
                yield fetched
            remaining -= chunk.sent
            next_head = chunk.next_head

    async def Subscribe(
        self,
        request: pb.SubscribeRequest,
        context: grpc.aio.ServicerContext[pb.SubscribeRequest, pb.SubscribeResponse],
    ) -> AsyncIterator[pb.SubscribeResponse]:
        """Replay from `from_head_id` page by page, then follow the log live.

        The log is the source of truth: after catching up the stream waits for the log's
        notification and reads the store again from the next head. So there is no gap, no
        duplicate, no lag disconnect, and memory stays bounded for a slow client. The stream
        ends only when the client goes away, or with UNAVAILABLE at daemon shutdown.

        With `topic_pattern` it follows many logs instead (`pattern_subscription`).
        """
        if request.topic_pattern:
            async for response in self._subscribe_pattern(request, context):
                yield response
            return
        try:
            refuse_outside_pattern(request)
            topic = validate_topic(request.topic)
            origin = self._origin(request.HasField("origin"), request.origin)
        except Exception as error:
            await self._fail(context, error)
        if self._notifier.closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        page = min(request.replay_limit or DEFAULT_FETCH_LIMIT, MAX_FETCH_LIMIT, MAX_CHUNK)
        pack = request.max_messages_per_response
        next_head = max(request.from_head_id, 1)
        notifier = self._notifier
        tally = self.streams.open(SUBSCRIBE)
        # Watch BEFORE the first read: a commit that the read misses is still remembered.
        caught_up = False
        with notifier.watch(topic, origin) as watch:
            while True:
                if next_head > MAX_STORED_INT:
                    # No message can ever have this head; just wait for shutdown.
                    await notifier.wait_closed()
                    break
                try:
                    # Live, the messages just committed are usually still kept in memory.
                    chunk = _recent_chunk(watch, next_head, page) if caught_up else None
                    if chunk is None:
                        chunk = await self._read_chunk(topic, origin, next_head, page)
                except Exception as error:
                    await self._fail(context, error)
                found = bool(chunk.messages)
                async for delivered in self._deliver(chunk, pack, pb.SubscribeResponse, tally):
                    yield delivered
                next_head = chunk.next_head
                if notifier.closed:
                    break
                if found and not caught_up:
                    # Replaying: a short read may have stopped at the byte budget, and the watch
                    # knows nothing of the backlog committed before it, so read on until a read
                    # finds nothing.
                    continue
                # From the first empty read on, every later message was committed after the
                # watch began, so the watch knows whether the log holds more than was read:
                # it returns at once after a read cut short by the budget, and waits otherwise.
                caught_up = True
                tally.waiting = True
                if not await watch.wait_beyond(next_head - 1):
                    break
                tally.waiting = False
        await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def _subscribe_pattern(
        self,
        request: pb.SubscribeRequest,
        context: grpc.aio.ServicerContext[pb.SubscribeRequest, pb.SubscribeResponse],
    ) -> AsyncIterator[pb.SubscribeResponse]:
        """Subscribe over every log matching `topic_pattern` (and `origin_pattern`)."""
        try:
            pattern = PatternRequest.parse(request)
        except Exception as error:
            await self._fail(context, error)
        if self._notifier.closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        page = min(request.replay_limit or DEFAULT_FETCH_LIMIT, MAX_FETCH_LIMIT, MAX_CHUNK)
        pack = request.max_messages_per_response
        tally = self.streams.open(SUBSCRIBE)

        def deliver(chunk: _Chunk) -> AsyncIterator[pb.SubscribeResponse]:
            return self._deliver(chunk, pack, pb.SubscribeResponse, tally)

        def on_wait(waiting: bool) -> None:
            tally.waiting = waiting

        responses = follow_pattern(
            pattern,
            notifier=self._notifier,
            list_heads=list_heads_reader(self._read, self._store.list_heads),
            read_chunk=self._read_chunk,
            deliver=deliver,
            page=page,
            on_wait=on_wait,
        )
        try:
            async for response in responses:
                yield response
        except Exception as error:
            await self._fail(context, error)
        await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    async def GetHead(
        self,
        request: pb.GetHeadRequest,
        context: grpc.aio.ServicerContext[pb.GetHeadRequest, pb.GetHeadResponse],
    ) -> pb.GetHeadResponse:
        """The log's head, or `{0, false}` for an unknown log."""
        try:
            topic = validate_topic(request.topic)
            origin = self._origin(request.HasField("origin"), request.origin)
            head = await self._read(functools.partial(self._store.log_head, topic, origin))
        except Exception as error:
            await self._fail(context, error)
        return pb.GetHeadResponse(
            head_id=head.head_id,
            found=head.head_id > 0,
            first_head_id=head.first_head_id,
            bytes=head.bytes,
        )

    async def ListHeads(
        self,
        request: pb.ListHeadsRequest,
        context: grpc.aio.ServicerContext[pb.ListHeadsRequest, pb.ListHeadsResponse],
    ) -> pb.ListHeadsResponse:
        """Every log's head by topic then origin key, in pages; or only those changed since."""
        try:
            if request.changed_since:
                return await self._changed_heads(request)
            return await self._head_page(request)
        except Exception as error:
            await self._fail(context, error)

    async def _head_page(self, request: pb.ListHeadsRequest) -> pb.ListHeadsResponse:
        """One keyset page of every head (all of them, up to ~3 MiB, for an original client)."""
        changes = self._notifier.changes
        if request.page_token:
            after, seq, epoch = _heads_page_after(request.page_token)
            if changes is not None and epoch != changes.epoch:
                # A listing begun before a restart goes on by key, but its change numbers
                # mean nothing now: its cursor then covers no change of this run.
                seq = 0
        else:
            # Everything committed up to here is in this listing or changes after `seq`.
            after, seq = None, changes.seq if changes is not None else 0
        unpaged = after is None and not request.page_size
        if unpaged:
            limit, budget = HEADS_UNPAGED_MAX, HEADS_UNPAGED_BUDGET_BYTES
        else:
            limit = min(request.page_size or HEADS_PAGE_DEFAULT, HEADS_PAGE_MAX)
            budget = PACK_BUDGET_BYTES
        heads = await self._read(
            functools.partial(self._store.list_heads, after=after, limit=limit + 1)
        )
        response = pb.ListHeadsResponse()
        _fill_heads(response, heads[:limit], budget)
        if len(response.heads) < len(heads):
            # The model head behind the last entry answered: its key is the keyset position.
            last = heads[len(response.heads) - 1]
            key = (last.topic, last.origin.key)
            response.next_page_token = _heads_page_token(
                key, seq, changes.epoch if changes is not None else ""
            )
        if changes is not None:
            response.cursor = changes.cursor(seq)
        return response

    async def _changed_heads(self, request: pb.ListHeadsRequest) -> pb.ListHeadsResponse:
        """The heads of the logs changed after the request's cursor, in change order."""
        changes = self._notifier.changes
        if changes is None:
            raise InvalidArgumentError(
                "changed_since is not supported by this daemon", field="changed_since"
            )
        seq = changes.cursor_after(request.changed_since)
        limit = min(request.page_size or HEADS_PAGE_DEFAULT, HEADS_PAGE_MAX)
        changed = changes.since(seq, limit + 1)
        # Taken with `changed`: a change noted while the heads are read is not in this page.
        latest = changes.seq
        page = changed[:limit]
        heads = await self._read(
            lambda: [self._store.log_head(topic, origin) for _, (topic, origin) in page]
        )
        response = pb.ListHeadsResponse()
        _fill_heads(response, heads)
        # The cursor covers what this page answered; more pages follow when it was cut.
        covered = page[len(response.heads) - 1][0] if response.heads else latest
        if len(response.heads) < len(changed):
            response.next_page_token = changes.cursor(covered)
        response.cursor = changes.cursor(covered)
        return response

    async def Push(
        self,
        request_iterator: AsyncIterator[pb.PushRequest],
        context: grpc.aio.ServicerContext[pb.PushRequest, pb.PushResponse],
    ) -> AsyncIterator[pb.PushResponse]:
        """A device pushes its logs to this daemon, its upstream (see `push_intake`)."""
        if self._push is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "this daemon serves no Push (--no-push-service)"
            )
        async for response in self._push.serve(request_iterator, context):
            yield response

    async def ListPeerSyncStates(
        self,
        request: pb.ListPeerSyncStatesRequest,
        context: grpc.aio.ServicerContext[
            pb.ListPeerSyncStatesRequest, pb.ListPeerSyncStatesResponse
        ],
    ) -> pb.ListPeerSyncStatesResponse:
        """One page of the recorded peer sync states (all of them for an original client)."""
        try:
            after = _page_after(request.page_token) if request.page_token else None
            if after is None and not request.page_size:
                limit = SYNC_STATES_UNPAGED_MAX
            else:
                limit = min(request.page_size or SYNC_STATES_PAGE_DEFAULT, SYNC_STATES_PAGE_MAX)
            # One more than the page, to tell whether another page follows.
            read = functools.partial(self._store.list_sync_states, after=after, limit=limit + 1)
            states = await self._read(read)
        except Exception as error:
            await self._fail(context, error)
        # The page stays below the 4 MiB default receive limit of gRPC clients.
        page, token = keyset_page(
            states, limit, convert.sync_state_to_pb, lambda s: s.sort_key, PACK_BUDGET_BYTES
        )
        return pb.ListPeerSyncStatesResponse(states=page, next_page_token=token)

    async def DeleteRange(
        self,
        request: pb.DeleteRangeRequest,
        context: grpc.aio.ServicerContext[pb.DeleteRangeRequest, pb.DeleteRangeResponse],
    ) -> pb.DeleteRangeResponse:
        """Tombstone a range of a local log, clamped to its head, erasing payload and headers."""
        await self._writable(context)
        try:
            topic = validate_topic(request.topic)
            ensure_application_topic(topic)
            origin = self._owned(request.HasField("origin"), request.origin)
            if request.from_head_id > request.to_head_id:
                raise InvalidArgumentError(
                    "from_head_id must be <= to_head_id, got "
                    f"{request.from_head_id} > {request.to_head_id}"
                )
            # The store clamps to [1, head]; clamp here too so u64 values beyond what a store
            # can hold never reach it.
            op = DeleteRangeOp(
                topic,
                origin,
                clamp_stored(request.from_head_id),
                clamp_stored(request.to_head_id),
                new_id(),
                now_ms(),
            )
            result = await self._pipeline.submit(op)
            assert isinstance(result, DeleteResult)
        except Exception as error:
            await self._fail(context, error)
        return pb.DeleteRangeResponse(deleted_count=result.deleted_count)

    # -- FIFO -----------------------------------------------------------------------------------

    async def EnqueueFifo(
        self,
        request: pb.EnqueueFifoRequest,
        context: grpc.aio.ServicerContext[pb.EnqueueFifoRequest, pb.EnqueueFifoResponse],
    ) -> pb.EnqueueFifoResponse:
        """Append to the back of a local FIFO queue."""
        await self._writable(context)
        try:
            queue = validate_name("queue", request.queue)
            topic = validate_topic(request.topic)
            ensure_application_topic(topic)
            source = self._owned(request.HasField("source"), request.source, "source")
            target = convert.required_node(request.HasField("target"), request.target, "target")
            validate_payload(request.payload, self._max_payload)
            headers = validate_headers(request.headers) if request.headers else {}
            op = EnqueueOp(
                queue, topic, source, target, request.payload, headers, new_id(), now_ms()
            )
            self._admit(len(op.payload))
            message = await self._pipeline.submit(op)
            assert isinstance(message, FifoMessage)
        except Exception as error:
            await self._fail(context, error)
        self.fifo_leases.signals.notify(queue)
        return pb.EnqueueFifoResponse(message=convert.fifo_to_pb(message))

    async def PeekFifo(
        self,
        request: pb.PeekFifoRequest,
        context: grpc.aio.ServicerContext[pb.PeekFifoRequest, pb.PeekFifoResponse],
    ) -> pb.PeekFifoResponse:
        """The front of a queue; NOT_FOUND when it is empty.

        With leases in use, the front is the lowest message no live lease holds (see
        `msgbus_server.fifo_leases`): an original client never sees a message a worker holds.
        """
        try:
            queue = validate_name("queue", request.queue)
            peek = functools.partial(self._store.peek_fifo, queue, now_ms())
            message = await self._read(peek)
            if message is None:
                raise NotFoundError("fifo queue is empty")
        except Exception as error:
            await self._fail(context, error)
        return pb.PeekFifoResponse(message=convert.fifo_to_pb(message))

    async def AckFifo(
        self,
        request: pb.AckFifoRequest,
        context: grpc.aio.ServicerContext[pb.AckFifoRequest, pb.AckFifoResponse],
    ) -> pb.AckFifoResponse:
        """Remove the front if it is `message_id`; otherwise `accepted=false`."""
        return pb.AckFifoResponse(accepted=await self._settle_front(AckOp, request, context))

    async def RejectFifo(
        self,
        request: pb.RejectFifoRequest,
        context: grpc.aio.ServicerContext[pb.RejectFifoRequest, pb.RejectFifoResponse],
    ) -> pb.RejectFifoResponse:
        """Count a failed attempt on the front if it is `message_id`; it stays at the front."""
        return pb.RejectFifoResponse(accepted=await self._settle_front(RejectOp, request, context))

    async def _settle_front(
        self,
        op: type[AckOp | RejectOp],
        request: pb.AckFifoRequest | pb.RejectFifoRequest,
        context: grpc.aio.ServicerContext[Req, Resp],
    ) -> bool:
        try:
            queue = validate_name("queue", request.queue)
            message_id = validate_name("message_id", request.message_id)
            # The front no live lease holds; a reject counts toward the queue's max_attempts.
            limit = self.fifo_leases.max_attempts.for_queue(queue)
            accepted = bool(await self._pipeline.submit(op(queue, message_id, now_ms(), limit)))
        except Exception as error:
            await self._fail(context, error)
        return accepted

    # -- durable cursors (msgbus_server.cursors) ---------------------------------------------

    async def CommitCursor(
        self,
        request: pb.CommitCursorRequest,
        context: grpc.aio.ServicerContext[pb.CommitCursorRequest, pb.CommitCursorResponse],
    ) -> pb.CommitCursorResponse:
        """Store a durable cursor, answered once durable; see `CursorRpcs.commit`."""
        await self._writable(context)
        return await self._cursors.commit(request, context)

    async def GetCursor(
        self,
        request: pb.GetCursorRequest,
        context: grpc.aio.ServicerContext[pb.GetCursorRequest, pb.GetCursorResponse],
    ) -> pb.GetCursorResponse:
        """Read one durable cursor."""
        return await self._cursors.get(request, context)

    async def ListCursors(
        self,
        request: pb.ListCursorsRequest,
        context: grpc.aio.ServicerContext[pb.ListCursorsRequest, pb.ListCursorsResponse],
    ) -> pb.ListCursorsResponse:
        """One page of durable cursors."""
        return await self._cursors.list(request, context)

    async def DeleteCursor(
        self,
        request: pb.DeleteCursorRequest,
        context: grpc.aio.ServicerContext[pb.DeleteCursorRequest, pb.DeleteCursorResponse],
    ) -> pb.DeleteCursorResponse:
        """Delete one cursor, or every cursor of a name."""
        await self._writable(context)
        return await self._cursors.delete(request, context)

    # -- FIFO leases (msgbus_server.fifo_leases) ---------------------------------------------

    async def LeaseFifo(
        self,
        request: pb.LeaseFifoRequest,
        context: grpc.aio.ServicerContext[pb.LeaseFifoRequest, pb.LeaseFifoResponse],
    ) -> pb.LeaseFifoResponse:
        """Lease messages nobody holds, in FIFO order; see `FifoLeaseRpcs.lease`."""
        await self._writable(context)
        return await self.fifo_leases.lease(request, context)

    async def AckFifoLease(
        self,
        request: pb.AckFifoLeaseRequest,
        context: grpc.aio.ServicerContext[pb.AckFifoLeaseRequest, pb.AckFifoLeaseResponse],
    ) -> pb.AckFifoLeaseResponse:
        """Remove a leased message."""
        await self._writable(context)
        return await self.fifo_leases.ack(request, context)

    async def RejectFifoLease(
        self,
        request: pb.RejectFifoLeaseRequest,
        context: grpc.aio.ServicerContext[pb.RejectFifoLeaseRequest, pb.RejectFifoLeaseResponse],
    ) -> pb.RejectFifoLeaseResponse:
        """End a lease as a failed attempt (dead-lettered at max_attempts)."""
        await self._writable(context)
        return await self.fifo_leases.reject(request, context)

    async def ExtendFifoLease(
        self,
        request: pb.ExtendFifoLeaseRequest,
        context: grpc.aio.ServicerContext[pb.ExtendFifoLeaseRequest, pb.ExtendFifoLeaseResponse],
    ) -> pb.ExtendFifoLeaseResponse:
        """Keep a held lease longer."""
        await self._writable(context)
        return await self.fifo_leases.extend(request, context)

    async def ListFifo(
        self,
        request: pb.ListFifoRequest,
        context: grpc.aio.ServicerContext[pb.ListFifoRequest, pb.ListFifoResponse],
    ) -> pb.ListFifoResponse:
        """One page of a queue, leased messages included."""
        return await self.fifo_leases.list(request, context)

    async def RedriveFifo(
        self,
        request: pb.RedriveFifoRequest,
        context: grpc.aio.ServicerContext[pb.RedriveFifoRequest, pb.RedriveFifoResponse],
    ) -> pb.RedriveFifoResponse:
        """Move the dead letters of `QUEUE.dead` back to the queue."""
        await self._writable(context)
        return await self.fifo_leases.redrive(request, context)

    # -- health ---------------------------------------------------------------------------------

    async def Health(
        self,
        request: pb.HealthRequest,
        context: grpc.aio.ServicerContext[pb.HealthRequest, pb.HealthResponse],
    ) -> pb.HealthResponse:
        """Answer SERVING, or NOT_SERVING while the store fails or the daemon shuts down."""
        status = "SERVING" if self._health.serving else "NOT_SERVING"
        return pb.HealthResponse(status=status, node=self._node_pb)

    async def Ready(
        self,
        request: pb.ReadyRequest,
        context: grpc.aio.ServicerContext[pb.ReadyRequest, pb.ReadyResponse],
    ) -> pb.ReadyResponse:
        """Ask the store a trivial query (not a scan): READY, or NOT_READY with the reason."""
        try:
            await self._read(self._store.check)
            self._health.report(Subsystem.STORE, True)
        except Exception as problem:
            if not isinstance(problem, MsgbusError):
                logger.exception("store check failed unexpectedly")
            self._health.report(Subsystem.STORE, False, storage_reason(problem))
        error = self._health.reason()
        if error:
            return pb.ReadyResponse(
                ready=False, status="NOT_READY", error=error, node=self._node_pb
            )
        return pb.ReadyResponse(ready=True, status="READY", node=self._node_pb)
