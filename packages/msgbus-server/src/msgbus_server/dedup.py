"""The dedup worker: forgets idempotency keys past the dedup window or beyond the key cap.

Keys are written with their messages (`msgbus_core.publish_keys`); this worker bounds the table.
Every pass commits `PruneKeysOp`s through the commit pipeline, each removing at most
`PRUNE_BATCH` keys, oldest first: those beyond `--dedup-max-keys`, then those older than
`--dedup-window`. While a pass removes full batches it goes on at once (other writes share the
pipeline between its transactions), so a backlog of any size drains in short transactions, and
the table exceeds the cap by at most what is published in one interval.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from msgbus_core.errors import MsgbusError
from msgbus_core.publish_keys import PRUNE_BATCH, PrunedKeys, PruneKeysOp
from msgbus_server.clock import now_ms
from msgbus_server.pipeline import CommitPipeline

log = logging.getLogger("msgbus_server.dedup")

MAX_INTERVAL_S: Final = 5.0
"""The longest pause between two passes."""
MIN_INTERVAL_S: Final = 0.05
"""The shortest pause, for a window of a fraction of a second (tests)."""


def prune_interval_s(window_ms: int) -> float:
    """How long the worker pauses between passes: a quarter of the window, within bounds."""
    return min(max(window_ms / 4000, MIN_INTERVAL_S), MAX_INTERVAL_S)


class DedupWorker:
    """Prunes idempotency keys in the background until stopped."""

    def __init__(
        self,
        *,
        pipeline: CommitPipeline,
        window_ms: int,
        max_keys: int,
        batch: int = PRUNE_BATCH,
    ) -> None:
        """Prune keys older than `window_ms` and the oldest beyond `max_keys`, `batch` a time."""
        self._pipeline = pipeline
        self._window_ms = window_ms
        self._max_keys = max_keys
        self._batch = batch
        self._interval_s = prune_interval_s(window_ms)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the passes in a background task; returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dedup-prune")

    async def stop(self) -> None:
        """Stop after the prune in flight, if any (its commit is not interrupted)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run_pass(self) -> int:
        """Prune until a batch comes back short; how many keys went."""
        removed = 0
        while True:
            op = PruneKeysOp(now_ms() - self._window_ms, self._max_keys, self._batch)
            result = await self._pipeline.submit(op)
            assert isinstance(result, PrunedKeys)
            removed += result.removed
            if result.removed < self._batch:
                return removed

    async def _run(self) -> None:
        while True:
            try:
                removed = await self.run_pass()
                if removed:
                    log.debug("dedup: forgot %d idempotency keys", removed)
            except MsgbusError as error:
                # The store or the pipeline failed (a full disk, shutdown): try again later.
                log.warning("dedup prune failed: %s", error)
            except Exception:
                log.exception("dedup prune failed unexpectedly")
            await asyncio.sleep(self._interval_s)


__all__ = ["DedupWorker", "prune_interval_s"]
