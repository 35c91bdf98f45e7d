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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import tenacity

from ._errors import MsgbusError, ProtocolError, UnavailableError
from ._generated.msgbus.v1 import MessageEnvelope

__all__ = ["Cursor", "StreamClosed", "StreamEnded", "retry_while_open"]


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
    """The resume point and the duplicate/gap guard."""

    __slots__ = ("next_head_id", "pending")

    def __init__(self, from_head_id: int) -> None:
        # The daemon treats 0 as 1; so does the cursor, so the guard matches what arrives.
        self.next_head_id = max(from_head_id, 1)
        self.pending: deque[MessageEnvelope] = deque()

    def take(self, envelopes: list[MessageEnvelope]) -> None:
        """Queue the envelopes of one response for delivery, dropping duplicates."""
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

    def deliver(self) -> MessageEnvelope | None:
        """The next envelope to deliver, or None when the queue is empty."""
        return self.pending.popleft() if self.pending else None


def retry_while_open(is_closed: Callable[[], bool]) -> tenacity.retry_base:
    """Retry retryable errors while the subscription is open."""
    return tenacity.retry_if_exception(
        lambda exc: isinstance(exc, MsgbusError) and exc.retryable and not is_closed()
    )
