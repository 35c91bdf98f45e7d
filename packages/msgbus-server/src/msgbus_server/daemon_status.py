"""The daemon's state at one moment: what the metrics, the status page and `/status.json` show.

`StatusSource.snapshot()` runs on the event loop, where the daemon's parts live, and copies what
they know into a `DaemonStatus` of plain frozen values that any thread may then read and render:
the node, its health, each peer's sync counters and lag (`sync_stats`), the open Subscribe
streams (`stream_stats`), and a survey of the store.

The survey (`StoreSurvey`) reads every log's extent (`list_heads`, a page at a time), every
queue's depth (`list_fifo_queues`) and the store's size on a reader thread. It costs one pass over
the logs, so it is cached: a snapshot taken sooner than `SURVEY_MIN_INTERVAL_S` after the last
survey, or sooner than `SURVEY_COST_FACTOR` times as long as that survey took, reuses it. On a
store of a million logs that keeps the reader threads at most about a tenth busy however often
the page is scraped. Only the `max_logs` busiest logs and queues are kept: first the logs that
moved since the previous survey (the daemon's head change index says which), then the largest
by bytes; queues by depth. Everything else is only counted in the totals.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from msgbus_core.errors import MsgbusError
from msgbus_core.fifo_leases import is_dead_letter_queue
from msgbus_core.model import NodeId, TopicHead
from msgbus_core.store import DiskUsage, MsgbusStore
from msgbus_server.clock import now_ms
from msgbus_server.disk_budget import DiskBudget
from msgbus_server.health import Health
from msgbus_server.notify import LogNotifier
from msgbus_server.peers import PeerSpec
from msgbus_server.push_stats import PushStats
from msgbus_server.stream_stats import StreamStats
from msgbus_server.sync import PeerSync

__all__ = [
    "DaemonStatus",
    "LogStatus",
    "PeerStatus",
    "QueueStatus",
    "StatusSource",
    "StoreSurvey",
    "daemon_version",
]

SURVEY_MIN_INTERVAL_S: Final = 2.0
"""The least time between two surveys of the store."""
SURVEY_COST_FACTOR: Final = 10.0
"""A survey is reused for at least this many times as long as it took."""
SURVEY_PAGE: Final = 5_000
"""Logs (and queues) read per store call while surveying."""

_LogKey = tuple[str, NodeId]

log = logging.getLogger("msgbus_server.status")


def daemon_version() -> str:
    """The installed msgbus-server version ("unknown" when run from a bare source tree)."""
    try:
        return version("msgbus-server")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class LogStatus:
    """One of the busiest logs, as the last survey saw it."""

    topic: str
    origin: str
    """The origin's node key (tenant/bl/device)."""
    first_head_id: int
    head_id: int
    messages: int
    bytes: int
    active: bool
    """Its head moved since the survey before."""
    rate: float | None
    """Messages per second since the survey before, when that survey listed it too."""


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """One of the deepest FIFO queues."""

    queue: str
    depth: int
    attempts: int
    """Rejected attempts of the messages it holds: redeliveries."""


@dataclass(frozen=True, slots=True)
class StoreSurvey:
    """One pass over the store's logs and queues (see the module docstring)."""

    at_ms: int
    seconds: float
    """How long the survey took."""
    logs: int
    messages: int
    """Messages held, in every log (`TopicHead.count`)."""
    bytes: int
    """Their `read_size` total."""
    busiest: tuple[LogStatus, ...]
    queues: int
    """Queues holding at least one message."""
    queued_messages: int
    queued_attempts: int
    deepest: tuple[QueueStatus, ...]
    usage: DiskUsage
    own_heads: Mapping[str, int] = field(default_factory=dict)
    """The head of each of this node's own logs, by topic (only when there are peers)."""
    leased_messages: int = 0
    """Messages a lease holds (or held until it ran out, not yet released), in every queue."""
    dead_letters: int = 0
    """Messages in the dead-letter queues (`QUEUE.dead`)."""


_EMPTY_SURVEY = StoreSurvey(0, 0.0, 0, 0, 0, (), 0, 0, 0, (), DiskUsage(0, 0))


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One configured peer: its state, its counters and how far the two nodes are apart."""

    endpoint: str
    pinned: str | None
    up: bool
    """Its last sync pass completed."""
    passes: int
    failed_passes: int
    pass_seconds: float
    last_pass_seconds: float
    consecutive_failures: int
    last_error: str
    """Why the last pass failed; "" after a good one."""
    last_success_at_ms: int
    """When the last sync pass with it completed (0: none since the daemon started)."""
    lag_messages: int
    """Messages the peer listed that this node has not stored yet."""
    unsynced_messages: int | None
    """This node's own messages the peer has not listed as held; None until it listed once."""
    failures: Mapping[str, int]
    refused: int
    pulled_messages: int
    pulled_bytes: int
    failing_logs: int
    log_error: str
    """The error of one of the failing logs ("" when none fails)."""


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """The daemon at one moment; plain values, safe to read from any thread."""

    node: str
    version: str
    storage: str
    location: str
    """Where the store is (a connection string without its password)."""
    listen: str
    started_at_ms: int
    now_ms: int
    serving: bool
    reasons: Mapping[str, str]
    """Why it is not serving or not ready, by subsystem."""
    survey: StoreSurvey
    budget_bytes: int | None
    budget_used_bytes: int | None
    discard: str | None
    peers: tuple[PeerStatus, ...]
    subscribers: int
    """Open Subscribe streams."""
    replaying_subscribers: int
    """Open Subscribe streams still reading what was committed before (not waiting)."""
    behind_seconds: float
    """How far behind the log's head the furthest open Subscribe stream is."""
    delivered: Mapping[str, int]
    """Messages delivered since startup, by method (Fetch, Subscribe)."""
    max_logs: int
    push_in: PushStats = field(default_factory=PushStats)
    """What devices pushed to this daemon (Push streams open, batches, messages, refusals)."""
    push_out: PushStats = field(default_factory=PushStats)
    """What this daemon pushed to its upstreams, summed over them."""

    def to_json(self) -> dict[str, Any]:
        """The snapshot as `/status.json` serves it."""
        survey = self.survey
        return {
            "node": self.node,
            "version": self.version,
            "listen": self.listen,
            "started_at_ms": self.started_at_ms,
            "now_ms": self.now_ms,
            "serving": self.serving,
            "reasons": dict(self.reasons),
            "storage": {
                "backend": self.storage,
                "location": self.location,
                "file_bytes": survey.usage.file_bytes,
                "reusable_bytes": survey.usage.reusable_bytes,
                "logs": survey.logs,
                "messages": survey.messages,
                "bytes": survey.bytes,
                "budget_bytes": self.budget_bytes,
                "budget_used_bytes": self.budget_used_bytes,
                "discard": self.discard,
                "surveyed_at_ms": survey.at_ms,
                "survey_seconds": survey.seconds,
            },
            "peers": [_peer_json(peer) for peer in self.peers],
            "logs": [_log_json(log) for log in survey.busiest],
            "queues": {
                "count": survey.queues,
                "messages": survey.queued_messages,
                "attempts": survey.queued_attempts,
                "deepest": [
                    {"queue": q.queue, "depth": q.depth, "attempts": q.attempts}
                    for q in survey.deepest
                ],
            },
            "subscribers": {
                "open": self.subscribers,
                "replaying": self.replaying_subscribers,
                "behind_seconds": self.behind_seconds,
                "delivered": dict(self.delivered),
            },
        }


def _peer_json(peer: PeerStatus) -> dict[str, Any]:
    return {
        "endpoint": peer.endpoint,
        "pinned": peer.pinned,
        "up": peer.up,
        "lag_messages": peer.lag_messages,
        "unsynced_messages": peer.unsynced_messages,
        "last_error": peer.last_error,
        "consecutive_failures": peer.consecutive_failures,
        "last_success_at_ms": peer.last_success_at_ms,
        "passes": peer.passes,
        "failed_passes": peer.failed_passes,
        "last_pass_seconds": peer.last_pass_seconds,
        "failures": dict(peer.failures),
        "refused": peer.refused,
        "pulled_messages": peer.pulled_messages,
        "pulled_bytes": peer.pulled_bytes,
        "failing_logs": peer.failing_logs,
        "log_error": peer.log_error,
    }


def _log_json(log: LogStatus) -> dict[str, Any]:
    return {
        "topic": log.topic,
        "origin": log.origin,
        "first_head_id": log.first_head_id,
        "head_id": log.head_id,
        "messages": log.messages,
        "bytes": log.bytes,
        "active": log.active,
        "rate": log.rate,
    }


def _survey(
    store: MsgbusStore,
    *,
    active: frozenset[_LogKey],
    max_logs: int,
    local_node: NodeId | None,
    previous: Mapping[tuple[str, str], int],
    previous_at_ms: int,
) -> StoreSurvey:
    """Survey the store (blocking: run it on a reader thread)."""
    started = time.perf_counter()
    at_ms = now_ms()
    logs = messages = held_bytes = 0
    own: dict[str, int] = {}
    order = itertools.count()
    # A min-heap of the busiest so far: the least busy is the one pushed out; of two as busy,
    # the later in listing order (the order counts down).
    busiest: list[tuple[tuple[bool, int, int], int, TopicHead]] = []
    after: tuple[str, str] | None = None
    while True:
        page = store.list_heads(after=after, limit=SURVEY_PAGE)
        for head in page:
            logs += 1
            messages += head.count
            held_bytes += head.bytes
            if local_node is not None and head.origin == local_node:
                own[head.topic] = head.head_id
            if max_logs:
                rank = ((head.topic, head.origin) in active, head.bytes, head.head_id)
                entry = (rank, -next(order), head)
                if len(busiest) < max_logs:
                    heapq.heappush(busiest, entry)
                elif entry[:2] > busiest[0][:2]:
                    heapq.heapreplace(busiest, entry)
        if len(page) < SURVEY_PAGE:
            break
        after = (page[-1].topic, page[-1].origin.key)
    queues = queued = attempts = leased = dead = 0
    deepest: list[tuple[int, int, QueueStatus]] = []
    queue_after: str | None = None
    while True:
        summaries = store.list_fifo_queues(after=queue_after, limit=SURVEY_PAGE)
        for summary in summaries:
            queues += 1
            queued += summary.depth
            attempts += summary.attempts
            leased += summary.leased
            if is_dead_letter_queue(summary.queue):
                dead += summary.depth
            if max_logs:
                status = QueueStatus(summary.queue, summary.depth, summary.attempts)
                item = (summary.depth, -next(order), status)
                if len(deepest) < max_logs:
                    heapq.heappush(deepest, item)
                elif item[:2] > deepest[0][:2]:
                    heapq.heapreplace(deepest, item)
        if len(summaries) < SURVEY_PAGE:
            break
        queue_after = summaries[-1].queue
    usage = store.disk_usage()
    elapsed_s = max((at_ms - previous_at_ms) / 1000, 0.001)
    ranked = sorted(busiest, reverse=True)
    statuses = []
    for rank, _, head in ranked:
        before = previous.get((head.topic, head.origin.key)) if previous_at_ms else None
        rate = (head.head_id - before) / elapsed_s if before is not None else None
        statuses.append(
            LogStatus(
                head.topic,
                head.origin.key,
                head.first_head_id,
                head.head_id,
                head.count,
                head.bytes,
                rank[0],
                rate,
            )
        )
    return StoreSurvey(
        at_ms=at_ms,
        seconds=time.perf_counter() - started,
        logs=logs,
        messages=messages,
        bytes=held_bytes,
        busiest=tuple(statuses),
        queues=queues,
        queued_messages=queued,
        queued_attempts=attempts,
        deepest=tuple(item[2] for item in sorted(deepest, reverse=True)),
        usage=usage,
        own_heads=own,
        leased_messages=leased,
        dead_letters=dead,
    )


class StatusSource:
    """Takes `DaemonStatus` snapshots of one daemon; `snapshot` runs on the event loop."""

    def __init__(
        self,
        *,
        node: NodeId,
        storage: str,
        location: str,
        listen: str,
        store: MsgbusStore,
        readers: Executor,
        health: Health,
        notifier: LogNotifier,
        streams: StreamStats,
        peers: tuple[PeerSpec, ...],
        sync: Callable[[], PeerSync | None],
        budget: DiskBudget | None,
        max_logs: int,
        push_in: PushStats | None = None,
    ) -> None:
        """A source of snapshots of the daemon's parts.

        `sync` gives the daemon's peer sync once it has started (None before); `push_in` is
        what the Push RPC counts (None without the push service).
        """
        self._push_in = push_in
        self._node = node
        self._storage = storage
        self._location = location
        self._listen = listen
        self._store = store
        self._readers = readers
        self._health = health
        self._notifier = notifier
        self._streams = streams
        self._peers = peers
        self._sync = sync
        self._budget = budget
        self._max_logs = max_logs
        self._version = daemon_version()
        self._started_at_ms = now_ms()
        self._survey = _EMPTY_SURVEY
        self._surveying: asyncio.Task[StoreSurvey] | None = None
        self._surveyed_seq = 0
        self._fresh_until = 0.0
        self._survey_error = ""
        """The last survey's error, logged once ("" after a good survey)."""

    async def snapshot(self) -> DaemonStatus:
        """The daemon now, with the latest survey of the store (taken now if it is stale)."""
        survey = await self._current_survey()
        now = now_ms()
        subscribers = self._streams.subscribers()
        behind_ms = max((tally.behind_ms(now) for tally in subscribers), default=0)
        budget = self._budget
        return DaemonStatus(
            node=self._node.key,
            version=self._version,
            storage=self._storage,
            location=self._location,
            listen=self._listen,
            started_at_ms=self._started_at_ms,
            now_ms=now,
            serving=self._health.serving,
            reasons={s.value: reason for s, reason in self._health.reasons().items()},
            survey=survey,
            budget_bytes=budget.max_bytes if budget is not None else None,
            budget_used_bytes=budget.used_bytes if budget is not None else None,
            discard=budget.discard if budget is not None else None,
            peers=self._peer_statuses(survey),
            subscribers=len(subscribers),
            replaying_subscribers=sum(1 for tally in subscribers if not tally.waiting),
            behind_seconds=behind_ms / 1000,
            delivered=dict(self._streams.delivered),
            max_logs=self._max_logs,
            push_in=replace(self._push_in) if self._push_in is not None else PushStats(),
            push_out=self._push_out(),
        )

    def _push_out(self) -> PushStats:
        sync = self._sync()
        total = PushStats()
        for push in sync.pushes if sync is not None else ():
            stats = push.stats
            total.streams += stats.streams
            total.batches_out += stats.batches_out
            total.messages_out += stats.messages_out
            total.refused += stats.refused
        return total

    def _peer_statuses(self, survey: StoreSurvey) -> tuple[PeerStatus, ...]:
        sync = self._sync()
        workers = {worker.endpoint: worker for worker in sync.workers} if sync else {}
        statuses = []
        seen: set[str] = set()
        for spec in self._peers:
            if spec.endpoint in seen:
                continue  # configured twice, synced once
            seen.add(spec.endpoint)
            worker = workers.get(spec.endpoint)
            pinned = spec.pinned.key if spec.pinned is not None else None
            if worker is None:
                statuses.append(_idle_peer(spec.endpoint, pinned))
                continue
            stats = worker.stats
            state = worker.peer_state()
            unsynced = None
            if stats.own_held is not None:
                held = stats.own_held
                unsynced = sum(
                    max(head - held.get(topic, 0), 0) for topic, head in survey.own_heads.items()
                )
            statuses.append(
                PeerStatus(
                    endpoint=spec.endpoint,
                    pinned=pinned,
                    up=stats.passes > 0 and (state is None or not state.consecutive_failures),
                    passes=stats.passes,
                    failed_passes=stats.failed_passes,
                    pass_seconds=stats.pass_seconds,
                    last_pass_seconds=stats.last_pass_seconds,
                    consecutive_failures=state.consecutive_failures if state else 0,
                    last_error=state.last_error if state else "",
                    last_success_at_ms=stats.last_success_at_ms,
                    lag_messages=stats.lag,
                    unsynced_messages=unsynced,
                    failures=dict(stats.failures),
                    refused=stats.refused,
                    pulled_messages=stats.pulled_messages,
                    pulled_bytes=stats.pulled_bytes,
                    failing_logs=len(stats.failing),
                    log_error=next(reversed(stats.failing.values()), ""),
                )
            )
        return tuple(statuses)

    async def _current_survey(self) -> StoreSurvey:
        if self._surveying is None and time.monotonic() >= self._fresh_until:
            self._surveying = asyncio.create_task(self._take_survey(), name="status-survey")
        if self._surveying is not None:
            # Shielded: a scrape that gives up does not cancel the survey for the others.
            task = self._surveying
            try:
                self._survey = await asyncio.shield(task)
            except MsgbusError as error:
                # The store fails: the rest of the status (health first) matters all the more,
                # so it is served with the last survey, and the survey is tried again later.
                self._fresh_until = time.monotonic() + SURVEY_MIN_INTERVAL_S
                if str(error) != self._survey_error:
                    log.warning("status: cannot survey the store: %s", error)
                self._survey_error = str(error)
            else:
                self._survey_error = ""
            finally:
                if task.done():
                    self._surveying = None
        return self._survey

    async def _take_survey(self) -> StoreSurvey:
        changes = self._notifier.changes
        active: frozenset[_LogKey] = frozenset()
        if changes is not None:
            # The logs that moved since the last survey (the latest of them, at most as many
            # as are kept).
            active = frozenset(changes.recent(self._surveyed_seq, self._max_logs))
            self._surveyed_seq = changes.seq
        previous = {(log.topic, log.origin): log.head_id for log in self._survey.busiest}
        survey = await asyncio.get_running_loop().run_in_executor(
            self._readers,
            functools.partial(
                _survey,
                self._store,
                active=active,
                max_logs=self._max_logs,
                local_node=self._node if self._peers else None,
                previous=previous,
                previous_at_ms=self._survey.at_ms,
            ),
        )
        self._fresh_until = time.monotonic() + max(
            SURVEY_MIN_INTERVAL_S, SURVEY_COST_FACTOR * survey.seconds
        )
        return survey


def _idle_peer(endpoint: str, pinned: str | None) -> PeerStatus:
    """A configured peer whose sync has not started (the node is recovering its own logs)."""
    return PeerStatus(
        endpoint=endpoint,
        pinned=pinned,
        up=False,
        passes=0,
        failed_passes=0,
        pass_seconds=0.0,
        last_pass_seconds=0.0,
        consecutive_failures=0,
        last_error="",
        last_success_at_ms=0,
        lag_messages=0,
        unsynced_messages=None,
        failures={},
        refused=0,
        pulled_messages=0,
        pulled_bytes=0,
        failing_logs=0,
        log_error="",
    )
