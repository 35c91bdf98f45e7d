"""Peer sync: pull every log a peer has further than we do, and keep pulling.

One asyncio task per peer, all concurrent, each with one long-lived gRPC channel. A pass:

1. Health: the peer must not be this node, and must be the pinned node when one is given;
2. ListHeads;
3. for every log whose remote head is above the local one, Fetch from local head + 1 in batches
   of `batch_limit`, each batch stored as ONE `ReplicateOp` (one transaction) through the commit
   pipeline, which also wakes local subscribers.

Every call has a deadline, so a hung peer costs at most one deadline and never blocks the other
peers (they run in their own tasks). A peer that fails backs off exponentially with jitter
(tenacity), and the backoff resets on the first good pass. A log that fails (conflict, gap,
malformed marker, refused origin) is recorded and skipped with its own backoff; it never blocks
the other logs. The accept rules themselves (identical is a no-op, deleted wins, anything else
conflicts; markers validated before anything is stored) run inside the store's `ReplicateOp`.

Sync state is persisted only when it changes (see `sync_state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import grpc
import tenacity
from grpc import aio

from msgbus_core import (
    MsgbusError,
    MsgbusStore,
    NodeId,
    PeerSyncState,
    RecordSyncStateOp,
    ReplicateOp,
    ReplicateResult,
)
from msgbus_core.limits import MAX_FETCH_LIMIT
from msgbus_core.model import Message
from msgbus_core.ops import Outcome, WriteOp, WriteResult
from msgbus_core.validation import validate_topic
from msgbus_proto import pb, rpc
from msgbus_server.convert import message_from_envelope
from msgbus_server.peers import PeerSpec, PeerTlsConfig, open_peer_channel
from msgbus_server.sync_state import StateKey, SyncStateBook, state_key

__all__ = ["PeerSync", "SyncPipeline"]

log = logging.getLogger("msgbus_server.sync")

LogId = tuple[str, NodeId]

# Status codes that say the peer (or the path to it) is down rather than that one request was
# bad: they end the pass and back the whole peer off. Any other code fails only the log.
_PEER_DOWN_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)

# Generous receive limit: one Fetch response carries one envelope today (a packed field may
# later carry many), and a peer may run with a larger --max-payload-bytes than we do.
_MAX_RECEIVE_BYTES = 64 * 1024 * 1024


class SyncPipeline(Protocol):
    """The part of the commit pipeline that sync uses (`msgbus_server.pipeline.CommitPipeline`)."""

    async def submit(self, op: WriteOp) -> WriteResult:
        """Commit one op; raise its `MsgbusError` when it fails."""
        ...

    async def submit_many(self, ops: Sequence[WriteOp]) -> list[Outcome]:
        """Commit ops in one transaction; one outcome (result or error) per op."""
        ...


class PeerUnavailableError(Exception):
    """The peer cannot be synced this pass: unreachable, hung, or not who it must be."""


class LogSyncError(Exception):
    """One log cannot be synced from this peer right now; the other logs go on."""


def _node_from_pb(node: pb.NodeId) -> NodeId:
    return NodeId(node.tenant_id, node.bl_name, node.device_id)


def _node_to_pb(node: NodeId) -> pb.NodeId:
    return pb.NodeId(tenant_id=node.tenant_id, bl_name=node.bl_name, device_id=node.device_id)


def _message_from_pb(envelope: pb.MessageEnvelope) -> Message:
    if not envelope.HasField("origin"):
        raise LogSyncError("message origin is required")
    return message_from_envelope(envelope)


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


def _discard(task: asyncio.Task[list[Message]] | None) -> None:
    """Cancel a prefetch that is no longer wanted; its outcome is of no interest."""
    if task is not None and not task.done():
        task.cancel()
    if task is not None:
        # Retrieve the outcome so asyncio never reports "exception was never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())


def _rpc_error(endpoint: str, what: str, error: aio.AioRpcError) -> Exception:
    code = error.code()
    text = f"peer {endpoint} {what} failed: {code.name} {error.details() or ''}".rstrip()
    if code in _PEER_DOWN_CODES:
        return PeerUnavailableError(text)
    return LogSyncError(text)


class PeerSync:
    """Replicates from every configured peer until stopped.

    `start()` seeds the sync state book from the store, warns once per unpinned peer, opens one
    channel per peer and starts one task per peer. `stop()` cancels every task, also one in the
    middle of a Fetch or a commit, and closes the channels.
    """

    def __init__(
        self,
        *,
        local_node: NodeId,
        peers: Sequence[PeerSpec],
        store: MsgbusStore,
        pipeline: SyncPipeline,
        interval_s: float,
        batch_limit: int,
        tls: PeerTlsConfig | None,
        rpc_timeout_s: float = 10.0,
        fetch_timeout_s: float = 60.0,
        backoff_cap_s: float | None = None,
        fetch_packing: int | None = None,
    ) -> None:
        self._local_node = local_node
        # One task per endpoint: a peer listed twice is synced once.
        unique: dict[str, PeerSpec] = {}
        for spec in peers:
            if spec.endpoint in unique:
                log.warning("peer %s is configured twice; syncing it once", spec.endpoint)
                continue
            unique[spec.endpoint] = spec
        self._peers = list(unique.values())
        self._store = store
        self._pipeline = pipeline
        self._interval_s = max(interval_s, 0.01)
        self._batch_limit = min(max(batch_limit, 1), MAX_FETCH_LIMIT)
        self._tls = tls
        self._rpc_timeout_s = rpc_timeout_s
        self._fetch_timeout_s = fetch_timeout_s
        # Messages per Fetch response to ask for (the opt-in packing extension); None means a
        # whole batch, 0 the original one-message-per-response stream. Original peers do not
        # know the field and answer one per response, which `envelopes` accepts as well.
        # Packing makes catch-up several times faster (one message per response is the
        # streaming bottleneck).
        self._fetch_packing = self._batch_limit if fetch_packing is None else max(fetch_packing, 0)
        # Default cap: 30 intervals, at most a minute (30 s with the default 1 s interval).
        self._backoff_cap_s = (
            backoff_cap_s
            if backoff_cap_s is not None
            else max(self._interval_s, min(60.0, 30 * self._interval_s))
        )
        # Logs being pulled right now, by any peer task. Two peers that both have a log ahead of
        # us would otherwise fetch and commit the same batches twice; the second one skips the
        # log for this pass instead of waiting, so it never blocks its other logs.
        self._busy_logs: set[LogId] = set()
        self._workers: list[_PeerWorker] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def local_node(self) -> NodeId:
        """This daemon's identity; never accepted from a peer."""
        return self._local_node

    async def start(self) -> None:
        """Start one sync task per peer; returns at once."""
        if self._tasks or not self._peers:
            return
        seed = await asyncio.to_thread(self._store.list_sync_states)
        by_peer: dict[str, list[PeerSyncState]] = {}
        for state in seed:
            by_peer.setdefault(state.peer, []).append(state)
        for spec in self._peers:
            if spec.pinned is None:
                log.warning(
                    "peer %s: identity is not pinned; use --peer %s=tenant/bl/device to bind it",
                    spec.endpoint,
                    spec.endpoint,
                )
            channel = open_peer_channel(
                spec.endpoint,
                self._tls,
                options=[
                    ("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES),
                    ("grpc.max_send_message_length", _MAX_RECEIVE_BYTES),
                ],
            )
            worker = _PeerWorker(self, spec, channel, SyncStateBook(by_peer.get(spec.endpoint, ())))
            self._workers.append(worker)
        log.info(
            "starting peer sync: peers=%s interval_ms=%d batch_limit=%d",
            ",".join(p.endpoint for p in self._peers),
            int(self._interval_s * 1000),
            self._batch_limit,
        )
        self._tasks = [
            asyncio.create_task(w.run(), name=f"peer-sync {w.endpoint}") for w in self._workers
        ]

    async def stop(self) -> None:
        """Stop every sync task and close the channels. Safe to call more than once."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        workers, self._workers = self._workers, []
        for worker in workers:
            await worker.close()


class _PeerWorker:
    """Everything about one peer: its channel, its backoff and its part of the sync state."""

    def __init__(
        self, owner: PeerSync, spec: PeerSpec, channel: aio.Channel, book: SyncStateBook
    ) -> None:
        self._owner = owner
        self._spec = spec
        self.endpoint = spec.endpoint
        self._channel = channel
        self._stub = rpc.MsgbusServiceStub(channel)
        self._book = book
        base = owner._interval_s
        # The wait before retry n is base * 2**(n-1), capped, plus up to one base of jitter so
        # that daemons restarted together do not retry in lockstep.
        self._wait = tenacity.wait_exponential(
            multiplier=base, max=owner._backoff_cap_s
        ) + tenacity.wait_random(0, base)
        self._log_retry_at: dict[StateKey, float] = {}
        self._peer_error = ""
        self._log_errors: dict[StateKey, str] = {}
        self._warned_heads: set[str] = set()

    async def close(self) -> None:
        """Close the channel (cancelling any call still on it)."""
        with contextlib.suppress(Exception):
            await self._channel.close(grace=None)

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sync passes forever; a failing pass is retried with backoff, a good one resets it."""
        retrying = tenacity.AsyncRetrying(
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(PeerUnavailableError),
            stop=tenacity.stop_never,
            reraise=True,
        )
        while True:
            # Each call starts a fresh attempt count, so the backoff resets after a good pass.
            await retrying(self._pass)
            await asyncio.sleep(self._owner._interval_s)

    async def _pass(self) -> None:
        try:
            await self._check_identity()
            heads = await self._list_heads()
            local_heads = {
                (h.topic, h.origin): h.head_id
                for h in await asyncio.to_thread(self._owner._store.list_heads)
            }
            progressed = False
            for head in heads:
                progressed |= await self._sync_log(head, local_heads)
        except PeerUnavailableError as error:
            await self._peer_failed(str(error))
            raise
        except MsgbusError as error:
            # The local store failed to answer a read: not the peer's fault, but nothing can be
            # synced this pass, so back off as for a failing peer.
            await self._peer_failed(f"local store: {error}")
            raise PeerUnavailableError(str(error)) from error
        except Exception as error:
            # A bug must not end this peer's task for good: log it and retry with backoff.
            log.exception("peer %s: unexpected error in sync pass", self.endpoint)
            await self._peer_failed(f"internal error: {error!r}")
            raise PeerUnavailableError(repr(error)) from error
        self._book.success(self.endpoint, progressed=progressed)
        if self._peer_error:
            log.info("peer %s: sync recovered", self.endpoint)
            self._peer_error = ""
        await self._flush()

    async def _peer_failed(self, error: str) -> None:
        self._book.failure(self.endpoint, error)
        # Log a failure when it starts or changes, not on every retry.
        if error != self._peer_error:
            log.warning("peer %s: sync failed: %s", self.endpoint, error)
        else:
            log.debug("peer %s: sync still failing: %s", self.endpoint, error)
        self._peer_error = error
        await self._flush()

    # -- peer calls -------------------------------------------------------------------------------

    async def _check_identity(self) -> None:
        endpoint = self.endpoint
        try:
            response = await self._stub.Health(
                pb.HealthRequest(), timeout=self._owner._rpc_timeout_s
            )
        except aio.AioRpcError as error:
            raise PeerUnavailableError(_rpc_error(endpoint, "Health", error).args[0]) from None
        if not response.HasField("node"):
            raise PeerUnavailableError(f"peer {endpoint} health response has no node")
        remote = _node_from_pb(response.node)
        try:
            remote.validate("peer node")
        except MsgbusError as error:
            raise PeerUnavailableError(
                f"peer {endpoint} reports an invalid identity: {error}"
            ) from None
        if remote == self._owner.local_node:
            raise PeerUnavailableError(f"peer {endpoint} reports the local node identity")
        pinned = self._spec.pinned
        if pinned is not None and remote != pinned:
            raise PeerUnavailableError(
                f"peer {endpoint} identity mismatch: expected {pinned.key}, got {remote.key}"
            )
        if response.status != "SERVING":
            raise PeerUnavailableError(f"peer {endpoint} is not serving: {response.status!r}")

    async def _list_heads(self) -> list[pb.TopicHead]:
        try:
            response = await self._stub.ListHeads(
                pb.ListHeadsRequest(), timeout=self._owner._rpc_timeout_s
            )
        except aio.AioRpcError as error:
            raise PeerUnavailableError(
                _rpc_error(self.endpoint, "ListHeads", error).args[0]
            ) from None
        return list(response.heads)

    async def _fetch(self, topic: str, origin: NodeId, from_head_id: int) -> list[Message]:
        """One batch: at most `batch_limit` messages from `from_head_id`."""
        limit = self._owner._batch_limit
        request = pb.FetchRequest(
            topic=topic,
            origin=_node_to_pb(origin),
            from_head_id=from_head_id,
            limit=limit,
            max_messages_per_response=self._owner._fetch_packing,
        )
        # The deadline covers the whole stream, so a peer that stalls mid-stream cannot hold
        # this task longer than fetch_timeout_s.
        call = self._stub.Fetch(request, timeout=self._owner._fetch_timeout_s)
        messages: list[Message] = []
        try:
            async for response in call:
                for envelope in envelopes(response):
                    messages.append(_message_from_pb(envelope))
                if len(messages) >= limit:
                    break  # a peer that ignores the limit does not get to fill our memory
        except aio.AioRpcError as error:
            raise _rpc_error(self.endpoint, "Fetch", error) from None
        finally:
            call.cancel()
        return messages[:limit]

    # -- one log ----------------------------------------------------------------------------------

    def _parse_head(self, head: pb.TopicHead) -> tuple[str, NodeId, int] | None:
        try:
            if not head.HasField("origin"):
                raise LogSyncError("topic head origin is required")
            origin = _node_from_pb(head.origin).validate("topic head origin")
            validate_topic(head.topic, "topic head topic")
        except (LogSyncError, MsgbusError) as error:
            # Nothing can be recorded under a key that is not a valid name; warn once.
            if str(error) not in self._warned_heads:
                self._warned_heads.add(str(error))
                log.warning("peer %s: ignoring an invalid head: %s", self.endpoint, error)
            return None
        return head.topic, origin, head.head_id

    async def _sync_log(self, head: pb.TopicHead, local_heads: dict[LogId, int]) -> bool:
        """Bring one log up to the peer's head; True when something was stored."""
        parsed = self._parse_head(head)
        if parsed is None:
            return False
        topic, origin, remote_head = parsed
        key = state_key(self.endpoint, topic, origin)
        local_head = local_heads.get((topic, origin), 0)
        if origin == self._owner.local_node and remote_head > local_head:
            # This daemon is the only authority for its own logs: a peer that has "more" of one
            # holds forged data, or data from before a local reset. Refuse, never fetch. A peer
            # that holds no more than this daemon (every two-way peer does) is simply in sync.
            self._log_failed(
                key,
                f"refused: log of the local node {origin.key} is never accepted from a peer",
                topic,
                origin,
                local_head=local_head,
                remote_head=remote_head,
                count=False,
            )
            return False
        if remote_head <= local_head:
            self._book.success(
                self.endpoint, topic, origin, local_head=local_head, remote_head=remote_head
            )
            self._log_recovered(key)
            return False
        if time.monotonic() < self._log_retry_at.get(key, 0.0):
            return False  # still backing off after a failure
        log_id = (topic, origin)
        busy = self._owner._busy_logs
        if log_id in busy:
            return False  # another peer's task is pulling this log; look again next pass
        busy.add(log_id)
        try:
            progressed = await self._pull(key, topic, origin, remote_head)
        finally:
            busy.discard(log_id)
        # Write this log's state now rather than at the end of the pass, so progress and errors
        # show in ListPeerSyncStates while the other logs are still being pulled.
        await self._flush()
        return progressed

    async def _pull(self, key: StateKey, topic: str, origin: NodeId, remote_head: int) -> bool:
        store = self._owner._store
        # Read the head again: another peer may have brought this log forward since the pass
        # started.
        local_head = await asyncio.to_thread(store.get_head, topic, origin)
        synced: int | None = None
        progressed = False
        # The next batch is fetched while the current one commits, so the peer's read and the
        # network overlap the local write instead of alternating with it.
        prefetch: asyncio.Task[list[Message]] | None = None
        prefetch_from = 0
        try:
            while local_head < remote_head:
                expected = local_head + 1
                if prefetch is not None and prefetch_from == expected:
                    batch = await prefetch
                else:
                    _discard(prefetch)
                    batch = await self._fetch(topic, origin, expected)
                prefetch = None
                if not batch:
                    raise LogSyncError(
                        f"peer {self.endpoint} lists head {remote_head} for topic={topic} "
                        f"origin={origin.key} but served nothing from head {expected}"
                    )
                batch, problem = self._one_log_prefix(batch, topic, origin)
                before = local_head
                if batch:
                    prefetch_from = batch[-1].head_id + 1
                    if problem is None and prefetch_from <= remote_head:
                        prefetch = asyncio.create_task(self._fetch(topic, origin, prefetch_from))
                    result = await self._replicate(batch)
                    accepted = len(result.changed) + result.unchanged
                    progressed |= bool(result.changed)
                    if accepted:
                        synced = batch[accepted - 1].head_id
                        local_head = max(local_head, synced)
                        remote_head = max(remote_head, synced)
                    if result.error is not None:
                        raise LogSyncError(
                            f"rejected from peer {self.endpoint}: {result.error}"
                        ) from result.error
                if problem is not None:
                    raise LogSyncError(problem)
                if local_head <= before:
                    # Only heads we already had: without this, a peer that keeps serving old
                    # heads would keep this loop going forever.
                    raise LogSyncError(
                        f"peer {self.endpoint} made no progress on topic={topic} "
                        f"origin={origin.key}: asked from head {expected}, got heads "
                        f"{batch[0].head_id}..{batch[-1].head_id}"
                        if batch
                        else f"peer {self.endpoint} made no progress on topic={topic}"
                    )
        except LogSyncError as error:
            _discard(prefetch)
            self._log_failed(
                key,
                str(error),
                topic,
                origin,
                local_head=local_head,
                remote_head=remote_head,
                last_synced_head=synced,
            )
            return progressed
        except PeerUnavailableError as error:
            _discard(prefetch)
            self._log_failed(
                key,
                str(error),
                topic,
                origin,
                local_head=local_head,
                remote_head=remote_head,
                last_synced_head=synced,
            )
            raise
        except MsgbusError as error:
            _discard(prefetch)
            # The local store or pipeline failed (StorageError): record it on the log, go on.
            self._log_failed(
                key,
                f"local store: {error}",
                topic,
                origin,
                local_head=local_head,
                remote_head=remote_head,
                last_synced_head=synced,
            )
            return progressed
        except BaseException:
            _discard(prefetch)  # cancelled (shutdown) or a bug: leave no fetch behind
            raise
        _discard(prefetch)
        self._book.success(
            self.endpoint,
            topic,
            origin,
            local_head=local_head,
            remote_head=remote_head,
            last_synced_head=synced,
        )
        self._log_recovered(key)
        return progressed

    def _one_log_prefix(
        self, batch: list[Message], topic: str, origin: NodeId
    ) -> tuple[list[Message], str | None]:
        """The part of a batch that is one log in strictly ascending head order, and the problem
        after it, if any.

        ReplicateOp takes messages of one log in ascending order, so a peer that mixes in another
        log's messages or repeats heads is stopped here with a clear error. Everything else (a
        gap, a copy that differs from a stored row, a malformed marker) is for the store's accept
        rules to judge; a batch that starts below the requested head is judged there too, so a
        peer whose history diverged from ours shows up as a conflict.
        """
        previous = 0
        for index, message in enumerate(batch):
            if message.topic != topic or message.origin != origin:
                return batch[:index], (
                    f"peer {self.endpoint} returned mismatched message for topic={topic} "
                    f"origin={origin.key}: got topic={message.topic} "
                    f"origin={message.origin.key}"
                )
            if message.head_id <= previous:
                return batch[:index], (
                    f"peer {self.endpoint} served topic={topic} origin={origin.key} out of "
                    f"order: head_id {message.head_id} after {previous}"
                )
            previous = message.head_id
        return batch, None

    async def _replicate(self, batch: list[Message]) -> ReplicateResult:
        # One batch, one ReplicateOp, one transaction. The pipeline wakes local subscribers for
        # whatever changed.
        result = await self._owner._pipeline.submit(ReplicateOp(batch))
        if not isinstance(result, ReplicateResult):  # pragma: no cover - contract violation
            raise MsgbusError(f"pipeline returned {type(result).__name__} for a ReplicateOp")
        return result

    def _log_failed(
        self,
        key: StateKey,
        error: str,
        topic: str,
        origin: NodeId,
        *,
        local_head: int,
        remote_head: int,
        last_synced_head: int | None = None,
        count: bool = True,
    ) -> None:
        state = self._book.failure(
            self.endpoint,
            error,
            topic,
            origin,
            local_head=local_head,
            remote_head=remote_head,
            last_synced_head=last_synced_head,
            count=count,
        )
        if count:
            attempt = tenacity.RetryCallState(
                retry_object=tenacity.AsyncRetrying(), fn=None, args=(), kwargs={}
            )
            attempt.attempt_number = max(state.consecutive_failures, 1)
            self._log_retry_at[key] = time.monotonic() + self._wait(attempt)
        if self._log_errors.get(key) != error:
            log.warning(
                "peer %s: log topic=%s origin=%s not synced: %s",
                self.endpoint,
                topic,
                origin.key,
                error,
            )
            self._log_errors[key] = error

    def _log_recovered(self, key: StateKey) -> None:
        self._log_retry_at.pop(key, None)
        if self._log_errors.pop(key, None) is not None:
            log.info("peer %s: log %s/%s in sync again", self.endpoint, key[1], key[2])

    # -- state ------------------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Write the sync state records that changed, in one transaction."""
        states = self._book.take_pending()
        if not states:
            return
        try:
            outcomes = await self._owner._pipeline.submit_many(
                [RecordSyncStateOp(state) for state in states]
            )
        except MsgbusError as error:
            log.warning("peer %s: cannot record sync state: %s", self.endpoint, error)
            self._book.restore(states)
            return
        done = [s for s, o in zip(states, outcomes, strict=True) if not isinstance(o, Exception)]
        self._book.written(done)
        failed = [s for s, o in zip(states, outcomes, strict=True) if isinstance(o, Exception)]
        if failed:
            log.warning("peer %s: %d sync state records not written", self.endpoint, len(failed))
            self._book.restore(failed)
