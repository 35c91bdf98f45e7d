"""Peer sync: pull every log a peer has further than we do, and keep pulling.

One asyncio task per peer, each with one long-lived gRPC channel, so a hung peer never blocks
the others. `PeerSync` (here) starts and stops one `sync_peer.PeerWorker` per peer and hands it
all it works with in a `PeerContext`; `sync_fetch` fetches one log's batches and classifies every
failure; `sync_state` keeps each peer's sync state; `backoff` says how long a failure waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from msgbus_core import (
    MsgbusError,
    MsgbusStore,
    NodeId,
    PeerSyncState,
    PruneResult,
    PruneSyncStatesOp,
)
from msgbus_server.disk_budget import DiskBudget
from msgbus_server.notify import LogNotifier
from msgbus_server.peer_authz import PushRules
from msgbus_server.peers import PeerSpec, PeerTlsConfig
from msgbus_server.pipeline import CommitPipeline
from msgbus_server.retention import PeerHoldings
from msgbus_server.shared_store import WorkClaims
from msgbus_server.sync_peer import PeerContext, PeerWorker, SyncSettings
from msgbus_server.sync_state import LogId, push_record_peer
from msgbus_server.upstream_push import UpstreamPush

__all__ = ["PeerSync", "SyncSettings", "forget_unconfigured_peers"]

log = logging.getLogger("msgbus_server.sync")


async def forget_unconfigured_peers(
    pipeline: CommitPipeline,
    peers: Sequence[PeerSpec],
    upstreams: Sequence[PeerSpec] = (),
    pushed: Sequence[str] = (),
) -> None:
    """Delete, in one write, the sync states of every peer that is no longer configured.

    Without it, the rows of a peer removed from --peer would stay (and be listed) forever.
    An upstream keeps its pull and push records; `pushed` are the stored peers of the
    records of devices that pushed to this daemon (`sync_state.pushed_record_peer`): they
    configure themselves, so their records are kept.
    Sync state is advisory, so a failed write is logged and startup goes on.
    """
    keep = frozenset(
        [spec.endpoint for spec in (*peers, *upstreams)]
        + [push_record_peer(spec.endpoint) for spec in upstreams]
        + list(pushed)
    )
    try:
        result = await pipeline.submit(PruneSyncStatesOp(keep))
    except MsgbusError as error:
        log.warning("cannot prune the sync state of peers no longer configured: %s", error)
        return
    if isinstance(result, PruneResult) and result.pruned:
        log.info(
            "pruned %d sync state rows of peers no longer configured: %s",
            sum(result.pruned.values()),
            ", ".join(f"{peer} ({count})" for peer, count in sorted(result.pruned.items())),
        )


class PeerSync:
    """Replicates from every configured peer until stopped.

    `start()` seeds each peer's sync state book from the store, warns once per unpinned peer,
    and starts one worker task per peer. `stop()` cancels every task, also one in the middle of
    a Fetch or a commit, and closes the channels.
    """

    def __init__(
        self,
        *,
        local_node: NodeId,
        peers: Sequence[PeerSpec],
        store: MsgbusStore,
        pipeline: CommitPipeline,
        settings: SyncSettings,
        tls: PeerTlsConfig | None,
        holdings: PeerHoldings | None = None,
        budget: DiskBudget | None = None,
        work: WorkClaims | None = None,
        push: PushRules | None = None,
        upstreams: Sequence[PeerSpec] = (),
        notifier: LogNotifier | None = None,
    ) -> None:
        """Sync from `peers` and `upstreams` until stopped, and push to `upstreams`.

        `work` decides which process syncs each peer when several share the store; `push` is
        the policy's push rule on what peers supply (None takes every log). Each upstream is
        pulled like a peer, and pushed to over the same channel (`upstream_push`), woken by
        `notifier`'s commits (required with upstreams).
        """
        self._local_node = local_node
        self._work = work
        self._push = push
        self._holdings = holdings
        self._budget = budget
        # One task per endpoint: a peer listed twice is synced once.
        unique: dict[str, PeerSpec] = {}
        for spec in (*peers, *upstreams):
            if spec.endpoint in unique:
                log.warning("peer %s is configured twice; syncing it once", spec.endpoint)
                continue
            unique[spec.endpoint] = spec
        self._peers = list(unique.values())
        self._upstreams = {spec.endpoint: spec for spec in upstreams}
        self._notifier = notifier
        self._pushes: list[UpstreamPush] = []
        self._store = store
        self._pipeline = pipeline
        self._tls = tls
        self.settings = settings
        self._claims: set[LogId] = set()
        self._workers: list[PeerWorker] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def workers(self) -> tuple[PeerWorker, ...]:
        """One worker per configured peer, from `start()` until `stop()`."""
        return tuple(self._workers)

    @property
    def pushes(self) -> tuple[UpstreamPush, ...]:
        """One push per configured upstream, from `start()` until `stop()`."""
        return tuple(self._pushes)

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
            self._workers.append(PeerWorker(self._context(spec, by_peer.get(spec.endpoint, []))))
        log.info(
            "starting peer sync: peers=%s interval_ms=%d batch_limit=%s",
            ",".join(p.endpoint for p in self._peers),
            int(self.settings.interval_s * 1000),
            "adaptive" if self.settings.adaptive else self.settings.batch_limit,
        )
        self._tasks = [
            asyncio.create_task(w.run(), name=f"peer-sync {w.endpoint}") for w in self._workers
        ]
        for worker in self._workers:
            upstream = self._upstreams.get(worker.endpoint)
            if upstream is None:
                continue
            if self._notifier is None:  # pragma: no cover - the daemon always passes one
                raise RuntimeError("pushing to an upstream needs the notifier")
            push = UpstreamPush(
                spec=upstream,
                channel=worker.channel,
                local_node=self._local_node,
                store=self._store,
                pipeline=self._pipeline,
                notifier=self._notifier,
                settings=self.settings,
                seed=by_peer.get(push_record_peer(upstream.endpoint), []),
            )
            self._pushes.append(push)
            self._tasks.append(asyncio.create_task(push.run(), name=f"push {push.endpoint}"))

    def _context(self, spec: PeerSpec, seed: Sequence[PeerSyncState]) -> PeerContext:
        return PeerContext.of(
            spec,
            seed,
            local_node=self._local_node,
            settings=self.settings,
            store=self._store,
            pipeline=self._pipeline,
            claims=self._claims,
            tls=self._tls,
            holdings=self._holdings,
            budget=self._budget,
            work=self._work,
            push=self._push,
        )

    async def stop(self) -> None:
        """Stop every sync task and close the channels. Safe to call more than once."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._pushes = []
        workers, self._workers = self._workers, []
        for worker in workers:
            await worker.close()
