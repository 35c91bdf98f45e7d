"""What a daemon does when other msgbusd processes share its store (PostgreSQL).

Two things a daemon cannot see by itself once it is one of several processes on one database:

- **The others' commits.** `CommitFeed` wakes on the store's commit announcements (LISTEN/
  NOTIFY) and reads the logs that changed (`SharedStore.changed_logs`) into the daemon's
  `LogNotifier`, exactly as the commit pipeline reports its own commits. Live subscribers then
  see another process's publishes within milliseconds, and ListHeads' change index lists them.
  The store stays the source of truth: the feed also asks it every `POLL_S` without an
  announcement, so a lost one costs latency, never a message.
- **Work that must run once.** Sync with a peer and retention would otherwise run in every
  process. `WorkClaims` asks the store for a claim before each pass; the process holding it
  runs the pass, the others skip it, and when the holder dies the store lets the next process
  that asks take over.

For a store only this process writes, neither exists: `CommitFeed.of` returns None and every
claim is granted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Final

from msgbus_core.errors import MsgbusError
from msgbus_core.store import MsgbusStore, SharedStore
from msgbus_server.backoff import backoff_delay
from msgbus_server.notify import LogNotifier

log = logging.getLogger("msgbus_server.shared_store")

POLL_S: Final = 0.5
"""How long the feed waits for an announcement before it asks the store anyway."""
PAGE: Final = 1_000
"""Changed logs read per call: the feed's memory is one page."""

RETRY_S: Final = 0.2
"""The first wait after the store failed; it doubles up to `RETRY_CAP_S`."""
RETRY_CAP_S: Final = 5.0


class CommitFeed:
    """Relays every process's commits on the shared store into this daemon's notifier."""

    def __init__(self, store: SharedStore, notifier: LogNotifier) -> None:
        """Prefer `CommitFeed.of`; call `begin` before reading the store's logs."""
        self._store = store
        self._notifier = notifier
        self._cursor: object | None = None
        self._task: asyncio.Task[None] | None = None
        self.relayed = 0
        """Log changes relayed since the start (some are this process's own, seen again)."""

    @classmethod
    def of(cls, store: MsgbusStore, notifier: LogNotifier) -> CommitFeed | None:
        """A feed for a shared store; None for a store no other process writes."""
        return cls(store, notifier) if isinstance(store, SharedStore) else None

    def begin(self) -> None:
        """Mark "now" in the store's change order (blocking: call it from a thread).

        Called before the daemon lists the store's logs at startup, so that everything
        committed after that listing is relayed.
        """
        _, self._cursor = self._store.changed_logs(None, PAGE)

    async def start(self) -> None:
        """Start relaying in a background task; returns at once."""
        if self._cursor is None:
            await asyncio.to_thread(self.begin)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="commit-feed")

    async def stop(self) -> None:
        """Stop relaying."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failures = 0
        rng = random.Random()
        while True:
            try:
                await asyncio.to_thread(self._store.wait_for_commits, POLL_S)
                await self.relay()
            except MsgbusError as error:
                failures += 1
                if failures == 1:
                    log.warning("cannot follow other processes' commits: %s (retrying)", error)
                await asyncio.sleep(backoff_delay(failures, RETRY_S, RETRY_CAP_S, rng))
                continue
            if failures:
                log.info("following other processes' commits again")
                failures = 0

    async def relay(self) -> int:
        """Read every change since the last call into the notifier; how many logs it read."""
        total = 0
        while True:
            heads, self._cursor = await asyncio.to_thread(
                self._store.changed_logs, self._cursor, PAGE
            )
            for head in heads:
                self._notifier.notify(head.topic, head.origin, head.head_id)
            total += len(heads)
            if len(heads) < PAGE:
                self.relayed += total
                return total


class WorkClaims:
    """Which once-per-store work this process runs: sync with a peer, retention."""

    def __init__(self, store: MsgbusStore) -> None:
        """Claims on `store`; every claim is granted when no other process writes it."""
        self._store = store if isinstance(store, SharedStore) else None
        self._held: dict[str, bool] = {}

    @property
    def shared(self) -> bool:
        """True when other processes may hold claims (the store is shared)."""
        return self._store is not None

    async def hold(self, name: str) -> bool:
        """True when this process holds (or just took) the claim `name` and should run it.

        A store that fails counts as "not held": another process may run the work meanwhile,
        and this one asks again at its next pass.
        """
        store = self._store
        if store is None:
            return True
        try:
            held = await asyncio.to_thread(store.try_claim, name)
        except MsgbusError as error:
            log.debug("claim %s: %s", name, error)
            held = False
        before = self._held.get(name)
        if held != before:
            self._held[name] = held
            if held:
                log.info("%s: this process runs it now", name)
            elif before:
                log.warning("%s: lost to another process (or the database)", name)
            else:
                log.info("%s: another process runs it", name)
        return held

    async def release(self, name: str) -> None:
        """Give `name` up (at shutdown), so another process takes it over at once."""
        store = self._store
        if store is None or not self._held.pop(name, False):
            return
        with contextlib.suppress(MsgbusError):
            await asyncio.to_thread(store.release_claim, name)


__all__ = ["CommitFeed", "WorkClaims"]
