"""What both kinds of subscription share: the resume point and the duplicate/gap guard.

Invariant: a subscription delivers head_ids ``from_head_id, from_head_id + 1, ...`` in order,
each exactly once. The daemon promises the same, but the guard is repeated here because a
reconnect is where duplicates and gaps come from: after a broken stream the subscription
reopens at the last delivered head_id + 1, drops anything below it (a duplicate) and treats
anything above it as a gap, which it repairs by reopening the stream at the missing head_id.

Reconnecting is driven by tenacity. The common path (an open, healthy stream) does not enter
tenacity at all; only a failure does, and each delivered message starts a fresh retry state,
so ``max_attempts`` counts consecutive failures. The subscriptions themselves are in
``_async_subscription.py`` and, generated from it, ``_sync_subscription.py``.

Retention is the one exception to "never skips one": a daemon that trimmed a log's prefix
answers a subscription expecting head 10 with head 800 and ``first_head_id=800`` on that
response, which tells a trim (heads 10..799 are gone for good) from a gap (a jump without the
field, repaired by reopening). A trim is a :class:`Trim` event that the subscription's
``on_trim`` policy handles; the cursor then goes on from ``first_head_id``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

import tenacity

from ._convert import node_key, parse_node_id
from ._errors import ConfigurationError, MsgbusError, ProtocolError, TrimmedError, UnavailableError
from ._generated.msgbus.v1 import MessageEnvelope, NodeId

__all__ = [
    "MAX_RESUME_ENTRIES",
    "Cursor",
    "LogCursors",
    "LogKey",
    "StreamClosed",
    "StreamEnded",
    "Trim",
    "TrimPolicy",
    "resolve_on_trim",
    "retry_while_open",
]

_log = logging.getLogger("msgbus_sdk")

MAX_RESUME_ENTRIES = 100_000
"""The most logs a pattern Subscribe request may name in ``resume_after`` (the contract's)."""


@dataclass(frozen=True, slots=True)
class Trim:
    """Heads a subscription never delivered because retention trimmed them first.

    Heads ``expected_head_id .. first_head_id - 1`` were removed from the log before the
    subscription reached them; delivery goes on at ``first_head_id``, where the log now starts.

    Attributes:
        topic: the subscription's topic.
        origin: the origin of the log, as the daemon's envelopes name it.
        expected_head_id: the head the subscription wanted next (the first one trimmed).
        first_head_id: where the log now starts (the next head delivered).
    """

    topic: str
    origin: NodeId | None
    expected_head_id: int
    first_head_id: int

    @property
    def skipped(self) -> int:
        """How many heads were trimmed before delivery."""
        return self.first_head_id - self.expected_head_id

    def __str__(self) -> str:
        return (
            f"subscription topic={self.topic} origin={node_key(self.origin) or '-'}: heads "
            f"{self.expected_head_id}..{self.first_head_id - 1} were trimmed by retention "
            "before delivery"
        )


TrimPolicy: TypeAlias = Literal["continue", "raise"] | Callable[[Trim], None]
"""What a subscription does on a :class:`Trim`: ``"continue"`` (log a warning on the
``msgbus_sdk`` logger and go on), ``"raise"`` (:class:`TrimmedError`), or a callable that
receives the :class:`Trim` and returns to go on."""


def _continue(trim: Trim) -> None:
    _log.warning("%s; continuing at %d", trim, trim.first_head_id)


def _raise(trim: Trim) -> None:
    raise TrimmedError(
        f"{trim}; the log now starts at {trim.first_head_id}",
        topic=trim.topic,
        origin=trim.origin,
        expected_head_id=trim.expected_head_id,
        first_head_id=trim.first_head_id,
    )


def resolve_on_trim(on_trim: TrimPolicy) -> Callable[[Trim], None]:
    """The handler for a subscription's ``on_trim`` policy.

    Raises:
        ConfigurationError: ``on_trim`` is neither ``"continue"``, ``"raise"`` nor a callable.
    """
    if on_trim == "continue":
        return _continue
    if on_trim == "raise":
        return _raise
    if callable(on_trim):
        return on_trim
    raise ConfigurationError(
        f"on_trim must be 'continue', 'raise' or a callable taking a Trim, got {on_trim!r}"
    )


class StreamEnded(UnavailableError):
    """The daemon ended the stream without an error (it never does while serving)."""

    def __init__(self) -> None:
        super().__init__("subscription stream ended")


class _GapError(ProtocolError):
    """A head_id arrived above the next expected one: reopen at the missing head_id."""

    retryable = True


class StreamClosed(Exception):
    """The subscription or its client was closed while (re)opening or reading the stream.

    Raised instead of StopIteration/StopAsyncIteration inside tenacity's loop, which would
    otherwise read them as the end of its own iteration.
    """


class Cursor:
    """The resume point, the duplicate/gap guard, and where trims are told from gaps."""

    __slots__ = ("_on_trim", "next_head_id", "pending", "trims")

    def __init__(
        self,
        from_head_id: int,
        on_trim: Callable[[Trim], None] = _continue,
        pending: deque[MessageEnvelope] | None = None,
    ) -> None:
        """``pending`` is the delivery queue, shared by the logs of a :class:`LogCursors`."""
        # The daemon treats 0 as 1; so does the cursor, so the guard matches what arrives.
        self.next_head_id = max(from_head_id, 1)
        self.pending: deque[MessageEnvelope] = deque() if pending is None else pending
        self.trims = 0
        self._on_trim = on_trim

    def take(self, envelopes: list[MessageEnvelope], first_head_id: int = 0) -> None:
        """Queue the envelopes of one response for delivery, dropping duplicates.

        ``first_head_id`` is the response's own (0: the response follows no trimmed prefix).
        Above the expected head it is a trim: the cursor moves to it, then the ``on_trim``
        handler runs (and may raise, leaving the envelopes undelivered), then delivery goes on.

        Raises:
            ProtocolError: ``first_head_id`` is not the response's first head, or lies below
                the head expected next; or a head jumps without it (a gap, retried by reopening).
        """
        if first_head_id:
            self._trim(envelopes, first_head_id)
        for env in envelopes:
            head = env.head_id
            if head < self.next_head_id:
                continue  # already delivered before a reconnect
            if head > self.next_head_id:
                raise _GapError(
                    f"subscription expected head_id {self.next_head_id}, daemon sent {head}"
                )
            self.pending.append(env)
            self.next_head_id = head + 1

    def _trim(self, envelopes: list[MessageEnvelope], first_head_id: int) -> None:
        first = envelopes[0] if envelopes else None
        if first is None or first.head_id != first_head_id:
            sent = "no message" if first is None else f"head_id {first.head_id} first"
            raise ProtocolError(
                f"server sent first_head_id {first_head_id} on a response with {sent}"
            )
        if first_head_id < self.next_head_id:
            # The daemon sets the field only above the head it was asked for.
            raise ProtocolError(
                f"server sent first_head_id {first_head_id} below the expected head_id "
                f"{self.next_head_id}"
            )
        if first_head_id == self.next_head_id:
            return  # the log starts exactly where the subscription is: nothing was skipped
        trim = Trim(first.topic, first.origin, self.next_head_id, first_head_id)
        self.next_head_id = first_head_id
        self.trims += 1
        self._on_trim(trim)

    def deliver(self) -> MessageEnvelope | None:
        """The next envelope to deliver, or None when the queue is empty."""
        return self.pending.popleft() if self.pending else None


LogKey: TypeAlias = tuple[str, str]
"""A log as ``(topic, origin key)``, the origin key being ``"tenant_id/bl_name/device_id"``."""


class LogCursors:
    """A pattern subscription's resume points: one :class:`Cursor` per log, one queue.

    Every response of a pattern Subscribe carries messages of one log, so each goes through
    that log's cursor (the same duplicate, gap and trim rules as a single-log subscription);
    a reopened stream names every log's last delivered head in ``resume_after``.
    """

    __slots__ = ("_cursors", "_from_head_id", "_on_trim", "pending")

    def __init__(
        self,
        from_head_id: int,
        on_trim: Callable[[Trim], None] = _continue,
        resume_after: Mapping[LogKey, int] | None = None,
    ) -> None:
        """Logs named in ``resume_after`` resume after its head; the others at ``from_head_id``."""
        self._from_head_id = from_head_id
        self._on_trim = on_trim
        self.pending: deque[MessageEnvelope] = deque()
        self._cursors: dict[LogKey, Cursor] = {}
        for (topic, origin), head_id in (resume_after or {}).items():
            parse_node_id(origin)  # a clear error now, not at the first reconnect
            self._cursors[(topic, origin)] = Cursor(head_id + 1, on_trim, self.pending)

    @property
    def trims(self) -> int:
        """How many trims the logs have seen, together."""
        return sum(cursor.trims for cursor in self._cursors.values())

    @property
    def positions(self) -> dict[LogKey, int]:
        """The last head_id delivered (or resumed after) per log; 0 means none yet."""
        return {key: cursor.next_head_id - 1 for key, cursor in self._cursors.items()}

    def resume_after(self) -> dict[LogKey, int]:
        """What a (re)opened stream sends in ``resume_after``: each log's last head delivered.

        Raises:
            ConfigurationError: more logs than a request may name (the daemon's limit).
        """
        if len(self._cursors) > MAX_RESUME_ENTRIES:
            raise ConfigurationError(
                f"the subscription follows {len(self._cursors)} logs; a pattern subscription "
                f"resumes at most {MAX_RESUME_ENTRIES}: narrow topic_pattern or origin_pattern"
            )
        # A log whose cursor is still at from_head_id needs no entry: it starts there anyway.
        return {key: head for key, head in self.positions.items() if head >= self._from_head_id}

    def take(self, envelopes: list[MessageEnvelope], first_head_id: int = 0) -> None:
        """Queue one response's envelopes through its log's cursor (see :meth:`Cursor.take`)."""
        if not envelopes:
            raise ProtocolError("server sent a pattern subscribe response without messages")
        first = envelopes[0]
        key = (first.topic, node_key(first.origin))
        cursor = self._cursors.get(key)
        if cursor is None:
            cursor = self._cursors[key] = Cursor(self._from_head_id, self._on_trim, self.pending)
        for env in envelopes:
            if env.topic != first.topic or node_key(env.origin) != key[1]:
                raise ProtocolError("server sent messages of several logs in one response")
        cursor.take(envelopes, first_head_id)

    def deliver(self) -> MessageEnvelope | None:
        """The next envelope to deliver, or None when the queue is empty."""
        return self.pending.popleft() if self.pending else None


def retry_while_open(is_closed: Callable[[], bool]) -> tenacity.retry_base:
    """Retry retryable errors while the subscription is open."""
    return tenacity.retry_if_exception(
        lambda exc: isinstance(exc, MsgbusError) and exc.retryable and not is_closed()
    )
