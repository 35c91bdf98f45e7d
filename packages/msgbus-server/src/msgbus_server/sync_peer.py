"""The peer worker: one peer's sync passes, until it is cancelled.

A pass:

1. Health: the peer must not be this node, and must be the pinned node when one is given;
2. ListHeads;
3. for every log whose remote head is above the local one, Fetch from local head + 1 in batches
   of `batch_limit` messages and about `batch_bytes` (see `sync_fetch`), each batch stored as
   ONE `ReplicateOp` (one transaction) through the commit pipeline, which also wakes local
   subscribers. First, and for a log at or below the local head instead, the message at the
   head both hold must be the same on both sides (`_diverged`): a history that differs there
   (a node reset or cloned) is a conflict, never spliced.

Every call has a deadline, so a hung peer costs at most one deadline. A pass that fails backs
the peer off exponentially with jitter (`backoff`), and the backoff resets on the first good
pass. A log that fails (conflict, gap, malformed marker, refused origin, a payload above
`--max-payload-bytes`, a log the policy's `push` rule does not let the peer supply: see
`peer_authz`) is recorded and skipped
with its own backoff, kept by the sync state book; it never blocks the other logs. The accept
rules themselves (identical is a no-op, deleted wins, anything else conflicts; markers validated
before anything is stored) run inside the store's `ReplicateOp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
import tenacity
from grpc import aio

from msgbus_core import (
    MsgbusError,
    NodeId,
    PeerSyncState,
    ReplicateOp,
    ReplicateResult,
)
from msgbus_core.limits import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DELETE_TOPIC,
    MAX_FETCH_LIMIT,
    READ_BUDGET_BYTES,
    receive_limit_bytes,
)
from msgbus_core.model import Message
from msgbus_core.store import MsgbusStore
from msgbus_core.validation import validate_topic
from msgbus_proto import pb, rpc
from msgbus_server.backoff import backoff_delay, default_backoff_cap
from msgbus_server.convert import node_from_pb, node_to_pb
from msgbus_server.disk_budget import DiskBudget
from msgbus_server.peer_authz import PushRefusal, PushRules
from msgbus_server.peer_certificates import certificate_refusal
from msgbus_server.peers import PeerSpec, PeerTlsConfig, open_peer_channel
from msgbus_server.pipeline import CommitPipeline
from msgbus_server.retention import PeerHoldings
from msgbus_server.shared_store import WorkClaims
from msgbus_server.sync_fetch import (
    DEFAULT_RESPONSE_IDLE_TIMEOUT_S,
    FETCH_STREAM_CAP_S,
    AdaptiveBudget,
    BatchFetcher,
    BatchLimits,
    FailureKind,
    RuleRefusal,
    SyncFailure,
    envelopes,
)
from msgbus_server.sync_state import Heads, LogId, SyncStateBook, flush_book
from msgbus_server.sync_stats import PeerStats

__all__ = ["OwnIdentityFailure", "PeerContext", "PeerWorker", "RecoveredLogs", "SyncSettings"]

log = logging.getLogger("msgbus_server.sync")

KEEPALIVE_MS = 30_000
"""How often an idle peer channel pings the peer."""
KEEPALIVE_TIMEOUT_MS = 10_000
"""How long a ping may go unanswered before the channel counts as broken."""
PULL_SLICE_S = 5.0
"""How long one log may pull in a pass: a larger log stops after its current batch and goes on
in the next pass, so the peer's other logs get their turn while it transfers."""
HEADS_PAGE = 1_000
"""Heads asked for per ListHeads page."""
YIELD_EVERY = 256
"""Heads handled between two yields to the event loop while a page is worked through."""
PULLED_TO_CAPACITY = 10_000
"""Logs per peer whose local head is known to be that peer's message (`PeerWorker._pulled_to`)."""


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """How every peer is synced; build it with `of`, which applies the bounds and defaults."""

    interval_s: float
    batch_limit: int
    backoff_cap_s: float
    fetch_packing: int
    """Messages per Fetch response to ask for (the opt-in packing extension); 0 asks for the
    original one-message-per-response stream."""
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    """Replicated payloads obey the daemon's limit: a larger one is refused, by name."""
    batch_bytes: int = READ_BUDGET_BYTES
    """About the most bytes one batch holds; a larger message is a batch alone."""
    rpc_timeout_s: float = 10.0
    response_idle_timeout_s: float = DEFAULT_RESPONSE_IDLE_TIMEOUT_S
    """How long a Fetch stream may go without a response (`--sync-response-idle-ms`): each
    response has its own deadline, so a long transfer that keeps moving is never cut short."""
    adaptive: bool = False
    """No `--sync-batch-limit` was given: each log's byte budget adapts to the link's round
    trips (`sync_fetch.AdaptiveBudget`) under a count ceiling of `MAX_FETCH_LIMIT`."""
    fetch_timeout_s: float = FETCH_STREAM_CAP_S
    """The backstop deadline of one whole Fetch stream, far above the idle deadline."""

    @classmethod
    def of(
        cls,
        *,
        interval_s: float,
        batch_limit: int | None,
        backoff_cap_s: float | None = None,
        fetch_packing: int | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        response_idle_timeout_s: float | None = None,
    ) -> SyncSettings:
        """Settings from the daemon's options.

        `backoff_cap_s` None is `default_backoff_cap`. `fetch_packing` None asks for a whole
        batch per response: packing makes catch-up several times faster (one message per
        response is the streaming bottleneck), and original peers answer one per response.
        `response_idle_timeout_s` None is `DEFAULT_RESPONSE_IDLE_TIMEOUT_S`; it is kept within
        1 ms and the stream's backstop deadline. `batch_limit` None (the default) adapts each
        log's batches to the link; a count fixes them at that many messages.
        """
        interval = max(interval_s, 0.01)
        limit = (
            MAX_FETCH_LIMIT if batch_limit is None else min(max(batch_limit, 1), MAX_FETCH_LIMIT)
        )
        idle = (
            DEFAULT_RESPONSE_IDLE_TIMEOUT_S
            if response_idle_timeout_s is None
            else min(max(response_idle_timeout_s, 0.001), FETCH_STREAM_CAP_S)
        )
        return cls(
            interval_s=interval,
            batch_limit=limit,
            backoff_cap_s=(
                backoff_cap_s if backoff_cap_s is not None else default_backoff_cap(interval)
            ),
            fetch_packing=limit if fetch_packing is None else max(fetch_packing, 0),
            max_payload_bytes=max_payload_bytes,
            response_idle_timeout_s=idle,
            adaptive=batch_limit is None,
        )

    def backoff(self, failures: int, rng: random.Random) -> float:
        """The wait after `failures` consecutive failures of a peer or a log."""
        return backoff_delay(failures, self.interval_s, self.backoff_cap_s, rng)


@dataclass(frozen=True, slots=True)
class PeerContext:
    """Everything one peer's worker works with, handed over by `PeerSync`."""

    local_node: NodeId
    """This daemon's identity: never accepted from a peer."""
    spec: PeerSpec
    settings: SyncSettings
    store: MsgbusStore
    pipeline: CommitPipeline
    book: SyncStateBook
    """This peer's sync state; its log backoff uses `backoff` too."""
    claims: set[LogId]
    """The logs being pulled right now, by any peer's worker (one set shared by all)."""
    tls: PeerTlsConfig | None
    backoff: Callable[[int], float]
    """Seconds to wait after n consecutive failures."""
    holdings: PeerHoldings | None = None
    """Where the heads of this node's own logs that the peer lists are reported, for
    --retain-unsynced (one book shared by all workers); None when nobody needs them."""
    budget: DiskBudget | None = None
    """The daemon's disk budget: with --discard new, pulled data is refused like publishes."""
    work: WorkClaims | None = None
    """Which process syncs this peer when several share the store; None: this one."""
    push: PushRules | None = None
    """The policy's push rule on what the peer supplies (`peer_authz`); None takes all."""

    @classmethod
    def of(
        cls,
        spec: PeerSpec,
        seed: Sequence[PeerSyncState],
        *,
        local_node: NodeId,
        settings: SyncSettings,
        store: MsgbusStore,
        pipeline: CommitPipeline,
        claims: set[LogId],
        tls: PeerTlsConfig | None,
        holdings: PeerHoldings | None = None,
        budget: DiskBudget | None = None,
        work: WorkClaims | None = None,
        push: PushRules | None = None,
    ) -> PeerContext:
        """The context of one peer, its sync state book seeded with `seed` (its stored states).

        Its backoff draws jitter from a generator of its own, so peers do not retry in step.
        """
        backoff = functools.partial(settings.backoff, rng=random.Random())
        return cls(
            local_node=local_node,
            spec=spec,
            settings=settings,
            store=store,
            pipeline=pipeline,
            book=SyncStateBook(spec.endpoint, seed, backoff=backoff),
            claims=claims,
            tls=tls,
            backoff=backoff,
            holdings=holdings,
            budget=budget,
            work=work,
            push=push,
        )


class OwnIdentityFailure(SyncFailure):
    """The peer reports this node's own identity: a loop back to this daemon, or a clone."""


@dataclass(frozen=True, slots=True)
class RecoveredLogs:
    """What one peer gave back of this node's own logs (`PeerWorker.recover_local_logs`)."""

    logs: int = 0
    messages: int = 0


@dataclass(slots=True)
class _Pull:
    """How far one pull of a log got: what its sync state records, whatever happens."""

    local_head: int
    remote_head: int
    synced: int | None = None
    progressed: bool = False
    paused: bool = False
    """The pull used up its slice (PULL_SLICE_S) before the peer's head: the next pass goes on."""

    def heads(self) -> Heads:
        return Heads(self.local_head, self.remote_head, self.synced)


class PeerWorker:
    """One peer: its channel, its passes, its backoff; its state lives in its book."""

    def __init__(self, context: PeerContext) -> None:
        self._context = context
        self._book = context.book
        self.endpoint = context.spec.endpoint
        self._receive_limit = receive_limit_bytes(context.settings.max_payload_bytes)
        self._channel = open_peer_channel(
            self.endpoint,
            context.tls,
            pinned=context.spec.pinned,
            options=[
                ("grpc.max_receive_message_length", self._receive_limit),
                ("grpc.max_send_message_length", self._receive_limit),
                # A peer that hangs with its connection open (a stopped process, a dead
                # route) fails its pings within about 40 s, and with them the pass, instead of
                # costing every log its idle deadline. Peers accept a ping every 10 s or more.
                ("grpc.keepalive_time_ms", KEEPALIVE_MS),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ],
        )
        self._stub = rpc.MsgbusServiceStub(self._channel)
        self._batch_limits = BatchLimits(context.settings.batch_limit)
        """Each log's batch size after deadlines, kept across passes (see `_pull`)."""
        self._cursor = ""
        """The peer's ListHeads cursor after the last complete listing; "" before the first,
        and always for an original peer (it has none): then every pass lists every head."""
        self._settled: dict[LogId, int] = {}
        """The remote head at which each log was last found in sync (or refused for good): a
        listing that shows the same head again needs no work and no local read."""
        self._more_work = False
        """A pull paused at the end of its slice in the last pass: the next starts at once."""
        self._unsettled: dict[LogId, int] = {}
        """Logs left behind in a pass (a failure, a backoff, another worker's claim), with the
        remote head: retried on every pass, even when the peer lists no change for them."""
        self._refused_at: dict[LogId, int] = {}
        """The local head at which each log of the local node that the peer has more of was
        last compared with the peer's copy: compared again only once local publishes moved it."""
        self._pulled_to: dict[LogId, int] = {}
        """The local head of logs whose last stored message came from this peer in this run:
        a pull that starts there needs no common-head check (the message is the peer's). At
        most `PULLED_TO_CAPACITY` logs; a log dropped from it is checked once more."""
        self.stats = PeerStats()
        """What this worker's passes found and did, for the metrics and the status page."""
        self._push = context.push.gate(context.spec) if context.push is not None else None
        """Which logs the policy lets this peer supply; None takes every log."""

    @property
    def channel(self) -> aio.Channel:
        """The one channel to the peer; an upstream's push runs over it too (`upstream_push`)."""
        return self._channel

    def peer_state(self) -> PeerSyncState | None:
        """The peer-level sync state as last noted (None before the first pass ended)."""
        return self._book.current(self._book.key())

    async def close(self) -> None:
        """Close the channel (cancelling any call still on it)."""
        with contextlib.suppress(Exception):
            await self._channel.close(grace=None)

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync passes forever; a failing pass is retried with backoff, a good one resets it."""
        retrying = tenacity.AsyncRetrying(
            wait=lambda attempt: self._context.backoff(attempt.attempt_number),
            retry=tenacity.retry_if_exception_type(SyncFailure),
            stop=tenacity.stop_never,
            reraise=True,
        )
        work, claim = self._context.work, f"sync with peer {self.endpoint}"
        while True:
            if work is not None and not await work.hold(claim):
                # Another process on the shared store syncs this peer; ask again next interval
                # (it takes over when that process dies).
                await asyncio.sleep(self._context.settings.interval_s)
                continue
            # Each call starts a fresh attempt count, so the backoff resets after a good pass.
            await retrying(self._pass)
            if self._more_work:
                self._more_work = False  # a large log paused at its slice: go on at once
                continue
            await asyncio.sleep(self._context.settings.interval_s)

    async def _pass(self) -> None:
        started = asyncio.get_running_loop().time()
        try:
            await self._check_identity()
            progressed = False
            listed: set[LogId] = set()
            async for page in self._head_pages():
                self._report_holdings(page)
                progressed |= await self._sync_page(page, listed)
            # Logs left behind earlier come back even when the peer lists no change for them.
            progressed |= await self._sync_unsettled(listed)
        except Exception as error:
            failure = SyncFailure.of(error)
            if failure.kind is FailureKind.BUG:
                # A bug must not end this peer's task for good: log it and retry with backoff.
                log.exception("peer %s: unexpected error in sync pass", self.endpoint)
            self.stats.pass_done(self._since(started), failure.kind.name.lower())
            # Whatever failed, nothing more can be synced this pass: back the peer off.
            await self._peer_failed(str(failure))
            if failure is error:
                raise
            raise failure from error
        self.stats.pass_done(self._since(started))
        self._book.success(progressed=progressed)
        if self._book.announce_recovery(self._book.key()):
            log.info("peer %s: sync recovered", self.endpoint)
        await self._flush()

    @staticmethod
    def _since(started: float) -> float:
        return asyncio.get_running_loop().time() - started

    async def recover_local_logs(self, pulling: asyncio.Lock) -> RecoveredLogs:
        """Pull every log of this node's own origin that the peer holds more of (`recovery`).

        For a daemon whose store is new, before it accepts writes: Health (with the identity
        checks of a pass), the peer's whole listing, then each log of the local origin, marker
        log first, through the pull path of sync. `_sync_log` refuses these logs from peers;
        this is the one place that takes them. Only one worker pulls at a time (`pulling`), so
        a log held by two peers is pulled once and then compared with the other's copy.

        A peer that reports this node's own identity answers with nothing to recover. A log
        that fails is recorded and logged, as in a pass; the peer has answered all the same.

        Raises:
            SyncFailure: the peer could not be asked (recorded on the peer, not logged).
        """
        local = self._context.local_node
        store = self._context.store
        recovered = RecoveredLogs()
        try:
            try:
                await self._check_identity()
            except OwnIdentityFailure as loop:
                log.warning("recovery: %s: nothing to recover from it", loop)
                return recovered
            own: list[tuple[LogId, int]] = []
            async for page in self._head_pages():
                for head in page:
                    parsed = self._parse_head(head)
                    if parsed is not None and parsed[0][1] == local:
                        own.append(parsed)
            own.sort(key=lambda item: item[0][0] != DELETE_TOPIC)
            for log_id, remote_head in own:
                async with pulling:
                    before = await asyncio.to_thread(store.get_head, *log_id)
                    if remote_head <= before:
                        continue
                    await self._pull(log_id, remote_head)
                    after = await asyncio.to_thread(store.get_head, *log_id)
                if after > before:
                    recovered = RecoveredLogs(
                        recovered.logs + 1, recovered.messages + after - before
                    )
        except Exception as error:
            failure = SyncFailure.of(error)
            if failure.kind is FailureKind.BUG:
                log.exception("peer %s: unexpected error in recovery", self.endpoint)
            self._book.failure(str(failure))
            await self._flush()
            if failure is error:
                raise
            raise failure from error
        self._book.success()
        await self._flush()
        return recovered

    async def _peer_failed(self, error: str) -> None:
        self._book.failure(error)
        # Log a failure when it starts or changes, not on every retry.
        if self._book.announce_failure(self._book.key(), error):
            log.warning("peer %s: sync failed: %s", self.endpoint, error)
        else:
            log.debug("peer %s: sync still failing: %s", self.endpoint, error)
        await self._flush()

    # -- peer calls -------------------------------------------------------------------------------

    def _unavailable(self, problem: str) -> SyncFailure:
        return SyncFailure(FailureKind.PEER, f"peer {self.endpoint} {problem}")

    async def _check_identity(self) -> None:
        try:
            response = await self._stub.Health(
                pb.HealthRequest(), timeout=self._context.settings.rpc_timeout_s
            )
        except aio.AioRpcError as error:
            refusal = certificate_refusal(self._channel)
            if refusal is not None:
                raise self._unavailable(refusal) from None
            raise SyncFailure.from_rpc(self.endpoint, "Health", error, whole_peer=True) from None
        if not response.HasField("node"):
            raise self._unavailable("health response has no node")
        try:
            remote = node_from_pb(response.node, "peer node")
        except MsgbusError as error:
            raise self._unavailable(f"reports an invalid identity: {error}") from None
        if remote == self._context.local_node:
            raise OwnIdentityFailure(
                FailureKind.PEER, f"peer {self.endpoint} reports the local node identity"
            )
        pinned = self._context.spec.pinned
        if pinned is not None and remote != pinned:
            raise self._unavailable(f"identity mismatch: expected {pinned.key}, got {remote.key}")
        if self._push is not None:
            self._push.identified(remote)
        if response.status != "SERVING":
            raise self._unavailable(f"is not serving: {response.status!r}")

    async def _list_heads(self, request: pb.ListHeadsRequest) -> pb.ListHeadsResponse | None:
        """One ListHeads page; None when the peer no longer knows the request's cursor."""
        try:
            response: pb.ListHeadsResponse = await self._stub.ListHeads(
                request, timeout=self._context.settings.rpc_timeout_s
            )
        except aio.AioRpcError as error:
            if request.changed_since and error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                return None
            raise SyncFailure.from_rpc(self.endpoint, "ListHeads", error, whole_peer=True) from None
        return response

    async def _head_pages(self) -> AsyncIterator[list[pb.TopicHead]]:
        """The peer's heads that may need work, a page at a time.

        With a cursor, only the logs changed since (an idle pass is one call that lists
        nothing); without one, every head, paged, and the listing's cursor is kept for the
        next pass. A cursor advances only once the consumer has handled the page it covers,
        so a pass that fails midway lists the rest again. An original peer ignores the paging
        fields and answers every head at once, with no cursor: every pass lists it all.
        """
        if self._cursor:
            request = pb.ListHeadsRequest(changed_since=self._cursor, page_size=HEADS_PAGE)
            while True:
                changed = await self._list_heads(request)
                if changed is None:
                    # The peer restarted: its change numbers start over. List everything.
                    log.info("peer %s restarted; listing every head again", self.endpoint)
                    self._cursor = ""
                    self._settled.clear()
                    self._pulled_to.clear()  # it may hold another history now
                    break
                response = changed
                yield list(response.heads)
                self._cursor = response.cursor or self._cursor
                if not response.next_page_token:
                    return
                request = pb.ListHeadsRequest(
                    changed_since=response.next_page_token, page_size=HEADS_PAGE
                )
        request = pb.ListHeadsRequest(page_size=HEADS_PAGE)
        cursor = ""
        while True:
            listed = await self._list_heads(request)
            if listed is None:  # pragma: no cover - only a request with changed_since gets None
                raise SyncFailure(FailureKind.PEER, f"peer {self.endpoint} ListHeads failed")
            response = listed
            cursor = cursor or response.cursor
            yield list(response.heads)
            if not response.next_page_token:
                break
            request = pb.ListHeadsRequest(page_token=response.next_page_token, page_size=HEADS_PAGE)
        self._cursor = cursor

    async def _sync_page(self, heads: list[pb.TopicHead], listed: set[LogId]) -> bool:
        """Sync the logs of one page of the peer's heads; True when something was stored.

        A log listed at the head it was last found in sync at is skipped without a local read;
        the local heads of the rest are read in one call. The page is worked through in
        slices that yield to the event loop, so a page of an original peer's whole listing
        never blocks publishes for long.
        """
        work: list[tuple[LogId, int]] = []
        for index, head in enumerate(heads):
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            parsed = self._parse_head(head)
            if parsed is None or not self._context.spec.pull_topics.matches(parsed[0][0]):
                continue  # invalid, or not pulled from this peer (--pull-topics)
            listed.add(parsed[0])
            if self._settled.get(parsed[0]) != parsed[1]:
                work.append(parsed)
        return await self._sync_logs(work)

    async def _sync_unsettled(self, listed: set[LogId]) -> bool:
        """Retry the logs left behind in earlier passes that this pass's listing did not show."""
        work = [(log_id, head) for log_id, head in self._unsettled.items() if log_id not in listed]
        return await self._sync_logs(work)

    async def _sync_logs(self, work: list[tuple[LogId, int]]) -> bool:
        if not work:
            return False
        # Marker logs first: a deleted copy is taken only with its origin's marker held.
        work = sorted(work, key=lambda item: item[0][0] != DELETE_TOPIC)
        store = self._context.store
        local_heads = await asyncio.to_thread(
            lambda: [store.get_head(topic, origin) for (topic, origin), _ in work]
        )
        progressed = False
        for (log_id, remote_head), local_head in zip(work, local_heads, strict=True):
            progressed |= await self._sync_log(log_id, remote_head, local_head)
        return progressed

    def _report_holdings(self, heads: list[pb.TopicHead]) -> None:
        """Tell retention (and the stats) how much of this node's own logs the peer holds."""
        local = self._context.local_node
        own: dict[str, int] = {}
        for head in heads:
            origin = head.origin
            if (origin.tenant_id, origin.bl_name, origin.device_id) == (
                local.tenant_id,
                local.bl_name,
                local.device_id,
            ):
                own[head.topic] = head.head_id
        self.stats.note_own_heads(own)
        holdings = self._context.holdings
        if holdings is not None:
            for topic, head_id in own.items():
                holdings.report(topic, head_id)

    # -- one log ----------------------------------------------------------------------------------

    def _parse_head(self, head: pb.TopicHead) -> tuple[LogId, int] | None:
        try:
            if not head.HasField("origin"):
                raise SyncFailure(FailureKind.LOG, "topic head origin is required")
            origin = node_from_pb(head.origin, "topic head origin")
            validate_topic(head.topic, "topic head topic")
        except (SyncFailure, MsgbusError) as error:
            # Nothing can be recorded under a key that is not a valid name; warn once.
            if self._book.announce_invalid_head(str(error)):
                log.warning("peer %s: ignoring an invalid head: %s", self.endpoint, error)
            return None
        return (head.topic, origin), head.head_id

    async def _sync_log(self, log_id: LogId, remote_head: int, local_head: int) -> bool:
        """Bring one log up to the peer's head; True when something was stored.

        Both copies must hold the same message at the head they share (the lower of the two):
        a log whose history differs there is a conflict, recorded and never pulled from this
        peer while it lasts (see `_diverged`).
        """
        origin = log_id[1]
        heads = Heads(local_head, remote_head)
        if self._push_refused(log_id, heads):
            return False  # not fetched at all, not even to compare a head
        if origin != self._context.local_node:
            self.stats.note_heads(log_id, local_head, remote_head)
        if remote_head <= local_head:
            if remote_head and await self._diverged(log_id, remote_head, heads):
                return False
            self._log_in_sync(log_id, heads)
            return False
        if origin == self._context.local_node:
            # This daemon is the only authority for its own logs: a peer that has "more" of one
            # holds forged data, or data from before a local reset. Refuse, never fetch. A peer
            # that holds no more than this daemon (every two-way peer does) is simply in sync.
            # The log stays unsettled, so that publishes here, which move the local head but
            # not the peer's listing, are compared with the peer's copy too (a clone or a
            # reset node whose new history is still shorter than the peer's).
            refusal = f"refused: log of the local node {origin.key} is never accepted from a peer"
            if self._refused_at.get(log_id) != local_head:
                self.stats.refused += 1
                if local_head and await self._diverged(log_id, local_head, heads, refusal):
                    return False
                self._refused_at[log_id] = local_head
            self._log_failed(log_id, refusal, heads, count=False)
            return False
        if not self._book.retry_due(log_id):
            self._unsettled[log_id] = remote_head
            return False  # still backing off after a failure
        claims = self._context.claims
        if log_id in claims:
            # Another peer's worker is pulling this log. Skip it for this pass instead of
            # waiting, so that it never blocks the other logs and no batch is fetched twice.
            self._unsettled[log_id] = remote_head
            return False
        claims.add(log_id)
        try:
            progressed = await self._pull(log_id, remote_head)
        finally:
            claims.discard(log_id)
        # Write this log's state now rather than at the end of the pass, so progress and errors
        # show in ListPeerSyncStates while the other logs are still being pulled.
        await self._flush()
        return progressed

    async def _pull(self, log_id: LogId, remote_head: int) -> bool:
        """Fetch and commit one log up to `remote_head`; True when something was stored."""
        settings = self._context.settings
        # Read the head again: another peer may have brought this log forward since the pass
        # started.
        local_head = await asyncio.to_thread(self._context.store.get_head, *log_id)
        if (
            local_head
            and self._pulled_to.get(log_id) != local_head
            and await self._diverged(log_id, local_head, Heads(local_head, remote_head))
        ):
            return False  # the peer's newer messages would follow a history that is not ours
        pull = _Pull(local_head, remote_head)
        fetcher = BatchFetcher(
            self._stub,
            self.endpoint,
            log_id,
            limit=settings.batch_limit,
            packing=settings.fetch_packing,
            timeout_s=settings.fetch_timeout_s,
            idle_timeout_s=settings.response_idle_timeout_s,
            start_limit=self._batch_limits.get(log_id),
            channel=self._channel,
            max_bytes=settings.batch_bytes,
            max_payload_bytes=settings.max_payload_bytes,
            receive_limit=self._receive_limit,
            adaptive=AdaptiveBudget(settings.batch_bytes) if settings.adaptive else None,
        )
        try:
            await self._pull_batches(fetcher, log_id, pull)
            if pull.paused:
                # Progress, not yet in sync: the log comes back on the next pass, which starts
                # at once, after the peer's other changed logs.
                self._book.success(log_id, pull.heads(), progressed=True)
                self._unsettled[log_id] = remote_head
                self._more_work = True
                return pull.progressed
        except Exception as error:
            failure = SyncFailure.of(error)
            if failure.kind is FailureKind.BUG:
                raise  # the pass logs it, with its traceback
            if isinstance(failure, RuleRefusal):
                self.stats.refused += 1
            if pull.progressed and failure.kind is FailureKind.LOG:
                # A transfer that stored something before it failed (a stalled or broken
                # stream keeps its prefix) starts a new run of failures: a slow log that gains
                # on every attempt is retried after one interval, not after a growing backoff.
                self._book.success(log_id, pull.heads(), progressed=True)
            self._log_failed(log_id, str(failure), pull.heads(), kind=failure.kind)
            if failure.kind is FailureKind.PEER:
                raise
            return pull.progressed
        finally:
            fetcher.close()
            self._batch_limits.set(log_id, fetcher.limit)
            self._note_pulled(log_id, pull)
        self._log_in_sync(log_id, pull.heads())
        return pull.progressed

    async def _pull_batches(self, fetcher: BatchFetcher, log_id: LogId, pull: _Pull) -> None:
        topic, origin = log_id
        where = f"topic={topic} origin={origin.key}"
        loop = asyncio.get_running_loop()
        slice_ends = loop.time() + PULL_SLICE_S
        while pull.local_head < pull.remote_head:
            expected = pull.local_head + 1
            served = await fetcher.batch(expected)
            batch = served.messages
            if not batch and served.problem is None:
                raise SyncFailure(
                    FailureKind.LOG,
                    f"peer {self.endpoint} lists head {pull.remote_head} for {where} "
                    f"but served nothing from head {expected} (a peer whose retention trimmed "
                    "the log empty serves nothing until the log has new messages)",
                )
            before = pull.local_head
            refusal = self._push_refusal(log_id) if batch else None
            if refusal is not None:
                # The policy changed (SIGHUP) since the log was listed: nothing more is stored.
                raise RuleRefusal(FailureKind.LOG, refusal.message)
            if batch:
                # The next batch is fetched while this one commits, so the peer's read and the
                # network overlap the local write instead of alternating with it.
                next_from = batch[-1].head_id + 1
                sliced = loop.time() >= slice_ends
                # No prefetch at the end of a slice: on a slow link a cancelled Fetch wastes
                # what it had received.
                if served.problem is None and next_from <= pull.remote_head and not sliced:
                    fetcher.prefetch(next_from)
                await self._commit(batch, pull, served.first_head_id)
                if sliced and served.problem is None and pull.local_head < pull.remote_head:
                    pull.paused = True
                    return
            if served.problem is not None:
                raise (RuleRefusal if served.refused else SyncFailure)(
                    FailureKind.LOG, served.problem
                )
            if pull.local_head <= before:
                # Only heads we already had: without this, a peer that keeps serving old heads
                # would keep this loop going forever.
                raise SyncFailure(
                    FailureKind.LOG,
                    f"peer {self.endpoint} made no progress on {where}: asked from head "
                    f"{expected}, got heads {batch[0].head_id}..{batch[-1].head_id}",
                )

    async def _commit(self, batch: list[Message], pull: _Pull, first_head_id: int = 0) -> None:
        """Store one batch as one ReplicateOp, and note in `pull` how far it got.

        `first_head_id` is where the peer says the log starts now (its retention trimmed the
        heads below): the store then takes a batch that starts there after a lower local head.
        """
        if self._context.budget is not None:
            # A full budget refuses this log's data (recorded on the log), not the peer.
            self._context.budget.check_writable(sum(len(m.payload) for m in batch))
        result = await self._context.pipeline.submit(ReplicateOp(batch, first_head_id))
        if not isinstance(result, ReplicateResult):  # pragma: no cover - contract violation
            raise MsgbusError(f"pipeline returned {type(result).__name__} for a ReplicateOp")
        if result.rebased_at:
            topic, origin = batch[0].topic, batch[0].origin
            log.info(
                "peer %s: log topic=%s origin=%s starts at head %d there (trimmed by its "
                "retention); the local copy, at head %d, now starts there too",
                self.endpoint,
                topic,
                origin.key,
                result.rebased_at,
                pull.local_head,
            )
        accepted = len(result.changed) + result.unchanged
        pull.progressed |= bool(result.changed)
        self.stats.pulled_messages += len(result.changed)
        self.stats.pulled_bytes += sum(len(message.payload) for message in result.changed)
        if accepted:
            pull.synced = batch[accepted - 1].head_id
            pull.local_head = max(pull.local_head, pull.synced)
            pull.remote_head = max(pull.remote_head, pull.synced)
            log_id = (batch[0].topic, batch[0].origin)
            self.stats.note_heads(log_id, pull.local_head, pull.remote_head)
        if result.error is not None:
            raise RuleRefusal(
                FailureKind.LOG, f"rejected from peer {self.endpoint}: {result.error}"
            ) from result.error

    def _push_refusal(self, log_id: LogId) -> PushRefusal | None:
        """Why the policy's push rule refuses the peer this log now; None when it does not."""
        if self._push is None or log_id[1] == self._context.local_node:
            return None  # the local node's logs have their own rule (see `_sync_log`)
        return self._push.refusal(log_id)

    def _push_refused(self, log_id: LogId, heads: Heads) -> bool:
        """True when the push rule refuses the peer this log (recorded once while it lasts).

        The log stays unsettled, so every pass asks again: a policy reloaded on SIGHUP that
        allows it is followed at the next pass, even if the peer's head has not moved.
        """
        refusal = self._push_refusal(log_id)
        if refusal is None:
            return False
        if refusal.new:
            self.stats.refused += 1
        self.stats.note_heads(log_id, 0, 0)  # a refused log is not lag to catch up on
        self._log_failed(log_id, refusal.message, heads, count=False)
        return True

    def _note_pulled(self, log_id: LogId, pull: _Pull) -> None:
        """Remember that the log's local head is a message of this peer, if it is.

        A pull that stored nothing changes nothing: a head remembered earlier still holds
        while the local head stays there.
        """
        if pull.synced is None:
            return
        self._pulled_to.pop(log_id, None)
        if pull.synced != pull.local_head:
            return
        self._pulled_to[log_id] = pull.synced
        if len(self._pulled_to) > PULLED_TO_CAPACITY:
            del self._pulled_to[next(iter(self._pulled_to))]  # the longest untouched

    async def _diverged(self, log_id: LogId, head: int, heads: Heads, refusal: str = "") -> bool:
        """True when this log must not go on with the peer from `head`, a head both hold.

        The peer's message at `head` must be ours (same id and creation time; a deleted copy
        keeps both). When it is not, the two histories diverged: one of the nodes lost its
        database and republished the heads, or two live nodes share one identity. Pulling the
        peer's later heads would splice its history after ours, so the log is recorded as a
        conflict and settled at the peer's head: it is compared again only once the peer lists
        another head. A head trimmed on either side cannot be compared and counts as matching.
        A Fetch that fails fails the log (with backoff); a peer that is down fails the pass.
        `refusal` is why the log would not be pulled anyway, recorded with the conflict.
        """
        topic, origin = log_id
        store = self._context.store
        ours = await asyncio.to_thread(store.fetch, topic, origin, head, 1)
        if not ours or ours[0].head_id != head:
            return False  # trimmed here
        try:
            theirs = await self._peer_message_at(log_id, head)
        except SyncFailure as failure:
            if failure.kind is FailureKind.PEER:
                raise
            self._log_failed(log_id, str(failure), heads)
            return True
        if theirs is None or theirs.head_id != head:
            return False  # trimmed on the peer
        mine = ours[0]
        if (theirs.id, theirs.created_at_ms) == (mine.id, mine.created_at_ms):
            return False
        self.stats.refused += 1
        conflict = (
            f"conflict: history diverged at head {head}: the peer's message is {theirs.id}, "
            f"ours is {mine.id}; one of the nodes was reset or cloned (nothing is pulled from "
            "this peer while it lasts)"
        )
        self._log_failed(
            log_id, f"{refusal}; {conflict}" if refusal else conflict, heads, count=False
        )
        self._settle(log_id, heads.remote)
        return True

    async def _peer_message_at(self, log_id: LogId, head: int) -> pb.MessageEnvelope | None:
        """The peer's first message of `log_id` from `head` on (one small Fetch); None if none."""
        topic, origin = log_id
        request = pb.FetchRequest(
            topic=topic, origin=node_to_pb(origin), from_head_id=head, limit=1
        )
        call = self._stub.Fetch(request, timeout=self._context.settings.rpc_timeout_s)
        try:
            while True:
                response = await call.read()
                if not isinstance(response, pb.FetchResponse):
                    return None  # the end of the stream (grpc.aio.EOF)
                for envelope in envelopes(response):
                    return envelope
        except aio.AioRpcError as error:
            raise SyncFailure.from_rpc(self.endpoint, "Fetch", error) from None
        finally:
            call.cancel()

    def _settle(self, log_id: LogId, remote_head: int) -> None:
        self._settled[log_id] = remote_head
        self._unsettled.pop(log_id, None)

    def _log_failed(
        self,
        log_id: LogId,
        error: str,
        heads: Heads,
        *,
        count: bool = True,
        kind: FailureKind = FailureKind.LOG,
    ) -> None:
        self._unsettled[log_id] = heads.remote
        self._settled.pop(log_id, None)
        self._book.failure(error, log_id, heads, count=count)
        announced = self._book.announce_failure(self._book.key(log_id), error)
        self.stats.log_failed(log_id, error)
        # A peer that is down fails the pass too, where it is counted; a refusal repeated
        # unchanged (count False) is counted once.
        if kind is not FailureKind.PEER and (count or announced):
            self.stats.fail(kind.name.lower())
        if announced:
            topic, origin = log_id
            log.warning(
                "peer %s: log topic=%s origin=%s not synced: %s",
                self.endpoint,
                topic,
                origin.key,
                error,
            )

    def _log_in_sync(self, log_id: LogId, heads: Heads) -> None:
        self._settle(log_id, heads.remote)
        self._book.success(log_id, heads)
        self.stats.log_in_sync(log_id, heads.local, heads.remote)
        if self._book.announce_recovery(self._book.key(log_id)):
            log.info("peer %s: log %s/%s in sync again", self.endpoint, log_id[0], log_id[1].key)

    # -- state ------------------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Write the sync state records that changed, in one transaction."""
        await flush_book(self._context.pipeline, self._book, f"peer {self.endpoint}")
