"""One log's batches from one peer (`BatchFetcher`), and what a sync failure is (`SyncFailure`).

Every Fetch runs under its deadline, in the packed or the original one-per-response form, with
at most one batch in flight ahead of the one being committed. A batch holds at most its count
and about its byte budget (a larger message comes alone), and a message above
`--max-payload-bytes` ends it: the messages before it are kept, the log is refused by name.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from grpc import aio

from msgbus_core import MsgbusError, NodeId
from msgbus_core.limits import DEFAULT_MAX_PAYLOAD_BYTES, READ_BUDGET_BYTES, receive_limit_bytes
from msgbus_core.model import Message
from msgbus_core.store import read_size
from msgbus_proto import pb, rpc
from msgbus_server.convert import message_from_envelope, node_to_pb

__all__ = ["BatchFetcher", "FailureKind", "ServedBatch", "SyncFailure", "envelopes"]

# Status codes that say the peer (or the path to it) is down rather than that one request was
# bad: they end the pass and back the whole peer off. Any other code fails only the log.
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


class BatchFetcher:
    """Fetches one log from one peer in batches of at most `limit` messages and ~`max_bytes`.

    `close()` cancels a prefetch that is still in flight; call it however the pull ends, so a
    failure, a cancellation (shutdown) or a bug leaves no Fetch behind.
    """

    def __init__(
        self,
        stub: rpc.MsgbusServiceAsyncStub,
        endpoint: str,
        log: tuple[str, NodeId],
        *,
        limit: int,
        packing: int,
        timeout_s: float,
        max_bytes: int = READ_BUDGET_BYTES,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        receive_limit: int | None = None,
    ) -> None:
        """A fetcher of `log` that keeps each batch within `limit` messages and ~`max_bytes`.

        `receive_limit` is the channel's, named when a response exceeds it (None: derived from
        `max_payload_bytes`, as `PeerWorker` sets it).
        """
        self._stub = stub
        self._endpoint = endpoint
        self._topic, self._origin = log
        self._limit = limit
        self._asked = limit
        """The count the next Fetch asks for: about `max_bytes` at the last batch's sizes."""
        self._packing = packing
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._max_payload = max_payload_bytes
        self._receive_limit = (
            receive_limit_bytes(max_payload_bytes) if receive_limit is None else receive_limit
        )
        self._prefetch: asyncio.Task[ServedBatch] | None = None
        self._prefetch_from = 0

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

    async def _fetch(self, from_head_id: int) -> ServedBatch:
        limit = self._asked
        request = pb.FetchRequest(
            topic=self._topic,
            origin=node_to_pb(self._origin),
            from_head_id=from_head_id,
            limit=limit,
            max_messages_per_response=self._packing,
        )
        # The deadline covers the whole stream, so a peer that stalls mid-stream cannot hold
        # this task longer than the fetch timeout.
        call = self._stub.Fetch(request, timeout=self._timeout_s)
        messages: list[Message] = []
        size = 0
        problem: str | None = None
        first_head_id = 0
        try:
            async for response in call:
                if not messages and response.first_head_id:
                    first_head_id = response.first_head_id
                for envelope in envelopes(response):
                    if not envelope.HasField("origin"):
                        raise SyncFailure(FailureKind.LOG, "message origin is required")
                    if len(envelope.payload) > self._max_payload:
                        problem = self._oversized(envelope.head_id, len(envelope.payload))
                        break
                    messages.append(message_from_envelope(envelope))
                    size += read_size(messages[-1])
                # A peer that ignores the limit or sends more than the budget does not get to
                # fill our memory: the rest is fetched with the next batch.
                if problem or len(messages) >= limit or size >= self._max_bytes:
                    break
        except aio.AioRpcError as error:
            if not _over_receive_limit(error):
                raise SyncFailure.from_rpc(self._endpoint, "Fetch", error) from None
            # A response above the receive limit: what came before it is good.
            problem = self._too_large(messages, error)
        finally:
            call.cancel()
        messages = messages[:limit]
        if messages:
            self._asked = min(max(self._max_bytes * len(messages) // max(size, 1), 1), self._limit)
        return ServedBatch(messages, problem, first_head_id)

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
        previous = 0
        for index, message in enumerate(batch):
            if message.topic != topic or message.origin != origin:
                return ServedBatch(
                    batch[:index],
                    first_head_id=served.first_head_id,
                    problem=f"peer {self._endpoint} returned mismatched message for topic={topic} "
                    f"origin={origin.key}: got topic={message.topic} "
                    f"origin={message.origin.key}",
                )
            if message.head_id <= previous:
                return ServedBatch(
                    batch[:index],
                    first_head_id=served.first_head_id,
                    problem=f"peer {self._endpoint} served topic={topic} origin={origin.key} out "
                    f"of order: head_id {message.head_id} after {previous}",
                )
            previous = message.head_id
        return served
