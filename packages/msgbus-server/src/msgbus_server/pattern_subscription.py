"""Pattern Subscribe: many logs (a topic glob, every origin or an origin glob) in one stream.

How it finds and follows its logs, without a buffer of messages per log:

1. It notes the change index's sequence number (`HeadChanges.seq`) BEFORE anything else, then
   lists the store's logs page by page (`list_heads`) and keeps those that match. Every log
   committed after that number shows up in `changes.since(seq)`, so a log created while the
   listing runs, or any time later, is found there: new logs are picked up live.
2. Per log it keeps only a position (`_Position`: the next head to send, and the head it knows
   the log reaches). Logs with something to send wait in a round-robin queue; each turn reads
   ONE chunk (the replay page, at most MAX_CHUNK messages and one read budget of bytes) of the
   log at the front, sends it, and puts the log at the back while it has more. So a busy log
   cannot starve the others, and the bytes outstanding are those of one chunk, held in the
   daemon's read gate like every other read.
3. Between chunks it asks the change index which logs moved since the last look (cheap: a
   bisect and the changed entries); when no log has anything to send it waits on the
   notifier's one "any log changed" event (`LogNotifier.wait_any_beyond`).

Each response carries messages of one log, read with the same chunk reader and delivered with
the same packing as single-log Subscribe, so retention trims (`first_head_id`, for that log)
and tombstones behave as there. Memory: one position per matched log, a queue entry per log
with something to send, and one chunk; nothing grows with the messages.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.limits import MAX_STORED_INT
from msgbus_core.model import NodeId, TopicHead
from msgbus_core.validation import validate_topic
from msgbus_proto import pb
from msgbus_server import convert
from msgbus_server.head_changes import HeadChanges
from msgbus_server.log_pattern import LogPattern
from msgbus_server.notify import LogNotifier

__all__ = [
    "MAX_RESUME_ENTRIES",
    "PatternRequest",
    "follow_pattern",
    "list_heads_reader",
    "refuse_outside_pattern",
]

MAX_RESUME_ENTRIES: Final = 100_000
"""The most `resume_after` entries a request may carry (the contract's limit)."""

LISTING_PAGE: Final = 1_000
"""Logs per store listing page while the subscription looks for its logs."""
CHANGES_PAGE: Final = 1_024
"""Changed logs taken from the change index per look."""

LogKey = tuple[str, NodeId]
_UNKNOWN: Final = MAX_STORED_INT + 1
"""A known head meaning "the log moved, read it to see how far"."""


@dataclass(frozen=True, slots=True)
class PatternRequest:
    """A validated pattern Subscribe: which logs, and where each one starts."""

    pattern: LogPattern
    from_head_id: int
    """Where a log not named in `resume_after` starts (at least 1)."""
    resume_after: dict[LogKey, int]
    """The last head already delivered, per log: it resumes at the next one."""

    @classmethod
    def parse(cls, request: pb.SubscribeRequest) -> PatternRequest:
        """Validate a request that has `topic_pattern` set; errors name the field."""
        if request.topic:
            raise InvalidArgumentError(
                "topic must be empty when topic_pattern is set: the pattern names the topics",
                field="topic",
            )
        origin = request.origin
        if request.HasField("origin") and (origin.tenant_id or origin.bl_name or origin.device_id):
            raise InvalidArgumentError(
                "origin must be empty when topic_pattern is set: use origin_pattern",
                field="origin",
            )
        pattern = LogPattern.parse(request.topic_pattern, request.origin_pattern)
        count = len(request.resume_after)
        if count > MAX_RESUME_ENTRIES:
            raise InvalidArgumentError(
                f"resume_after has {count} entries; the limit is {MAX_RESUME_ENTRIES}",
                field="resume_after",
            )
        resume: dict[LogKey, int] = {}
        for index, entry in enumerate(request.resume_after):
            field = f"resume_after[{index}]"
            topic = validate_topic(entry.topic, f"{field}.topic")
            node = convert.required_node(entry.HasField("origin"), entry.origin, f"{field}.origin")
            resume[(topic, node)] = min(entry.head_id, MAX_STORED_INT)
        return cls(pattern, max(request.from_head_id, 1), resume)

    def start(self, log: LogKey) -> int:
        """The first head to send of `log`."""
        after = self.resume_after.get(log)
        return self.from_head_id if after is None else after + 1


def refuse_outside_pattern(request: pb.SubscribeRequest) -> None:
    """Refuse pattern-only fields on a single-log Subscribe (they would be ignored silently)."""
    if request.origin_pattern:
        raise InvalidArgumentError(
            "origin_pattern is only valid with topic_pattern", field="origin_pattern"
        )
    if request.resume_after:
        raise InvalidArgumentError(
            "resume_after is only valid with topic_pattern (use from_head_id)",
            field="resume_after",
        )


@dataclass(slots=True)
class _Position:
    """Where one matched log stands: all the subscription keeps per log."""

    next_head: int
    known_head: int
    """The highest head the log is known to reach (`_UNKNOWN` after a change notice)."""
    queued: bool = False

    @property
    def pending(self) -> bool:
        return self.next_head <= min(self.known_head, MAX_STORED_INT)


ReadChunk = Callable[[str, NodeId, int, int], Coroutine[Any, Any, Any]]
"""`MsgbusService._read_chunk`: (topic, origin, from_head_id, limit) -> a chunk."""
Deliver = Callable[[Any], AsyncIterator[pb.SubscribeResponse]]
"""Yields one chunk's responses (the service's `_deliver` with its packing and tally)."""
ListHeads = Callable[[tuple[str, str] | None, int], Coroutine[Any, Any, list[TopicHead]]]
"""A store listing page read off the event loop: (after, limit) -> heads."""


class _Follower:
    """The positions and the round-robin queue of one pattern subscription."""

    def __init__(self, request: PatternRequest, changes: HeadChanges) -> None:
        self._request = request
        self._changes = changes
        self.seen = changes.seq
        """Every change up to this sequence number is reflected in the positions."""
        self._positions: dict[LogKey, _Position] = {}
        self._ready: deque[LogKey] = deque()

    def offer(self, log: LogKey, known_head: int) -> None:
        """A log that may have something to send: add it if new and it matches; queue it."""
        position = self._positions.get(log)
        if position is None:
            if not self._request.pattern.matches(*log):
                return
            position = self._positions[log] = _Position(self._request.start(log), known_head)
        else:
            position.known_head = max(position.known_head, known_head)
        if position.pending and not position.queued:
            position.queued = True
            self._ready.append(log)

    def take_changes(self) -> None:
        """Offer every log changed since `seen` (new logs included)."""
        changes = self._changes
        while changes.seq > self.seen:
            page = changes.since(self.seen, CHANGES_PAGE)
            if not page:
                self.seen = changes.seq
                break
            for _, log in page:
                self.offer(log, _UNKNOWN)
            self.seen = page[-1][0]
            if len(page) < CHANGES_PAGE:
                # The rest of the journal is stale entries of logs already offered.
                self.seen = max(self.seen, changes.seq)
                break

    def next_log(self) -> tuple[LogKey, _Position] | None:
        """The log whose turn it is, taken off the queue; None when none has anything."""
        if not self._ready:
            return None
        log = self._ready.popleft()
        position = self._positions[log]
        position.queued = False
        return log, position

    def requeue(self, log: LogKey, position: _Position, read_anything: bool) -> None:
        """After a log's turn: back of the queue while it has more, else known caught up."""
        if not read_anything:
            position.known_head = position.next_head - 1
        if position.pending and not position.queued:
            position.queued = True
            self._ready.append(log)


async def follow_pattern(
    request: PatternRequest,
    *,
    notifier: LogNotifier,
    list_heads: ListHeads,
    read_chunk: ReadChunk,
    deliver: Deliver,
    page: int,
    on_wait: Callable[[bool], None],
) -> AsyncIterator[pb.SubscribeResponse]:
    """The responses of a pattern subscription until the notifier closes (daemon shutdown).

    `on_wait(True)` is called when it has sent everything and waits, `on_wait(False)` when it
    goes on (the stream tally's waiting flag).
    """
    changes = notifier.changes
    if changes is None:
        raise InvalidArgumentError(
            "topic_pattern is not supported before the daemon has started", field="topic_pattern"
        )
    follower = _Follower(request, changes)
    # Before the listing: a log committed while it runs is in changes.since(follower.seen).
    after: tuple[str, str] | None = request.pattern.listing_start()
    while True:
        heads = await list_heads(after, LISTING_PAGE)
        for head in heads:
            if request.pattern.past_listing(head.topic):
                heads = []
                break
            follower.offer((head.topic, head.origin), head.head_id)
        if len(heads) < LISTING_PAGE:
            break
        last = heads[-1]
        after = (last.topic, last.origin.key)
    while not notifier.closed:
        follower.take_changes()
        turn = follower.next_log()
        if turn is None:
            on_wait(True)
            if not await notifier.wait_any_beyond(follower.seen):
                return
            on_wait(False)
            continue
        (topic, origin), position = turn
        chunk = await read_chunk(topic, origin, position.next_head, page)
        found = bool(chunk.messages)
        async for response in deliver(chunk):
            yield response
        position.next_head = chunk.next_head
        follower.requeue((topic, origin), position, found)


def list_heads_reader(
    read: Callable[[Callable[[], list[TopicHead]]], Coroutine[Any, Any, list[TopicHead]]],
    list_heads: Callable[..., list[TopicHead]],
) -> ListHeads:
    """A `ListHeads` for `follow_pattern` from the service's executor and the store's listing."""

    async def page(after: tuple[str, str] | None, limit: int) -> list[TopicHead]:
        return await read(functools.partial(list_heads, after=after, limit=limit))

    return page
