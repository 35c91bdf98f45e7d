"""The just-committed messages of a watched log, handed to its live subscribers.

A live subscriber woken by a commit would read the new messages back from the store: a hop to
the reader executor and back, and a query, per wake-up. The commit pipeline has those messages
in hand (the store's outcomes of the durable transaction), so the notifier keeps the last few
of each watched log here, and a subscriber that waits at the log's head takes them from memory.

The store stays the source of truth: only messages already durable are kept, always a run of
consecutive heads ending at the newest, and a subscriber that fell behind what is kept reads the
store as before. Anything that could make the kept copies differ from the store forgets them:
a notification without its message (another process's commit, a replicated change), a head
that does not follow on, a delete range or a retention trim anywhere.

Bounded: at most RECENT_PER_LOG messages per log, none above RECENT_MAX_MESSAGE_BYTES, and
RECENT_BUDGET_BYTES (their `read_size`) across every log; a message that does not fit is not
kept, and its log's subscribers read the store.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Final

from msgbus_core.model import Message
from msgbus_core.store import read_size

RECENT_PER_LOG: Final = 64
"""Messages kept per watched log: enough for a subscriber that wakes a few commits late."""
RECENT_MAX_MESSAGE_BYTES: Final = 256 * 1024
"""A larger message is not kept (its read from the store costs little next to its size)."""
RECENT_BUDGET_BYTES: Final = 16 * 1024 * 1024
"""What all kept messages of the daemon may add up to."""


class RecentBudget:
    """The bytes kept across every log, against RECENT_BUDGET_BYTES."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int = RECENT_BUDGET_BYTES) -> None:
        self.held = 0
        self.limit = limit


class RecentMessages:
    """The newest consecutive messages of one log (event loop thread only)."""

    __slots__ = ("_budget", "_messages", "_sizes")

    def __init__(self, budget: RecentBudget) -> None:
        self._budget = budget
        self._messages: deque[Message] = deque()
        self._sizes: deque[int] = deque()

    def note(self, head_id: int, message: Message | None) -> None:
        """The log reached `head_id`; `message` is the message committed at it, when known."""
        messages = self._messages
        follows = message is not None and message.head_id == head_id
        if follows and messages and messages[-1].head_id + 1 != head_id:
            follows = False
        if not follows:
            self.clear()
            if message is None or message.head_id != head_id:
                return
        assert message is not None
        size = read_size(message)
        budget = self._budget
        if size > RECENT_MAX_MESSAGE_BYTES:
            self.clear()
            return
        if len(messages) >= RECENT_PER_LOG:
            self._drop_oldest()
        if budget.held + size > budget.limit:
            self.clear()
            if budget.held + size > budget.limit:
                return
        messages.append(message)
        self._sizes.append(size)
        budget.held += size

    def since(self, head_id: int, limit: int) -> list[Message] | None:
        """Up to `limit` kept messages from `head_id` on; None unless `head_id` is kept."""
        messages = self._messages
        if not messages:
            return None
        first = messages[0].head_id
        if not first <= head_id <= messages[-1].head_id:
            return None
        start = head_id - first
        return list(islice(messages, start, start + limit))

    def clear(self) -> None:
        """Keep nothing (the kept copies may differ from the store, or the log is unwatched)."""
        self._budget.held -= sum(self._sizes)
        self._messages.clear()
        self._sizes.clear()

    def _drop_oldest(self) -> None:
        self._messages.popleft()
        self._budget.held -= self._sizes.popleft()
