"""Per-log wake-up signals for live subscribers.

A notification says "log (topic, origin) now reaches head N". A woken subscriber reads the new
messages from the store, so order and completeness come from the log itself and a slow
subscriber costs no memory. The commit pipeline also hands over the committed message, and the
last few of each watched log are kept (`recent`) for subscribers waiting at its head, which
then skip the store read; the store stays the source of truth.

Everything here runs on the event loop thread (the commit pipeline calls `notify` through
`loop.call_soon_threadsafe`), so no locks are needed. State exists only for logs that someone
watches; the last watcher to leave removes it.

The race that matters: a subscriber reads the store, finds nothing new, and then waits. A commit
that lands after its read but whose notification runs before it starts waiting must still wake
it. `watch()` solves this: register first, read second, wait third. Every notification delivered
after registration is remembered in the watch's log state, so `wait_beyond` returns at once when
the head already moved.
"""

from __future__ import annotations

import asyncio

from msgbus_core.limits import DELETE_TOPIC
from msgbus_core.model import Message, NodeId
from msgbus_server.head_changes import HeadChanges
from msgbus_server.recent import RecentBudget, RecentMessages

LogId = tuple[str, NodeId]


class _LogState:
    """What is known about one watched log since its first watcher registered."""

    __slots__ = ("event", "head", "recent", "watchers")

    def __init__(self, budget: RecentBudget) -> None:
        self.head = 0
        self.watchers = 0
        self.recent = RecentMessages(budget)
        """The newest messages committed since the first watcher came, as committed."""
        # Replaced on every notify that finds waiters; created only when someone waits, so a
        # busy log with no idle subscriber allocates nothing per commit.
        self.event: asyncio.Event | None = None


class LogWatch:
    """A registration for one log; use as a context manager around the subscriber's loop."""

    __slots__ = ("_log_id", "_notifier", "_state")

    def __init__(self, notifier: LogNotifier, log_id: LogId, state: _LogState) -> None:
        self._notifier = notifier
        self._log_id = log_id
        self._state: _LogState | None = state

    async def wait_beyond(self, head_id: int) -> bool:
        """Wait until a commit advanced the log beyond `head_id`.

        Returns True when it did (possibly before this call, but after `watch()`), False when
        the notifier is closed (daemon shutdown).
        """
        state = self._state
        if state is None:
            raise RuntimeError("LogWatch used after it was closed")
        notifier = self._notifier
        while not notifier.closed:
            if state.head > head_id:
                return True
            event = state.event
            if event is None:
                event = state.event = asyncio.Event()
            await event.wait()
        return False

    def recent_since(self, head_id: int, limit: int) -> list[Message] | None:
        """Up to `limit` just-committed messages from `head_id` on, if they are still kept.

        None means: read the store (the head is older than what is kept, or nothing is).
        """
        state = self._state
        return None if state is None else state.recent.since(head_id, limit)

    def close(self) -> None:
        """Unregister; the log's state goes away with its last watcher."""
        if self._state is not None:
            self._notifier._release(self._log_id, self._state)
            self._state = None

    def __enter__(self) -> LogWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LogNotifier:
    """Wake-up signals per log, for any number of subscribers on any number of logs.

    Every advance is also noted in `changes` (ListHeads' "changed since" index), since the
    notifier is where every commit reports the logs it moved, in commit order.
    """

    def __init__(self, changes: HeadChanges | None = None) -> None:
        self.changes = changes
        self._logs: dict[LogId, _LogState] = {}
        self._recent_budget = RecentBudget()
        self._closed = False
        self._closed_event = asyncio.Event()
        # Set and replaced by the next notify of any log; created only while a pattern
        # subscription waits (`wait_any_beyond`), so commits allocate nothing otherwise.
        self._any_change: asyncio.Event | None = None

    @property
    def closed(self) -> bool:
        """True once `close()` ran: every wait returns False from then on."""
        return self._closed

    def notify(
        self, topic: str, origin: NodeId, head_id: int, message: Message | None = None
    ) -> None:
        """Record that the log reaches `head_id` and wake its waiters. O(1) when unwatched.

        `message` is the message committed at `head_id`, when the caller has it in hand.
        """
        if self.changes is not None:
            self.changes.note(topic, origin)
        if topic == DELETE_TOPIC:
            # A delete range erased messages of some log: kept copies may be stale.
            self.forget_recent()
        any_change = self._any_change
        if any_change is not None:
            self._any_change = None
            any_change.set()
        state = self._logs.get((topic, origin))
        if state is None:
            return
        state.recent.note(head_id, message)
        if head_id > state.head:
            state.head = head_id
        event = state.event
        if event is not None:
            state.event = None
            event.set()

    def watch(self, topic: str, origin: NodeId) -> LogWatch:
        """Register interest in a log. Register BEFORE reading the store (see module doc)."""
        log_id = (topic, origin)
        state = self._logs.get(log_id)
        if state is None:
            state = self._logs[log_id] = _LogState(self._recent_budget)
        state.watchers += 1
        return LogWatch(self, log_id, state)

    async def wait_any_beyond(self, seq: int) -> bool:
        """Wait until some log changed after change `seq` of `changes` (pattern subscribe).

        Returns True when one did (possibly before this call), False once the notifier is
        closed. What changed is read from `changes.since(seq)`: one event for all waiters, so
        a waiting pattern subscription costs no memory per log.
        """
        changes = self.changes
        if changes is None:
            raise RuntimeError("wait_any_beyond needs the change index (changes)")
        while not self._closed:
            if changes.seq > seq:
                return True
            event = self._any_change
            if event is None:
                event = self._any_change = asyncio.Event()
            await event.wait()
        return False

    def forget_recent(self) -> None:
        """Drop every kept message (a delete or a trim changed what the store holds)."""
        for state in self._logs.values():
            state.recent.clear()

    async def wait_closed(self) -> None:
        """Return once the notifier is closed."""
        await self._closed_event.wait()

    def close(self) -> None:
        """Shut down: wake every waiter; all waits return False from now on."""
        self._closed = True
        self._closed_event.set()
        if self._any_change is not None:
            self._any_change.set()
        for state in self._logs.values():
            event = state.event
            if event is not None:
                state.event = None
                event.set()

    def _release(self, log_id: LogId, state: _LogState) -> None:
        state.watchers -= 1
        if state.watchers <= 0 and self._logs.get(log_id) is state:
            state.recent.clear()
            del self._logs[log_id]
