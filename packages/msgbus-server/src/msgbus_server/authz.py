"""Enforcement: every msgbus call is checked against the policy before the service runs it.

`Authorizer.admit` is the guard `decoding.add_msgbus_service` runs after a request is decoded
and before its handler starts, so a refused call stores nothing and a refused stream sends
nothing. It answers PERMISSION_DENIED naming the action, the topic (or queue) and the rule that
decided; a bearer token that is not valid, and a call on the internal Unix socket that did not
come through msgbusd's own socket, are UNAUTHENTICATED. ListHeads is not refused but filtered
to the logs the caller may read (or pull), and ListPeerSyncStates, for a caller held in its
tenant, to that tenant's logs. A durable cursor is a position in a log: CommitCursor, GetCursor
and DeleteCursor need `read` on the cursor's log, DeleteCursor of every cursor of a name (no
topic) needs `admin`, and ListCursors is filtered to the cursors on logs the caller may read.

Without a policy every call is allowed, as before authorization existed: msgbusd starts
without one only when every listener is loopback TCP or a Unix socket, or with
`--allow-anyone`. The policy is swapped as one reference on SIGHUP (`reload`), so a call is
decided by the old policy or by the new one, never by a mix, and a file that does not parse
leaves the old one in force.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import grpc

from msgbus_core.errors import MsgbusError, PermissionDeniedError
from msgbus_core.fifo_leases import dead_letter_queue
from msgbus_core.model import NodeId
from msgbus_proto import pb
from msgbus_server import convert
from msgbus_server.config import ConfigError
from msgbus_server.decoding import Guard
from msgbus_server.identity import (
    Caller,
    MalformedToken,
    UnixCredentials,
    bearer_token,
    certificate_node,
)
from msgbus_server.policy import LogRef, Policy, PolicySource, QueueRef, Resource
from msgbus_server.status import failure

logger = logging.getLogger("msgbus_server.authz")
audit_logger = logging.getLogger("msgbus_server.audit")

PUBLISH: Final = frozenset({"publish"})
READ: Final = frozenset({"read"})
READ_OR_PULL: Final = frozenset({"read", "pull"})
"""What Fetch, GetHead and ListHeads need: a peer's sync reads with them, never with Subscribe."""
DELETE: Final = frozenset({"delete"})
FIFO: Final = frozenset({"fifo"})
ADMIN: Final = frozenset({"admin"})
PUSH: Final = frozenset({"push"})
"""What a peer needs for each log it supplies: to this daemon's sync (`peer_authz`), and to
issue 17's push RPC when it lands."""
ALWAYS_ANSWERED: Final = frozenset({"Health", "Ready"})
FIFO_METHODS: Final = frozenset(
    {
        "EnqueueFifo",
        "PeekFifo",
        "AckFifo",
        "RejectFifo",
        "LeaseFifo",
        "AckFifoLease",
        "RejectFifoLease",
        "ExtendFifoLease",
        "ListFifo",
        "RedriveFifo",
    }
)
"""The RPCs that need the `fifo` action on their queue (RedriveFifo on `QUEUE.dead` too)."""
"""RPCs every caller may make: probes and peers' identity checks need them."""

AUDIT_INTERVAL_S: Final = 10.0
"""The same denial (caller, RPC, what and rule) is logged at most once per this interval."""
AUDIT_BURST: Final = 100
AUDIT_PER_SECOND: Final = 10.0
"""Audit lines in all: a burst of AUDIT_BURST, then this many per second."""
AUDIT_KEYS: Final = 10_000
"""Denials remembered for the interval; the memo starts over when full."""

ResponseFilter = Callable[[Any], Any]
"""Rewrites a unary response for the caller (ListHeads: the logs it may read); on a stream,
it is applied to each response and None drops it (pattern Subscribe: the logs it may read)."""

PATTERN_DECISIONS: Final = 4_096
"""Logs whose read decision a pattern subscription remembers; the memo starts over when full."""


@dataclass(frozen=True, slots=True)
class _Check:
    """One permission a request needs."""

    actions: frozenset[str]
    resource: Resource
    what: str
    """The request in words, after "may not": `publish to topic 'x'`."""
    field: str | None
    """The request field the permission is about, for the error's details."""


class AuditLog:
    """Denials in the daemon's log (logger `msgbus_server.audit`), rate-limited.

    Each line is a warning: readable text, and in JSON logs the fields `audit`, `rpc`, `code`,
    `rule`, `caller` (with `identity`, `uid`, `gid`, `pid`, `token` when known) and `topic`,
    `origin` or `queue`. The same denial repeated within AUDIT_INTERVAL_S is counted, not
    logged, and the next line that is logged says how many there were (`suppressed`); all
    lines together are held to a burst of AUDIT_BURST and AUDIT_PER_SECOND after it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[tuple[str, ...], tuple[float, int]] = {}
        """When each denial was last logged, and how many repeats were not logged since."""
        self._tokens = float(AUDIT_BURST)
        self._refilled = clock()
        self._dropped = 0
        """Denials the overall rate dropped since the last line."""

    def record(
        self,
        *,
        caller: Caller,
        rpc: str,
        code: grpc.StatusCode,
        what: str,
        rule: str,
        resource: Resource = None,
    ) -> bool:
        """Log one denial unless the limits hold it back; True when a line was written."""
        now = self._clock()
        key = (caller.principal, rpc, what, rule)
        last = self._last.get(key)
        if last is not None and now - last[0] < AUDIT_INTERVAL_S:
            self._last[key] = (last[0], last[1] + 1)
            return False
        self._tokens = min(AUDIT_BURST, self._tokens + (now - self._refilled) * AUDIT_PER_SECOND)
        self._refilled = now
        if self._tokens < 1:
            self._dropped += 1
            return False
        self._tokens -= 1
        if len(self._last) >= AUDIT_KEYS:
            self._last.clear()
        suppressed = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        fields: dict[str, object] = {
            "audit": "denied",
            "rpc": rpc,
            "code": code.name,
            "rule": rule,
            **caller.fields(),
        }
        if isinstance(resource, LogRef):
            fields.update(topic=resource.topic, origin=resource.origin.key)
        elif isinstance(resource, QueueRef):
            fields["queue"] = resource.queue
        notes = []
        if suppressed:
            fields["suppressed"] = suppressed
            notes.append(f"{suppressed} more like it since the last line")
        if self._dropped:
            fields["dropped"] = self._dropped
            notes.append(f"{self._dropped} other denials not logged (rate limit)")
            self._dropped = 0
        note = f" [{'; '.join(notes)}]" if notes else ""
        audit_logger.warning(
            "denied %s (%s): %s may not %s, by %s%s",
            rpc,
            code.name,
            caller.principal,
            what,
            rule,
            note,
            extra=fields,
        )
        return True


class Authorizer:
    """The daemon's policy, who is calling, and the checks every call goes through."""

    def __init__(
        self,
        *,
        node: NodeId,
        policy: Policy | None,
        source: PolicySource | None,
        unix: Callable[[str], UnixCredentials | None],
        needs_policy: bool,
        relayed: bool = False,
        audit: AuditLog | None = None,
    ) -> None:
        self._node = node
        self._policy = policy
        self._source = source
        self._unix = unix
        """The credentials of a relayed Unix connection by gRPC peer (`UnixSockets.lookup`)."""
        self._needs_policy = needs_policy
        """A listener other than loopback and Unix sockets, without --allow-anyone: a reload
        may change the policy but not remove it."""
        self._relayed = relayed
        """The daemon serves a Unix socket, whose internal side must be guarded."""
        self.audit = audit or AuditLog()
        self._reloading = asyncio.Lock()
        self._reloads: set[asyncio.Task[bool]] = set()

    @property
    def policy(self) -> Policy | None:
        """The policy in force; None allows every call."""
        return self._policy

    @property
    def guard(self) -> Guard | None:
        """`admit`, the guard for `decoding.add_msgbus_service`; None if nothing is refused.

        Nothing ever is without a policy, a source to load one from on SIGHUP, or a Unix socket.
        """
        if self._policy is None and self._source is None and not self._relayed:
            return None
        return self.admit

    def describe(self) -> str:
        """The startup log line's account of authorization."""
        policy = self._policy
        if policy is None:
            if self._needs_policy:  # pragma: no cover - the CLI refuses to start so
                return "no policy"
            return "no policy: every caller may make every call (loopback and Unix sockets only)"
        return f"policy from {policy.source}: {policy.describe()}"

    # -- the guard ------------------------------------------------------------------------------

    async def admit(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ResponseFilter | None:
        """Check a decoded request before its handler runs; abort the call when refused.

        Returns a filter for the response when the caller may see only part of it.
        """
        unix: UnixCredentials | None = None
        peer = context.peer()
        if peer.startswith("unix"):
            # Only the internal socket is a Unix socket of gRPC's, and only the relay's
            # connections to it are known: anything else went around the socket's mode.
            unix = self._unix(peer)
            if unix is None:
                await self._refuse(
                    context,
                    Caller(),
                    method,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "connect through msgbusd's Unix socket",
                    "the internal socket",
                    "this connection did not come through msgbusd's Unix socket",
                )
        policy = self._policy
        if policy is None or method in ALWAYS_ANSWERED:
            return None
        caller = await self._caller(policy, method, context, unix)
        if method == "ListHeads":
            return lambda response: self._visible_heads(policy, caller, response)
        if method == "Subscribe" and request.topic_pattern:
            # Its logs are not known up front: each response (one log's messages) is decided.
            return self._readable_logs(caller)
        if method == "ListCursors":
            return lambda response: self._visible_cursors(policy, caller, response)
        if method == "ListPeerSyncStates":
            check = _Check(ADMIN, None, "read the peer sync states", None)
            await self._require(policy, caller, method, check, context)
            if policy.isolation is not None and caller.tenant is not None:
                return lambda response: self._tenant_states(policy, caller, response)
            return None
        if request is None:
            return None  # a stream opens: its handler checks each request it reads (`refusal`)
        for check in self._checks(method, request):
            await self._require(policy, caller, method, check, context)
        return None

    async def refusal(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> MsgbusError | None:
        """The refusal of one request read from a stream (PublishStream), or None.

        Decided and audited by the same rules as `admit`, with the policy in force when the
        request is read, but the stream is not ended: its handler answers the refusal in the
        request's response. `admit` checked who is calling when the stream opened.
        """
        policy = self._policy
        if policy is None:
            return None
        peer = context.peer()
        unix = self._unix(peer) if peer.startswith("unix") else None
        caller = await self._caller(policy, method, context, unix)
        for check in self._checks(method, request):
            denial = self._denial(policy, caller, method, check)
            if denial is not None:
                return denial
        return None

    def _checks(self, method: str, request: Any) -> Iterator[_Check]:
        """The permissions a request needs.

        A request whose origin does not parse needs none: its handler refuses it with
        INVALID_ARGUMENT before touching anything.
        """
        node = self._node
        if method == "PublishStream":
            if request.entries:
                yield from self._checks("PublishBatch", request)
            else:
                yield from self._checks("Publish", request.publish)
        elif method == "Publish":
            yield _Check(PUBLISH, LogRef(request.topic, node), _publish(request.topic), "topic")
        elif method == "PublishBatch":
            for index, entry in enumerate(request.entries):
                what = f"{_publish(entry.topic)} (entries[{index}])"
                yield _Check(PUBLISH, LogRef(entry.topic, node), what, f"entries[{index}].topic")
        elif method == "Subscribe" and request.topic_pattern:
            return  # decided per log as its messages go out (`_readable_logs`)
        elif method in ("Fetch", "GetHead", "Subscribe"):
            try:
                origin = convert.node_or_local(
                    request.HasField("origin"), request.origin, node, "origin"
                )
            except MsgbusError:
                return
            actions = READ if method == "Subscribe" else READ_OR_PULL
            what = f"read topic {request.topic!r} of origin {origin.key}"
            yield _Check(actions, LogRef(request.topic, origin), what, "topic")
        elif method in ("CommitCursor", "GetCursor", "DeleteCursor"):
            if method == "DeleteCursor" and not request.topic:
                what = f"delete every cursor of the name {request.name!r}"
                yield _Check(ADMIN, None, what, "topic")
                return
            try:
                origin = convert.node_or_local(
                    request.HasField("origin"), request.origin, node, "origin"
                )
            except MsgbusError:
                return
            # A cursor is a position in a log: whoever may read the log may keep one on it.
            what = f"keep a cursor on topic {request.topic!r} of origin {origin.key}"
            yield _Check(READ, LogRef(request.topic, origin), what, "topic")
        elif method == "DeleteRange":
            what = f"delete from topic {request.topic!r}"
            yield _Check(DELETE, LogRef(request.topic, node), what, "topic")
        elif method in FIFO_METHODS:
            what = f"use FIFO queue {request.queue!r}"
            yield _Check(FIFO, QueueRef(request.queue), what, "queue")
            if method == "RedriveFifo":
                # It takes the messages out of the dead-letter queue too. (A reject that
                # dead-letters does not need it: the daemon moves the message, by the rule.)
                dead = dead_letter_queue(request.queue)
                yield _Check(FIFO, QueueRef(dead), f"use FIFO queue {dead!r}", "queue")
        else:  # pragma: no cover - every RPC of msgbus.v1 is handled above
            raise AssertionError(f"no authorization rule for {method}")

    async def _require(
        self,
        policy: Policy,
        caller: Caller,
        method: str,
        check: _Check,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        denial = self._denial(policy, caller, method, check)
        if denial is not None:
            answer = failure(denial)
            await context.abort(answer.code, answer.message, answer.trailing_metadata)

    def _denial(
        self, policy: Policy, caller: Caller, method: str, check: _Check
    ) -> PermissionDeniedError | None:
        """The audited PERMISSION_DENIED of a check the policy refuses; None when allowed."""
        decision = policy.decide(caller, check.actions, check.resource)
        if decision.allowed:
            return None
        rule = f"{decision.rule}: {decision.reason}" if decision.reason else decision.rule
        self.audit.record(
            caller=caller,
            rpc=method,
            code=grpc.StatusCode.PERMISSION_DENIED,
            what=check.what,
            rule=rule,
            resource=check.resource,
        )
        message = f"permission denied: {caller.principal} may not {check.what} (decided by {rule})"
        return PermissionDeniedError(message, field=check.field)

    async def _caller(
        self,
        policy: Policy,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        unix: UnixCredentials | None,
    ) -> Caller:
        node = certificate_node(context.auth_context(), policy.certificate_identity)
        try:
            token = bearer_token(context.invocation_metadata() or ())
        except MalformedToken as error:
            partial = Caller(node=node, unix=unix)
            code = grpc.StatusCode.UNAUTHENTICATED
            await self._refuse(
                context, partial, method, code, "send a token", "authorization", str(error)
            )
        if token is None:
            return Caller(node=node, unix=unix)
        tokens = policy.tokens
        name: str | None = None
        if tokens is not None:
            known, name = tokens.cached(token)
            if not known:
                name = await asyncio.to_thread(tokens.verify, token)
        if name is None:
            held = "it is not valid" if tokens is not None else "the policy names no token-file"
            partial = Caller(node=node, unix=unix)
            code = grpc.StatusCode.UNAUTHENTICATED
            rule = "policy.token-file"
            await self._refuse(context, partial, method, code, "use a bearer token", rule, held)
        return Caller(node=node, unix=unix, token=name)

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        caller: Caller,
        method: str,
        code: grpc.StatusCode,
        what: str,
        rule: str,
        reason: str,
    ) -> NoReturn:
        self.audit.record(caller=caller, rpc=method, code=code, what=what, rule=f"{rule}: {reason}")
        await context.abort(code, f"{code.name.lower()}: {reason}")
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _visible_heads(
        self, policy: Policy, caller: Caller, response: pb.ListHeadsResponse
    ) -> pb.ListHeadsResponse:
        """The heads of `response` the caller may read or pull.

        Its page token and cursor stay: they are positions in the whole listing, so paging
        goes on past the logs left out (a page may come back short, or empty, with a token).
        """
        kept = [
            head
            for head in response.heads
            if policy.decide(caller, READ_OR_PULL, LogRef(head.topic, _node(head.origin))).allowed
        ]
        if len(kept) == len(response.heads):
            return response
        return pb.ListHeadsResponse(
            heads=kept, next_page_token=response.next_page_token, cursor=response.cursor
        )

    def _visible_cursors(
        self, policy: Policy, caller: Caller, response: pb.ListCursorsResponse
    ) -> pb.ListCursorsResponse:
        """The cursors of `response` on logs the caller may read; the page token stays."""
        kept = [
            cursor
            for cursor in response.cursors
            if policy.decide(caller, READ, LogRef(cursor.topic, _node(cursor.origin))).allowed
        ]
        if len(kept) == len(response.cursors):
            return response
        return pb.ListCursorsResponse(cursors=kept, next_page_token=response.next_page_token)

    def _readable_logs(self, caller: Caller) -> ResponseFilter:
        """A pattern Subscribe's filter: the responses of logs the caller may read, else None.

        Decided by the policy in force at each response (a SIGHUP applies to open streams),
        remembered per log until the policy changes; under tenant isolation another tenant's
        logs are never readable, so never sent.
        """
        decided: dict[tuple[str, str], bool] = {}
        decided_by: list[Policy | None] = [self._policy]

        def keep(response: pb.SubscribeResponse) -> pb.SubscribeResponse | None:
            policy = self._policy
            if policy is None:
                return response
            if policy is not decided_by[0]:
                decided.clear()
                decided_by[0] = policy
            envelope = response.messages[0] if response.messages else response.message
            origin = _node(envelope.origin)
            key = (envelope.topic, origin.key)
            allowed = decided.get(key)
            if allowed is None:
                if len(decided) >= PATTERN_DECISIONS:
                    decided.clear()
                log = LogRef(envelope.topic, origin)
                allowed = decided[key] = policy.decide(caller, READ, log).allowed
            return response if allowed else None

        return keep

    def _tenant_states(
        self, policy: Policy, caller: Caller, response: pb.ListPeerSyncStatesResponse
    ) -> pb.ListPeerSyncStatesResponse:
        """The sync states of the caller's tenant's logs (peer-level states are the hub's)."""
        kept = [
            state
            for state in response.states
            if state.topic
            and not policy.outside_tenant(caller, LogRef(state.topic, _node(state.origin)))
        ]
        return pb.ListPeerSyncStatesResponse(states=kept, next_page_token=response.next_page_token)

    # -- reload ---------------------------------------------------------------------------------

    def reload_soon(self) -> None:
        """Start a reload (the SIGHUP handler): reloads run one at a time, in order."""
        task = asyncio.get_running_loop().create_task(self.reload(), name="policy-reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        """Read the policy again and put it in force; True when it changed.

        A file that does not parse, or that drops the policy a listener needs, changes
        nothing and is logged as an error, with the reason.
        """
        async with self._reloading:
            source = self._source
            if source is None:
                logger.warning(
                    "SIGHUP: there is no policy to reload (msgbusd was started without "
                    "--config or --policy)"
                )
                return False
            try:
                policy = await asyncio.to_thread(source.load)
            except ConfigError as error:
                logger.error("policy reload failed; the previous policy stays in force: %s", error)
                return False
            if policy is None and self._needs_policy:
                logger.error(
                    "policy reload failed; the previous policy stays in force: %s has no "
                    "[policy] table, and a listener other than loopback needs one",
                    source.path,
                )
                return False
            self._policy = policy
            if policy is None:
                logger.info(
                    "policy reloaded from %s: no policy; every call is allowed", source.path
                )
            else:
                logger.info("policy reloaded from %s: %s", source.path, policy.describe())
            return True


def _publish(topic: str) -> str:
    return f"publish to topic {topic!r}"


def _node(value: pb.NodeId) -> NodeId:
    return NodeId(value.tenant_id, value.bl_name, value.device_id)
