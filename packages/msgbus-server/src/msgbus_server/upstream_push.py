"""The device side of the Push RPC: push this node's logs to one `--upstream`, live.

It runs over the one channel the upstream's pull worker opened (`sync_peer.PeerWorker.channel`),
so a device behind NAT syncs both ways over the connection it dialled. A session:

1. open a Push stream, send the hello (this node), read the welcome (the largest batch the
   upstream takes);
2. offer the heads of every log this node holds that `--push-topics` matches (pages of at most
   `MAX_OFFER_HEADS`, marker logs first), and read the upstream's heads from the reply;
3. for each log the upstream lacks (and does not refuse), send its missing messages in batches
   of that one log, read from the store within the byte budget (the welcome's
   `max_batch_bytes` and the Fetch page budget), at most `MAX_IN_FLIGHT` batches unacknowledged;
   a batch after a retention-trimmed prefix names `first_head_id`;
4. each ack advances the log's push record to the upstream's durable head;
5. then wait for local commits (`LogNotifier.wait_any_beyond`, with the sync interval as a
   backstop) and offer the logs that changed; failed logs are offered again once their backoff
   ends.

A broken stream ends the session; the next one (after `backoff`) offers everything again, so it
resumes from the heads the upstream holds: nothing is sent twice that it acknowledged, and
nothing is skipped. An upstream without the RPC (UNIMPLEMENTED: an original daemon, or
`--no-push-service`) is said once in the log; the device then only pulls, and asks again every
`UNSUPPORTED_RECHECK_S`.

Push records are kept apart from the pull records of the same upstream
(`sync_state.push_record_peer`): `local_head` is this node's head, `remote_head` and
`last_synced_head` the upstream's acknowledged one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
from collections import deque
from collections.abc import Sequence
from typing import Literal

import grpc
from grpc import aio

from msgbus_core import MsgbusError, NodeId, PeerSyncState
from msgbus_core.limits import DELETE_TOPIC, MAX_FETCH_LIMIT
from msgbus_core.model import TopicHead
from msgbus_core.store import MsgbusStore
from msgbus_proto import pb, rpc
from msgbus_server.convert import fill_envelope, node_from_pb, node_to_pb
from msgbus_server.notify import LogNotifier
from msgbus_server.peer_certificates import certificate_refusal
from msgbus_server.peers import PeerSpec
from msgbus_server.pipeline import CommitPipeline
from msgbus_server.push_intake import MAX_OFFER_HEADS, MAX_PUSH_BATCH_BYTES
from msgbus_server.push_stats import PushStats
from msgbus_server.sync_peer import SyncSettings
from msgbus_server.sync_state import Heads, LogId, SyncStateBook, flush_book, push_record_peer

__all__ = ["MAX_IN_FLIGHT", "UNSUPPORTED_RECHECK_S", "UpstreamPush"]

log = logging.getLogger("msgbus_server.sync")

MAX_IN_FLIGHT = 4
"""Batches sent and not yet acknowledged, per upstream: with batches of at most
`MAX_PUSH_BATCH_BYTES` (or the welcome's less), what a push holds is bounded in bytes."""
UNSUPPORTED_RECHECK_S = 300.0
"""How often an upstream without the Push RPC is asked again (it may have been upgraded)."""
STATE_FLUSH_S = 1.0
"""How often push records are written while a push is busy."""


class _SessionEnded(Exception):
    """The Push stream ended or broke; `str()` is the text recorded in sync state."""


class _Unsupported(Exception):
    """The upstream answers the Push RPC UNIMPLEMENTED."""


class _Session:
    """One Push stream: requests go out, their responses come back in the same order."""

    def __init__(self, call: aio.StreamStreamCall[pb.PushRequest, pb.PushResponse]) -> None:
        self._call = call
        self._pending: deque[asyncio.Future[pb.PushResponse]] = deque()
        self._error: BaseException | None = None

    async def request(self, request: pb.PushRequest) -> asyncio.Future[pb.PushResponse]:
        """Send one request; the future resolves to its response (or the stream's failure)."""
        if self._error is not None:
            raise self._error
        future: asyncio.Future[pb.PushResponse] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        try:
            await self._call.write(request)
        except aio.AioRpcError as error:
            self._fail(_ended(error))
        except (asyncio.InvalidStateError, aio.UsageError) as error:
            # The call already ended (the reader sees why): writing to it is refused.
            self._fail(_SessionEnded(f"the Push stream is closed ({error})"))
        if self._error is not None and not future.done():
            future.set_exception(self._error)
        return future

    async def read_all(self) -> None:
        """Hand each response to its request's future until the stream ends."""
        try:
            while True:
                response = await self._call.read()
                if not isinstance(response, pb.PushResponse):
                    raise _SessionEnded("the upstream ended the Push stream")
                if not self._pending:
                    raise _SessionEnded("the upstream sent a response nobody asked for")
                future = self._pending.popleft()
                if not future.done():
                    future.set_result(response)
        except aio.AioRpcError as error:
            self._fail(_ended(error))
        except _SessionEnded as error:
            self._fail(error)

    @property
    def error(self) -> BaseException | None:
        """Why the stream ended; None while it is open."""
        return self._error

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(self._error)


def _ended(error: aio.AioRpcError) -> BaseException:
    if error.code() is grpc.StatusCode.UNIMPLEMENTED:
        return _Unsupported(error.details() or "UNIMPLEMENTED")
    return _SessionEnded(f"Push failed: {error.code().name} {error.details() or ''}".rstrip())


class UpstreamPush:
    """Pushes this node's logs to one upstream until cancelled (see the module docstring)."""

    def __init__(
        self,
        *,
        spec: PeerSpec,
        channel: aio.Channel,
        local_node: NodeId,
        store: MsgbusStore,
        pipeline: CommitPipeline,
        notifier: LogNotifier,
        settings: SyncSettings,
        seed: Sequence[PeerSyncState] = (),
    ) -> None:
        self.endpoint = spec.endpoint
        self._spec = spec
        self._channel = channel
        self._stub = rpc.MsgbusServiceStub(channel)
        self._local = local_node
        self._store = store
        self._pipeline = pipeline
        self._notifier = notifier
        self._settings = settings
        self._backoff = functools.partial(settings.backoff, rng=random.Random())
        self._book = SyncStateBook(push_record_peer(spec.endpoint), seed, backoff=self._backoff)
        self.stats = PushStats()
        self._said_unsupported = False
        self._batch_ids = itertools.count(1)
        self._retry: dict[LogId, None] = {}
        """Logs whose push failed in this session: offered again once their backoff ends."""
        self._flushed_at = 0.0
        self._upstream: NodeId | None = None
        """The upstream's identity, from the current session's welcome."""
        self._welcomed = False
        """The current session got its welcome: a failure after it starts a new backoff run."""

    def peer_state(self) -> PeerSyncState | None:
        """The upstream-level push record as last noted."""
        return self._book.current(self._book.key())

    async def run(self) -> None:
        """Push sessions forever; a broken one is followed by another after backoff."""
        failures = 0
        while True:
            try:
                await self._session()
            except _Unsupported as error:
                if not self._said_unsupported:
                    self._said_unsupported = True
                    log.warning(
                        "upstream %s has no Push RPC (%s): an original daemon, or one with "
                        "--no-push-service; this node pulls from it only",
                        self.endpoint,
                        error,
                    )
                self._book.failure("the upstream has no Push RPC: pull only", count=False)
                await self._flush()
                await asyncio.sleep(UNSUPPORTED_RECHECK_S)
                continue
            except Exception as error:
                if not isinstance(error, _SessionEnded):
                    # A bug must not end this upstream's push for good: log it and go on.
                    log.exception("upstream %s: unexpected error in push", self.endpoint)
                failures = 1 if self._welcomed else failures + 1
                # A pinned upstream whose certificate names another node: say that, not
                # the closed connection gRPC saw (`peer_certificates`).
                text = f"upstream {self.endpoint}: {certificate_refusal(self._channel) or error}"
                self._book.failure(text)
                if self._book.announce_failure(self._book.key(), text):
                    log.warning("upstream %s: push stopped: %s", self.endpoint, error)
                await self._flush()
            await asyncio.sleep(self._backoff(failures))

    async def _session(self) -> None:
        self._welcomed = False
        self._retry.clear()
        call: aio.StreamStreamCall[pb.PushRequest, pb.PushResponse] = self._stub.Push()  # type: ignore[call-arg]  # written to as it goes
        session = _Session(call)
        reader = asyncio.create_task(session.read_all(), name=f"push-read {self.endpoint}")
        pushing = asyncio.create_task(self._push(session), name=f"push {self.endpoint}")
        try:
            # The reader ends only when the stream does: then the push stops too, wherever it
            # waits (a write to a broken stream may never return).
            await asyncio.wait({reader, pushing}, return_when=asyncio.FIRST_COMPLETED)
            if pushing.done():
                pushing.result()  # raises why the push stopped
            raise session.error or _SessionEnded("the Push stream ended")
        finally:
            call.cancel()
            for task in (pushing, reader):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.stats.streams = 0

    async def _push(self, session: _Session) -> None:
        hello = pb.PushRequest(hello=pb.PushHello(node=node_to_pb(self._local)))
        welcome = (await (await session.request(hello))).welcome
        self._welcomed = True
        self.stats.streams = 1
        if self._book.announce_recovery(self._book.key()):
            log.info("upstream %s: pushing again", self.endpoint)
        log.info(
            "upstream %s (%s): pushing as %s",
            self.endpoint,
            _node_key(welcome, "node"),
            _node_key(welcome, "pusher"),
        )
        self._book.success()
        # The upstream's own logs are never taken back by it (this node pulled them from it).
        self._upstream = _node_of(welcome)
        budget = min(welcome.max_batch_bytes or MAX_PUSH_BATCH_BYTES, self._settings.batch_bytes)
        window = asyncio.Semaphore(MAX_IN_FLIGHT)
        changes = self._notifier.changes
        seq = changes.seq if changes is not None else 0
        await self._offer_all(session, budget, window)
        while True:
            await self._flush_due()
            if changes is None:
                await asyncio.sleep(self._settings.interval_s)
                await self._offer_all(session, budget, window)
                continue
            if changes.seq == seq:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.interval_s):
                        await self._notifier.wait_any_beyond(seq)
            changed: dict[LogId, None] = {}
            while True:
                page = changes.since(seq, MAX_OFFER_HEADS)
                for entry_seq, log_id in page:
                    seq = entry_seq
                    changed[log_id] = None
                if len(page) < MAX_OFFER_HEADS:
                    break
            for log_id in list(self._retry):
                if self._book.retry_due(log_id):
                    del self._retry[log_id]
                    changed[log_id] = None
            if changed:
                heads = await asyncio.to_thread(self._log_heads, list(changed))
                await self._offer(session, [h for h in heads if h.head_id], budget, window)

    def _log_heads(self, logs: list[LogId]) -> list[TopicHead]:
        return [self._store.log_head(*log_id) for log_id in logs]

    async def _offer_all(self, session: _Session, budget: int, window: asyncio.Semaphore) -> None:
        """Offer every log this node holds, a page at a time."""
        after: tuple[str, str] | None = None
        while True:
            page = await asyncio.to_thread(self._store.list_heads, after, MAX_OFFER_HEADS)
            if not page:
                return
            await self._offer(session, page, budget, window)
            last = page[-1]
            after = (last.topic, last.origin.key)
            if len(page) < MAX_OFFER_HEADS:
                return

    async def _offer(
        self,
        session: _Session,
        heads: Sequence[TopicHead],
        budget: int,
        window: asyncio.Semaphore,
    ) -> None:
        """Offer these logs (those --push-topics matches), then send what the upstream lacks."""
        wanted = [
            head
            for head in heads
            if self._spec.push_topics.matches(head.topic) and head.origin != self._upstream
        ]
        # Marker logs first: the upstream takes a deleted copy only with its marker held.
        wanted.sort(key=lambda head: head.topic != DELETE_TOPIC)
        outstanding: list[asyncio.Future[pb.PushResponse]] = []
        for start in range(0, len(wanted), MAX_OFFER_HEADS):
            page = wanted[start : start + MAX_OFFER_HEADS]
            offer = pb.PushOffer()
            for head in page:
                offer.heads.append(
                    pb.TopicHead(
                        topic=head.topic,
                        origin=node_to_pb(head.origin),
                        head_id=head.head_id,
                        first_head_id=head.first_head_id,
                    )
                )
            reply = (await (await session.request(pb.PushRequest(offer=offer)))).offer_reply
            if len(reply.heads) != len(page):
                raise _SessionEnded(
                    f"the upstream answered {len(reply.heads)} heads to an offer of {len(page)}"
                )
            refused = list(reply.refused) + [False] * (len(page) - len(reply.refused))
            for local, remote, no in zip(page, reply.heads, refused, strict=True):
                log_id = (local.topic, local.origin)
                seen = Heads(local.head_id, remote.head_id)
                if no:
                    self._refused(log_id, seen)
                elif local.head_id <= remote.head_id:
                    self._in_sync(log_id, seen)
                else:
                    outstanding += await self._send_log(
                        session, local, remote.head_id, budget, window
                    )
        if outstanding:
            await asyncio.gather(*outstanding, return_exceptions=True)
        await self._flush_due()

    async def _send_log(
        self,
        session: _Session,
        local: TopicHead,
        remote_head: int,
        budget: int,
        window: asyncio.Semaphore,
    ) -> list[asyncio.Future[pb.PushResponse]]:
        """Send one log's messages above `remote_head`; the futures of their acks."""
        log_id = (local.topic, local.origin)
        if not local.first_head_id:
            return []  # trimmed empty here: nothing to send until it has new messages
        next_from = remote_head + 1
        first_head_id = 0
        if local.first_head_id > next_from:
            next_from = first_head_id = local.first_head_id
        sent: list[asyncio.Future[pb.PushResponse]] = []
        while next_from <= local.head_id and log_id not in self._retry:
            await window.acquire()
            try:
                messages = await asyncio.to_thread(
                    self._store.fetch, local.topic, local.origin, next_from, MAX_FETCH_LIMIT, budget
                )
            except BaseException:
                window.release()
                raise
            if not messages:
                window.release()
                break
            if messages[0].head_id > next_from:
                first_head_id = messages[0].head_id  # retention trimmed them meanwhile
            batch = pb.PushBatch(
                batch_id=next(self._batch_ids),
                topic=local.topic,
                origin=node_to_pb(local.origin),
                first_head_id=first_head_id,
            )
            add = batch.messages.add
            for message in messages:
                fill_envelope(add(), message)
            future = await session.request(pb.PushRequest(batch=batch))
            future.add_done_callback(
                functools.partial(self._acked, log_id, local.head_id, len(messages), window)
            )
            sent.append(future)
            next_from = messages[-1].head_id + 1
            first_head_id = 0
            await self._flush_due()  # a long push shows its progress as it goes
        return sent

    def _acked(
        self,
        log_id: LogId,
        local_head: int,
        count: int,
        window: asyncio.Semaphore,
        future: asyncio.Future[pb.PushResponse],
    ) -> None:
        window.release()
        if future.cancelled() or future.exception() is not None:
            return  # the session broke: the next one offers this log again
        ack = future.result().ack
        heads = Heads(max(local_head, ack.head_id), ack.head_id, ack.head_id)
        if ack.error_code:
            if log_id in self._retry:
                return  # a batch after the one that failed: its failure is already recorded
            self._retry[log_id] = None
            name = _CODE_NAMES.get(ack.error_code, str(ack.error_code))
            self._refused(log_id, heads, f"{name} {ack.error_message}", count=True)
            return
        self.stats.batches_out += 1
        self.stats.messages_out += count
        self._book.success(log_id, heads, progressed=True)
        if self._book.announce_recovery(self._book.key(log_id)):
            log.info("upstream %s: log %s/%s pushed again", self.endpoint, *_shown(log_id))

    def _refused(
        self,
        log_id: LogId,
        heads: Heads,
        why: str = "it does not take this log from this node",
        *,
        count: bool = False,
    ) -> None:
        """Record (and log, when it is new) that the upstream refused the log.

        A refused batch counts (the log backs off, then is offered again); a refusal in an
        offer reply does not: the log is offered again when it changes or on a new session.
        """
        error = f"refused by upstream {self.endpoint}: {why}"
        self._book.failure(error, log_id, heads, count=count)
        if self._book.announce_failure(self._book.key(log_id), error):
            self.stats.refused += 1
            log.warning(
                "upstream %s: log topic=%s origin=%s not pushed: %s",
                self.endpoint,
                log_id[0],
                log_id[1].key,
                error,
            )

    def _in_sync(self, log_id: LogId, heads: Heads) -> None:
        self._book.success(log_id, heads)
        if self._book.announce_recovery(self._book.key(log_id)):
            log.info("upstream %s: log %s/%s in sync again", self.endpoint, *_shown(log_id))

    async def _flush_due(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._flushed_at >= STATE_FLUSH_S:
            self._flushed_at = now
            await self._flush()

    async def _flush(self) -> None:
        await flush_book(self._pipeline, self._book, f"upstream {self.endpoint} push")


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _node_of(welcome: pb.PushWelcome, name: Literal["node", "pusher"] = "node") -> NodeId | None:
    """A node the welcome names; None when it is absent or malformed."""
    if not welcome.HasField(name):
        return None
    try:
        return node_from_pb(getattr(welcome, name), f"welcome.{name}")
    except MsgbusError:
        return None


def _node_key(welcome: pb.PushWelcome, name: Literal["node", "pusher"]) -> str:
    """A node the welcome names, for the log line; "?" when it is absent or malformed."""
    node = _node_of(welcome, name)
    return node.key if node is not None else "?"


def _shown(log_id: LogId) -> tuple[str, str]:
    return log_id[0], log_id[1].key
