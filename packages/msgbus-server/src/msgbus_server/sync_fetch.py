"""One log's batches from one peer (`BatchFetcher`), and what a sync failure is (`SyncFailure`).

Every Fetch runs in the packed or the original one-per-response form, with at most one batch in
flight ahead of the one being committed. A batch holds at most its count and about its byte
budget (a larger message comes alone), and a message above `--max-payload-bytes` ends it: the
messages before it are kept, the log is refused by name.

Transfers resume. Each response has its own idle deadline (`--sync-response-idle-ms`), so a long
transfer that keeps moving is never cut short; the stream's own deadline is only a backstop. A
stream that stalls or breaks after some messages keeps them: the batch is the prefix, with the
problem, and the caller commits the prefix before it records the failure on the log. After a
deadline the log's batch halves (down to one message); each complete batch doubles it again, up
to the batch limit. `BatchLimits` keeps where each log's batch stands from one pass to the next.

Without `--sync-batch-limit` the batch adapts to the link (`AdaptiveBudget`): its byte budget
starts small, doubles after each full batch that took less than `FAST_FETCH_S` and halves after
one that took more than `SLOW_FETCH_S`, always within `READ_BUDGET_BYTES` and `MAX_FETCH_LIMIT`
messages. A fast link reaches the largest batch within a few round trips (the fast setting is
the default); a slow one keeps batches that arrive well inside the idle deadline, so a cut costs
little. An explicit `--sync-batch-limit` fixes the count and keeps the full byte budget.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc
from grpc import aio

from msgbus_core import MsgbusError, NodeId
from msgbus_core.limits import DEFAULT_MAX_PAYLOAD_BYTES, READ_BUDGET_BYTES, receive_limit_bytes
from msgbus_core.model import Message
from msgbus_core.store import read_size
from msgbus_proto import pb, rpc
from msgbus_server.convert import message_from_envelope, node_to_pb
from msgbus_server.sync_state import LogId

__all__ = [
    "ADAPTIVE_START_BYTES",
    "DEFAULT_RESPONSE_IDLE_TIMEOUT_S",
    "FAST_FETCH_S",
    "SLOW_FETCH_S",
    "AdaptiveBudget",
    "FETCH_STREAM_CAP_S",
    "BatchFetcher",
    "BatchLimits",
    "FailureKind",
    "RuleRefusal",
    "ServedBatch",
    "SyncFailure",
    "envelopes",
]

DEFAULT_RESPONSE_IDLE_TIMEOUT_S = 30.0
"""How long a Fetch may go without a response unless `--sync-response-idle-ms` says."""
FETCH_STREAM_CAP_S = 600.0
"""The backstop deadline of one whole Fetch stream (10 minutes), far above any idle deadline.

It bounds a peer that trickles responses just inside the idle deadline forever; a batch (at most
`--sync-batch-limit` messages and about 8 MiB) that needs longer is cut there, keeps its prefix
and halves like after an idle deadline."""

ADAPTIVE_START_BYTES = 256 * 1024
"""The byte budget of an adaptive log's first batch: about 1 s on a 2 Mbit/s link, a few ms on
loopback, so neither a slow link nor a fast one pays much for the first guess."""
ADAPTIVE_MIN_BYTES = 32 * 1024
"""The smallest adaptive budget: a slow link still moves a useful batch per round trip (a larger
message still comes alone)."""
READ_SIZE_GUESS = 16 * 1024
"""The message size an adaptive log's first batch assumes (16 messages of the start budget), so
a log of large messages does not start with a Fetch of thousands of them; the batches after it
are counted at the sizes seen."""
FAST_FETCH_S = 0.25
"""A full batch fetched in less than this doubles the adaptive budget: the round trip, not the
bytes, dominated it."""
SLOW_FETCH_S = 2.0
"""A batch that took longer than this halves the adaptive budget: the link is slow, and smaller
batches keep each Fetch well inside the idle deadline and lose less to a cut."""


@dataclass(slots=True)
class AdaptiveBudget:
    """The byte budget of one log's batches, adapted to how long each Fetch took.

    Grows while fetches are fast and full, shrinks on slow ones; never above `ceiling` (the
    memory bound of a batch) nor below `ADAPTIVE_MIN_BYTES`.
    """

    ceiling: int = READ_BUDGET_BYTES
    bytes: int = ADAPTIVE_START_BYTES

    def __post_init__(self) -> None:
        self.bytes = min(max(self.bytes, ADAPTIVE_MIN_BYTES), self.ceiling)

    def note(self, elapsed_s: float, *, full: bool) -> None:
        """Adapt after one Fetch of `elapsed_s`; `full` when it stopped at its count or bytes."""
        if elapsed_s > SLOW_FETCH_S:
            self.bytes = max(self.bytes // 2, min(ADAPTIVE_MIN_BYTES, self.ceiling))
        elif full and elapsed_s < FAST_FETCH_S:
            self.bytes = min(self.bytes * 2, self.ceiling)


# Status codes that say the peer (or the path to it) is down rather than that one request was
# bad: they end the pass and back the whole peer off. Any other code fails only the log. A Fetch
# that fails with them after it received something is only the log's failure (see `_fetch`).
_PEER_DOWN_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


class FailureKind(enum.Enum):
    """What failed, which decides what a sync pass does next."""

    PEER = "peer unavailable"
    """Unreachable, hung, or not who it must be: the pass ends and the peer backs off."""
    LOG = "log refused"
    """This log cannot be synced from this peer now; it is recorded, the other logs go on."""
    STORE = "local store"
    """The local store or commit pipeline failed: recorded on the log (or peer) it hit."""
    BUG = "internal error"
    """Anything else: logged with its traceback, and the peer backs off."""


class SyncFailure(Exception):
    """A failure in a sync pass, classified; `str()` is the text recorded in sync state."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    @classmethod
    def of(cls, error: Exception) -> SyncFailure:
        """The one classification of an exception raised during a sync pass.

        Peer calls classify their own errors (`from_rpc`) and the rules raise `SyncFailure`;
        what is left is the local store's `MsgbusError`, or a bug.
        """
        if isinstance(error, SyncFailure):
            return error
        if isinstance(error, MsgbusError):
            return cls(FailureKind.STORE, f"local store: {error}")
        return cls(FailureKind.BUG, f"internal error: {error!r}")

    @classmethod
    def from_rpc(
        cls, endpoint: str, what: str, error: aio.AioRpcError, *, whole_peer: bool = False
    ) -> SyncFailure:
        """A failed call to a peer: the peer is down, or (unless `whole_peer`) the log failed."""
        code = error.code()
        text = f"peer {endpoint} {what} failed: {code.name} {error.details() or ''}".rstrip()
        down = whole_peer or code in _PEER_DOWN_CODES
        return cls(FailureKind.PEER if down else FailureKind.LOG, text)


class RuleRefusal(SyncFailure):
    """A log refused by an accept rule (a conflict, a gap, a payload above the limit, ...).

    Always of kind LOG. Unlike a transfer that stalled or broke, it says the peer serves data
    this node must not take; the metrics count it (`sync_stats.PeerStats.refused`).
    """


def envelopes(response: pb.FetchResponse) -> Iterable[pb.MessageEnvelope]:
    """The envelopes one Fetch response carries, in head order.

    An original peer sends one in `message`; a peer that honours the opt-in packing extension
    (`FetchRequest.max_messages_per_response`) sends many in `messages`. Both are accepted, so
    turning packing on is only a matter of setting the request field. A response with neither
    is skipped, as in the original.
    """
    if response.HasField("message"):
        yield response.message
    yield from response.messages


def _over_receive_limit(error: aio.AioRpcError) -> bool:
    """True when gRPC itself refused a response for its size (not a status the peer sent)."""
    return error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (
        error.details() or ""
    )


@dataclass(frozen=True, slots=True)
class ServedBatch:
    """What one Fetch served: the usable prefix, and why the rest is not usable, if it is not."""

    messages: list[Message]
    problem: str | None = None
    first_head_id: int = 0
    """Where the peer said its copy of the log starts, when the batch starts after a trimmed
    prefix (`FetchResponse.first_head_id`); 0 otherwise, and always from original peers."""
    refused: bool = False
    """The problem is an accept rule's refusal (a payload above the limit, another log's
    message, heads out of order), not a stream that stalled or broke."""


@dataclass(slots=True)
class BatchLimits:
    """Where each log's batch size stands with one peer, from one pass to the next.

    Only logs below `ceiling` (halved after a deadline, not yet grown back) are kept, at most
    `capacity` of them: a log dropped beyond that starts again at the ceiling, which is safe
    (its next deadline halves it again).
    """

    ceiling: int
    capacity: int = 10_000
    _below: dict[LogId, int] = field(default_factory=dict)

    def get(self, log: LogId) -> int:
        """The count `log`'s next batch may ask for."""
        return self._below.get(log, self.ceiling)

    def set(self, log: LogId, limit: int) -> None:
        """Remember where `log`'s batch ended a pull (`BatchFetcher.limit`)."""
        self._below.pop(log, None)
        if limit >= self.ceiling:
            return
        self._below[log] = max(limit, 1)
        if len(self._below) > self.capacity:
            del self._below[next(iter(self._below))]  # the longest untouched


class BatchFetcher:
    """Fetches one log from one peer in batches of at most `limit` messages and ~`max_bytes`.

    `close()` cancels a prefetch that is still in flight; call it however the pull ends, so a
    failure, a cancellation (shutdown) or a bug leaves no Fetch behind. `limit` (the property)
    is where the batch size stands when the pull ends, for `BatchLimits`.
    """

    def __init__(
        self,
        stub: rpc.MsgbusServiceAsyncStub,
        endpoint: str,
        log: tuple[str, NodeId],
        *,
        limit: int,
        packing: int,
        timeout_s: float = FETCH_STREAM_CAP_S,
        idle_timeout_s: float = DEFAULT_RESPONSE_IDLE_TIMEOUT_S,
        start_limit: int | None = None,
        channel: aio.Channel | None = None,
        max_bytes: int = READ_BUDGET_BYTES,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        receive_limit: int | None = None,
        adaptive: AdaptiveBudget | None = None,
    ) -> None:
        """A fetcher of `log` that keeps each batch within `limit` messages and ~`max_bytes`.

        Args:
            stub: The peer's stub.
            endpoint: The peer's endpoint, as failures name it.
            log: The (topic, origin) to fetch.
            limit: The most messages a batch holds (the batch limit).
            packing: Messages per response to ask for; 0 for one per response.
            timeout_s: The backstop deadline of one whole Fetch stream.
            idle_timeout_s: How long the stream may go without a response.
            start_limit: Where this log's batch stands after earlier deadlines (`BatchLimits`);
                None starts at `limit`.
            channel: The stub's channel: when a Fetch that received nothing hits its idle
                deadline, its state tells a lost connection (the peer's failure) from a silent
                log (the log's). None counts as a lost connection.
            max_bytes: About the most bytes a batch holds.
            max_payload_bytes: A larger payload is refused, by name.
            receive_limit: The channel's receive limit, named when a response exceeds it (None:
                derived from `max_payload_bytes`, as `PeerWorker` sets it).
            adaptive: The byte budget to adapt by round-trip time (no `--sync-batch-limit`);
                None keeps `max_bytes` for every batch.
        """
        self._stub = stub
        self._endpoint = endpoint
        self._topic, self._origin = log
        self._ceiling = limit
        self._limit = limit if start_limit is None else min(max(start_limit, 1), limit)
        """The count a batch may hold now: halved after a deadline, doubled after a success."""
        self._by_bytes = limit
        """The count of about `max_bytes` at the last batch's sizes."""
        self._asked = self._limit
        """The count the next Fetch asks for: the smaller of the two above."""
        self._packing = packing
        self._timeout_s = timeout_s
        self._idle_s = idle_timeout_s
        self._channel = channel
        self._max_bytes = max_bytes
        self._adaptive = adaptive
        if adaptive is not None:
            adaptive.ceiling = min(adaptive.ceiling, max_bytes)
            adaptive.bytes = min(adaptive.bytes, adaptive.ceiling)
            self._asked = min(self._asked, self._count_for(adaptive.bytes, READ_SIZE_GUESS))
        self._max_payload = max_payload_bytes
        self._receive_limit = (
            receive_limit_bytes(max_payload_bytes) if receive_limit is None else receive_limit
        )
        self._prefetch: asyncio.Task[ServedBatch] | None = None
        self._prefetch_from = 0

    @property
    def limit(self) -> int:
        """The count this log's next batch may ask for (below the batch limit after deadlines)."""
        return self._limit

    async def batch(self, from_head_id: int) -> ServedBatch:
        """The batch from `from_head_id`: the prefetched one when it starts there."""
        if self._prefetch is not None and self._prefetch_from == from_head_id:
            prefetch, self._prefetch = self._prefetch, None
            served = await prefetch
        else:
            self.close()
            served = await self._fetch(from_head_id)
        return self._one_log_prefix(served)

    def prefetch(self, from_head_id: int) -> None:
        """Start fetching the batch from `from_head_id` while the caller commits this one."""
        self.close()
        self._prefetch_from = from_head_id
        self._prefetch = asyncio.create_task(self._fetch(from_head_id))

    def close(self) -> None:
        """Cancel the prefetch, if one is in flight; its outcome is of no interest."""
        task, self._prefetch = self._prefetch, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        # Retrieve the outcome so asyncio never reports "exception was never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _budget(self) -> int:
        """The bytes the next batch may hold: the adaptive budget, else `max_bytes`."""
        return self._max_bytes if self._adaptive is None else self._adaptive.bytes

    @staticmethod
    def _count_for(budget: int, message_size: int) -> int:
        return max(budget // max(message_size, 1), 1)

    async def _fetch(self, from_head_id: int) -> ServedBatch:
        limit = self._asked
        budget = self._budget()
        began = time.monotonic()
        request = pb.FetchRequest(
            topic=self._topic,
            origin=node_to_pb(self._origin),
            from_head_id=from_head_id,
            limit=limit,
            max_messages_per_response=self._packing,
        )
        # Each response gets its own idle deadline below; the stream's deadline is a backstop.
        call = self._stub.Fetch(request, timeout=self._timeout_s)
        messages: list[Message] = []
        size = 0
        problem: str | None = None
        first_head_id = 0
        deadline = False
        refused = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle_s):
                        response = await call.read()
                except TimeoutError:
                    deadline = True
                    problem = self._silent(messages, from_head_id)
                    break
                if not isinstance(response, pb.FetchResponse):
                    break  # the end of the stream (grpc.aio.EOF)
                if not messages and response.first_head_id:
                    first_head_id = response.first_head_id
                added, problem = self._decode(response, messages)
                size += added
                refused = problem is not None
                # A peer that ignores the limit or sends more than the budget does not get to
                # fill our memory: the rest is fetched with the next batch.
                if problem or len(messages) >= limit or size >= budget:
                    break
        except aio.AioRpcError as error:
            if _over_receive_limit(error):
                # A response above the receive limit: what came before it is good.
                problem = self._too_large(messages, error)
                refused = True
            elif messages:
                # The stream broke (reset, peer restarting, the backstop deadline) after some
                # messages: they are good, and committing them is this transfer's progress. The
                # log fails; a peer that is really down fails the pass at its next call.
                failed = SyncFailure.from_rpc(self._endpoint, "Fetch", error)
                problem = f"{failed} on {self._where()} after head_id {messages[-1].head_id}"
                deadline = error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            else:
                raise SyncFailure.from_rpc(self._endpoint, "Fetch", error) from None
        finally:
            call.cancel()
        full = len(messages) >= limit or size >= budget
        messages = messages[:limit]
        if self._adaptive is not None:
            self._adaptive.note(time.monotonic() - began, full=full and problem is None)
        self._adapt(messages, size, deadline=deadline, complete=problem is None)
        return ServedBatch(messages, problem, first_head_id, refused)

    def _decode(self, response: pb.FetchResponse, into: list[Message]) -> tuple[int, str | None]:
        """Append a response's messages to `into`: their read size, and the refusal that ended it.

        Every caught-up message passes this loop, so what it uses is bound once per response.
        """
        max_payload = self._max_payload
        append = into.append
        size = 0
        for envelope in envelopes(response):
            if not envelope.HasField("origin"):
                raise SyncFailure(FailureKind.LOG, "message origin is required")
            payload_bytes = len(envelope.payload)
            if payload_bytes > max_payload:
                return size, self._oversized(envelope.head_id, payload_bytes)
            message = message_from_envelope(envelope)
            append(message)
            size += read_size(message)
        return size, None

    def _adapt(self, messages: list[Message], size: int, *, deadline: bool, complete: bool) -> None:
        """Size the next batch after one Fetch.

        By bytes (the adaptive budget, else `max_bytes`) at this batch's sizes; the count halves
        after a deadline and doubles after a complete batch, within 1 and the batch limit.
        """
        if messages:
            self._by_bytes = self._count_for(self._budget(), max(size, 1) // len(messages))
        if deadline:
            self._limit = max(self._asked // 2, 1)
        elif complete:
            self._limit = min(self._limit * 2, self._ceiling)
        self._asked = min(self._by_bytes, self._limit)

    def _silent(self, received: list[Message], from_head_id: int) -> str:
        """The problem of a stream that sent nothing for the idle deadline.

        Raises the peer's failure when the peer, not the log, is what went silent.
        """
        after = received[-1].head_id if received else from_head_id - 1
        problem = (
            f"no response from peer {self._endpoint} for {self._idle_s:g}s on {self._where()} "
            f"after head_id {after}"
        )
        # A stream that received something is a slow log: the peer was answering. One that
        # received nothing is still the log's, as long as the channel is connected: the peer
        # answered Health and ListHeads this pass, and a hung peer fails its next Health. A
        # channel that lost its connection while waiting means the peer (or the path) is down.
        if not received and not self._connected():
            raise SyncFailure(FailureKind.PEER, f"{problem} (connection lost)")
        return problem

    def _connected(self) -> bool:
        return (
            self._channel is not None
            and self._channel.get_state() is grpc.ChannelConnectivity.READY
        )

    def _where(self) -> str:
        return f"topic={self._topic} origin={self._origin.key}"

    def _oversized(self, head_id: int, payload_bytes: int) -> str:
        return (
            f"refused from peer {self._endpoint}: {self._where()} head_id {head_id} has a "
            f"payload of {payload_bytes} bytes, above --max-payload-bytes {self._max_payload}"
        )

    def _too_large(self, received: list[Message], error: aio.AioRpcError) -> str:
        after = f"after head_id {received[-1].head_id}" if received else "at its first head"
        return (
            f"refused from peer {self._endpoint}: {self._where()} {after} came in a Fetch "
            f"response above this node's receive limit of {self._receive_limit} bytes "
            f"(--max-payload-bytes {self._max_payload}): {error.details() or 'RESOURCE_EXHAUSTED'}"
        )

    def _one_log_prefix(self, served: ServedBatch) -> ServedBatch:
        """The part of a batch that is this log in strictly ascending head order.

        ReplicateOp takes messages of one log in ascending order, so a peer that mixes in another
        log's messages or repeats heads is stopped here with a clear error. Everything else (a
        gap, a copy that differs from a stored row, a malformed marker) is for the store's accept
        rules to judge; a batch that starts below the requested head is judged there too, so a
        peer whose history diverged from ours shows up as a conflict.
        """
        topic, origin = self._topic, self._origin
        batch = served.messages
        if batch and batch[0].origin == origin:
            # Converted messages share one NodeId per origin (`convert.message_from_envelope`):
            # compared by identity first, the check skips a dataclass __eq__ per message.
            origin = batch[0].origin
        previous = 0
        for index, message in enumerate(batch):
            if message.topic != topic or (
                message.origin is not origin and message.origin != origin
            ):
                return ServedBatch(
                    batch[:index],
                    first_head_id=served.first_head_id,
                    refused=True,
                    problem=f"peer {self._endpoint} returned mismatched message for topic={topic} "
                    f"origin={origin.key}: got topic={message.topic} "
                    f"origin={message.origin.key}",
                )
            if message.head_id <= previous:
                return ServedBatch(
                    batch[:index],
                    first_head_id=served.first_head_id,
                    refused=True,
                    problem=f"peer {self._endpoint} served topic={topic} origin={origin.key} out "
                    f"of order: head_id {message.head_id} after {previous}",
                )
            previous = message.head_id
        return served
