"""The hub side of the Push RPC: devices that dialled this daemon push their logs over it.

One Push stream per device (see the proto's `PushRequest`/`PushResponse`): a hello, then
offers and batches, each answered in order by one response. The stream is a coroutine waiting
on its next request, so an idle device costs its connection and nothing else: no task, no
timer, no buffer. A stream holds at most one batch (bounded by `MAX_PUSH_BATCH_BYTES` and the
server's receive limit) and the sync state book of the logs it touched.

- Who the pusher is: `identify_pusher`, the one place that decides (the certificate identity
  on mTLS; the hello's NodeId only on loopback or a Unix socket, with a warning once per
  pusher; anything else is refused).
- What it may push: `PushAcceptance.refusal`: with a policy, its `push` rule decides every log
  (as for pulled data, `peer_authz`); without one, logs of the pusher's own origin (its
  `$msgbus.delete` markers included), and other origins only with `--accept-relayed`. Logs of
  this daemon's own origin are never taken. A refusal is answered in the ack (or flagged in the
  offer reply), recorded in the pusher's sync state and audited once; the stream goes on.
- How a batch is applied: exactly like a pulled batch, one `ReplicateOp` through the commit
  pipeline (identical copies are no-ops, deleted wins, a gap or another history conflicts,
  markers are validated), after the disk budget's check. The ack carries the durable head.

Sync state is keyed by the pusher's identity (`sync_state.pushed_record_peer`, shown with
direction "pushed"); it is written at most once per `STATE_FLUSH_S` per stream and at its end.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from msgbus_core import MsgbusError, NodeId, ReplicateOp, ReplicateResult
from msgbus_core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
)
from msgbus_core.model import Message
from msgbus_core.store import MsgbusStore
from msgbus_core.validation import validate_payload, validate_topic
from msgbus_proto import pb
from msgbus_server.authz import PUSH, AuditLog
from msgbus_server.convert import message_from_envelope, node_from_pb, node_to_pb
from msgbus_server.disk_budget import DiskBudget
from msgbus_server.identity import Caller, certificate_node
from msgbus_server.pipeline import CommitPipeline
from msgbus_server.policy import LogRef, Policy
from msgbus_server.push_stats import PushStats
from msgbus_server.status import failure
from msgbus_server.sync_state import (
    Heads,
    LogId,
    SyncStateBook,
    flush_book,
    pushed_record_peer,
)

__all__ = [
    "MAX_OFFER_HEADS",
    "MAX_PUSH_BATCH_BYTES",
    "PushAcceptance",
    "PushIntake",
    "identify_pusher",
]

log = logging.getLogger("msgbus_server.push")

MAX_PUSH_BATCH_BYTES = 3 * 1024 * 1024
"""The largest batch taken, in bytes of payloads and headers (the welcome says so): like a
packed Fetch page, below the 4 MiB default receive limit. One larger message comes alone."""
MAX_OFFER_HEADS = 1_000
"""The most heads one offer may list."""
MAX_BATCH_MESSAGES = 10_000
"""The most messages one batch may carry (a Fetch page's limit)."""
STATE_FLUSH_S = 1.0
"""How often a busy stream writes its pusher's sync state (and once at its end)."""
AUDIT_RPC = "Push"
_CERTIFICATE_DEFAULT = "uri"
"""How a certificate names its node without a policy saying otherwise (`identity`)."""


@dataclass(frozen=True, slots=True)
class Pusher:
    """Who pushes on one stream."""

    node: NodeId
    verified: bool
    """True when a client certificate says so; False when only the hello does (loopback)."""


def _loopback(peer: str) -> bool:
    """Whether gRPC's peer string names a loopback address or a Unix socket."""
    if peer.startswith("unix"):
        return True
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def identify_pusher(
    context: grpc.aio.ServicerContext[pb.PushRequest, pb.PushResponse],
    hello: NodeId,
    certificate_identity: str,
) -> Pusher:
    """The identity a Push stream's pusher is held to; the one place that decides it.

    With a client certificate that names a node (`identity.certificate_node`), that node, and
    a hello naming another one is refused. Without one, the hello stands in, but only from
    loopback or a Unix socket (development): a pusher elsewhere must present a certificate.

    Raises:
        PermissionDeniedError: the hello contradicts the certificate, or an unverified pusher
            is not on loopback.
    """
    certified = certificate_node(context.auth_context(), certificate_identity)
    if certified is not None:
        if certified != hello:
            raise PermissionDeniedError(
                f"hello.node {hello.key} is not the identity of the client certificate, "
                f"{certified.key}",
                field="hello.node",
            )
        return Pusher(certified, verified=True)
    if not _loopback(context.peer()):
        raise PermissionDeniedError(
            f"pusher {hello.key} from {context.peer()} has no client certificate naming a "
            "node: only loopback pushers may identify themselves by their hello",
            field="hello.node",
        )
    return Pusher(hello, verified=False)


@dataclass(slots=True)
class PushAcceptance:
    """What pushers may push: the policy's push rule, else own origin (and `--accept-relayed`)."""

    local_node: NodeId
    accept_relayed: bool
    policy: Callable[[], Policy | None]
    """The policy in force now (`Authorizer.policy`); None: the defaults above."""
    audit: Callable[[], AuditLog] | None = None
    """Where refusals are audited (`Authorizer.audit`, looked up when needed)."""
    _audited: dict[tuple[str, LogId], str] = field(default_factory=dict)
    """Refusals already audited, per pusher and log (bounded: see `refusal`)."""

    def certificate_identity(self) -> str:
        """How client certificates name their node, as the policy in force says."""
        policy = self.policy()
        return policy.certificate_identity if policy is not None else _CERTIFICATE_DEFAULT

    def refusal(self, pusher: Pusher, log_id: LogId) -> str | None:
        """Why `pusher` may not push `log_id`; None when it may."""
        topic, origin = log_id
        who = pusher.node.key if pusher.verified else f"{pusher.node.key}, unverified"
        what = f"push topic {topic!r} of origin {origin.key}"
        if origin == self.local_node:
            return f"refused: pusher {who} may not {what}: this node's own logs are never taken"
        policy = self.policy()
        if policy is None:
            if origin == pusher.node or self.accept_relayed:
                return None
            return (
                f"refused: pusher {who} may not {what}: a pusher pushes its own logs; "
                "relayed origins need --accept-relayed or a policy push rule"
            )
        caller = Caller(node=pusher.node)
        decision = policy.decide(caller, PUSH, LogRef(topic, origin))
        if decision.allowed:
            return None
        rule = f"{decision.rule}: {decision.reason}" if decision.reason else decision.rule
        message = f"refused: pusher {who} may not {what} (decided by {rule})"
        self._audit(pusher, log_id, caller, message, rule)
        return message

    def _audit(
        self, pusher: Pusher, log_id: LogId, caller: Caller, message: str, rule: str
    ) -> None:
        if self.audit is None:
            return
        key = (pusher.node.key, log_id)
        if self._audited.get(key) == message:
            return
        if len(self._audited) >= 100_000:
            self._audited.clear()  # a bound; a refusal is audited again at worst
        self._audited[key] = message
        topic, origin = log_id
        self.audit().record(
            caller=caller,
            rpc=AUDIT_RPC,
            code=grpc.StatusCode.PERMISSION_DENIED,
            what=f"push topic {topic!r} of origin {origin.key}",
            rule=rule,
            resource=LogRef(topic, origin),
        )


class _Refused(Exception):
    """A batch answered with an error in its ack: nothing of it (or its rest) was stored."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _code_of(error: Exception) -> grpc.StatusCode:
    return failure(error).code


class PushIntake:
    """Serves Push streams: one `serve` coroutine per connected device."""

    def __init__(
        self,
        *,
        local_node: NodeId,
        store: MsgbusStore,
        pipeline: CommitPipeline,
        acceptance: PushAcceptance,
        max_payload_bytes: int,
        budget: DiskBudget | None = None,
    ) -> None:
        self._local = local_node
        self._store = store
        self._pipeline = pipeline
        self._acceptance = acceptance
        self._max_payload = max_payload_bytes
        self._budget = budget
        self._warned_unverified: set[str] = set()
        """Pushers whose hello was taken without a certificate, warned about once each."""
        self.stats = PushStats()
        """Streams open now, batches and messages taken, for the metrics."""

    async def serve(
        self,
        requests: AsyncIterator[pb.PushRequest],
        context: grpc.aio.ServicerContext[pb.PushRequest, pb.PushResponse],
    ) -> AsyncIterator[pb.PushResponse]:
        """Answer one stream: the welcome, then one reply per offer and one ack per batch."""
        first = await anext(requests, None)
        if first is None:
            return
        try:
            if first.WhichOneof("kind") != "hello":
                raise InvalidArgumentError("a Push stream starts with a hello", field="hello")
            if not first.hello.HasField("node"):
                raise InvalidArgumentError("hello.node is required", field="hello.node")
            hello = node_from_pb(first.hello.node, "hello.node")
            if hello == self._local:
                raise PermissionDeniedError(
                    f"hello.node {hello.key} is this daemon's own identity", field="hello.node"
                )
            pusher = identify_pusher(context, hello, self._acceptance.certificate_identity())
        except MsgbusError as error:
            answer = failure(error)
            await context.abort(answer.code, answer.message, answer.trailing_metadata)
        if not pusher.verified and pusher.node.key not in self._warned_unverified:
            if len(self._warned_unverified) < 100_000:
                self._warned_unverified.add(pusher.node.key)
            log.warning(
                "push: pusher %s (%s) is identified by its hello only, which nothing verifies "
                "(plaintext on loopback, for development; use mTLS with a certificate naming it)",
                pusher.node.key,
                context.peer(),
            )
        stream = _Stream(self, pusher)
        self.stats.streams += 1
        try:
            yield pb.PushResponse(
                welcome=pb.PushWelcome(
                    node=node_to_pb(self._local),
                    pusher=node_to_pb(pusher.node),
                    max_batch_bytes=MAX_PUSH_BATCH_BYTES,
                )
            )
            async for request in requests:
                kind = request.WhichOneof("kind")
                try:
                    if kind == "offer":
                        yield await stream.offer(request.offer)
                    elif kind == "batch":
                        yield await stream.batch(request.batch)
                    else:
                        raise InvalidArgumentError(
                            f"a Push stream takes one hello, then offers and batches; got {kind}"
                        )
                except MsgbusError as error:
                    # Only a malformed stream ends it; one log's trouble is answered in its ack.
                    answer = failure(error)
                    await context.abort(answer.code, answer.message, answer.trailing_metadata)
                stream.flush_soon()
        finally:
            self.stats.streams -= 1
            await asyncio.shield(stream.close())


class _Stream:
    """One pusher's stream: its sync state book, and the batches it applies."""

    def __init__(self, intake: PushIntake, pusher: Pusher) -> None:
        self._intake = intake
        self._pusher = pusher
        self._peer = pushed_record_peer(pusher.node)
        self._book = SyncStateBook(self._peer)
        self._flushing: asyncio.Task[None] | None = None
        """Writes the pending records `STATE_FLUSH_S` after the first of them; only while
        there are some, so an idle stream has no task."""
        self._offered: dict[LogId, int] = {}
        """The pusher's head of each log it offered this stream (what lag is measured to);
        bounded by the logs it pushes."""

    async def offer(self, offer: pb.PushOffer) -> pb.PushResponse:
        if len(offer.heads) > MAX_OFFER_HEADS:
            # The whole stream is malformed, not one log: end it with the error.
            raise InvalidArgumentError(
                f"offer.heads lists {len(offer.heads)} logs; the limit is {MAX_OFFER_HEADS}",
                field="offer.heads",
            )
        intake = self._intake
        parsed: list[LogId | None] = []
        for head in offer.heads:
            try:
                validate_topic(head.topic, "offer.heads.topic")
                if not head.HasField("origin"):
                    raise InvalidArgumentError("offer.heads.origin is required")
                parsed.append((head.topic, node_from_pb(head.origin, "offer.heads.origin")))
            except MsgbusError:
                parsed.append(None)
        store = intake._store
        extents = await asyncio.to_thread(
            lambda: [store.log_head(*log_id) if log_id else None for log_id in parsed]
        )
        reply = pb.PushOfferReply()
        for head, log_id, extent in zip(offer.heads, parsed, extents, strict=True):
            refused = True
            if log_id is not None and extent is not None:
                reply.heads.append(
                    pb.TopicHead(
                        topic=head.topic,
                        origin=head.origin,
                        head_id=extent.head_id,
                        first_head_id=extent.first_head_id,
                    )
                )
                self._offered[log_id] = head.head_id
                refusal = intake._acceptance.refusal(self._pusher, log_id)
                refused = refusal is not None
                if refusal is not None:
                    self._failed(log_id, refusal, Heads(extent.head_id, head.head_id), count=False)
                elif extent.head_id >= head.head_id:
                    self._book.success(log_id, Heads(extent.head_id, head.head_id))
            else:
                reply.heads.append(pb.TopicHead(topic=head.topic, origin=head.origin))
            reply.refused.append(refused)
        return pb.PushResponse(offer_reply=reply)

    async def batch(self, batch: pb.PushBatch) -> pb.PushResponse:
        ack = pb.PushAck(batch_id=batch.batch_id, topic=batch.topic)
        if batch.HasField("origin"):
            ack.origin.CopyFrom(batch.origin)
        log_id: LogId | None = None
        try:
            log_id = self._log_of(batch)
            messages = self._messages(batch, log_id)
            refusal = self._intake._acceptance.refusal(self._pusher, log_id)
            if refusal is not None:
                raise _Refused(grpc.StatusCode.PERMISSION_DENIED, refusal)
            ack.head_id = await self._apply(log_id, messages, batch.first_head_id)
        except (_Refused, MsgbusError) as error:
            code = error.code if isinstance(error, _Refused) else _code_of(error)
            ack.error_code = code.value[0]
            ack.error_message = str(error)
            if log_id is not None:
                head = await asyncio.to_thread(self._intake._store.get_head, *log_id)
                ack.head_id = head
                self._failed(log_id, str(error), Heads(head, self._offered.get(log_id, 0)))
        return pb.PushResponse(ack=ack)

    def _log_of(self, batch: pb.PushBatch) -> LogId:
        topic = validate_topic(batch.topic, "batch.topic")
        if not batch.HasField("origin"):
            raise InvalidArgumentError("batch.origin is required", field="batch.origin")
        return topic, node_from_pb(batch.origin, "batch.origin")

    def _messages(self, batch: pb.PushBatch, log_id: LogId) -> list[Message]:
        """The batch's messages, checked for what the store does not judge (sizes, one log)."""
        count = len(batch.messages)
        if not count:
            raise InvalidArgumentError("batch.messages is empty", field="batch.messages")
        if count > MAX_BATCH_MESSAGES:
            raise InvalidArgumentError(
                f"batch.messages has {count} messages; the limit is {MAX_BATCH_MESSAGES}",
                field="batch.messages",
            )
        messages: list[Message] = []
        size = 0
        previous = 0
        for index, envelope in enumerate(batch.messages):
            where = f"batch.messages[{index}]"
            message = message_from_envelope(envelope)
            if (message.topic, message.origin) != log_id or not envelope.HasField("origin"):
                raise InvalidArgumentError(
                    f"{where} is not a message of the batch's log {log_id[0]!r} of {log_id[1].key}",
                    field=where,
                )
            if message.head_id <= previous:
                raise InvalidArgumentError(
                    f"{where}.head_id {message.head_id} does not ascend (after {previous})",
                    field=f"{where}.head_id",
                )
            previous = message.head_id
            validate_payload(message.payload, self._intake._max_payload, f"{where}.payload")
            size += len(message.payload) + sum(len(k) + len(v) for k, v in message.headers.items())
            messages.append(message)
        if count > 1 and size > MAX_PUSH_BATCH_BYTES:
            raise InvalidArgumentError(
                f"batch.messages hold {size} bytes; the limit is {MAX_PUSH_BATCH_BYTES} "
                "(welcome.max_batch_bytes; one larger message may come alone)",
                field="batch.messages",
            )
        return messages

    async def _apply(self, log_id: LogId, messages: list[Message], first_head_id: int) -> int:
        """Store the batch as one ReplicateOp; the log's durable head after it."""
        intake = self._intake
        if intake._budget is not None:
            intake._budget.check_writable(sum(len(m.payload) for m in messages))
        result = await intake._pipeline.submit(ReplicateOp(messages, first_head_id))
        if not isinstance(result, ReplicateResult):  # pragma: no cover - contract violation
            raise MsgbusError(f"pipeline returned {type(result).__name__} for a ReplicateOp")
        intake.stats.batches_in += 1
        intake.stats.messages_in += len(result.changed)
        head = await asyncio.to_thread(intake._store.get_head, *log_id)
        accepted = len(result.changed) + result.unchanged
        if result.error is not None:
            error = result.error
            if not isinstance(error, MsgbusError):
                error = FailedPreconditionError(str(error))
            raise _Refused(
                _code_of(error),
                f"rejected after {accepted} of {len(messages)} messages: {error}",
            )
        synced = messages[-1].head_id
        self._book.success(
            log_id, Heads(head, max(self._offered.get(log_id, 0), synced), synced), progressed=True
        )
        return head

    def _failed(self, log_id: LogId, error: str, heads: Heads, *, count: bool = True) -> None:
        self._book.failure(error, log_id, heads, count=count)
        if self._book.announce_failure(self._book.key(log_id), error):
            log.warning(
                "push: from %s: log topic=%s origin=%s not taken: %s",
                self._pusher.node.key,
                log_id[0],
                log_id[1].key,
                error,
            )
            self._intake.stats.refused += 1

    def flush_soon(self) -> None:
        """Have the pending records written within `STATE_FLUSH_S` (one write for many acks)."""
        if self._flushing is None and self._book.has_pending:
            self._flushing = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(STATE_FLUSH_S)
        self._flushing = None
        await self.flush()

    async def close(self) -> None:
        """The stream ended: write what is pending now."""
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        await self.flush()

    async def flush(self) -> None:
        """Write the changed sync state records now."""
        await flush_book(self._intake._pipeline, self._book, f"push from {self._pusher.node.key}")
