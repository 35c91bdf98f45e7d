"""Recovery: a daemon whose store is new pulls its own logs back from its peers before writing.

A node that lost its database (or starts on a new disk) would otherwise publish heads 1, 2, ...
again with new ids, while its peers still hold the old ones: every later message would conflict
with history the fleet already has. So when the store is new (the database file did not exist
or was empty before this start, and always for a volatile store), peers are configured, and
`--no-recover` is not given, the daemon first asks every configured peer for the logs of its
own origin, the `$msgbus.delete` marker log first, and pulls them through the pull path of sync
(`PeerWorker.recover_local_logs`). Publishes then continue at the recovered head + 1.

Until every configured peer has answered once, `WriteGate` holds writes: Publish, PublishBatch,
DeleteRange and EnqueueFifo wait a moment for it and are then answered UNAVAILABLE with the
reason (clients retry), Ready answers NOT_READY with it, and Health stays SERVING, so that peers
(which may be recovering from this node at the same time) keep reaching it. An unreachable peer
is asked again with the sync backoff. Peer sync starts once recovery is done, or after
`SYNC_GRACE_S` if a peer has not answered by then (sync never takes this node's own logs).

A peer can feed a new node anything as that node's own logs (SECURITY.md): recovery trusts the
configured peers, as sync trusts them with other origins' logs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence

from msgbus_core import MsgbusStore, NodeId, PeerSyncState
from msgbus_server.health import Health, Subsystem
from msgbus_server.peers import PeerSpec, PeerTlsConfig
from msgbus_server.pipeline import CommitPipeline
from msgbus_server.sync_fetch import SyncFailure
from msgbus_server.sync_peer import PeerContext, PeerWorker, RecoveredLogs, SyncSettings
from msgbus_server.sync_state import LogId

__all__ = ["SYNC_GRACE_S", "WRITE_HOLD_S", "OwnLogRecovery", "WriteGate", "waiting_reason"]

log = logging.getLogger("msgbus_server.recovery")

WRITE_HOLD_S = 5.0
"""How long a write that arrives during recovery waits for it before it is refused (at most half
of the call's deadline): peers started together answer within moments of each other, and a
client should not see a refusal for that."""


SYNC_GRACE_S = 10.0
"""How long peer sync waits for recovery before it starts anyway (one RPC deadline of sync: a
peer that hangs costs recovery that much per attempt)."""


class WriteGate:
    """Whether this daemon accepts writes yet; the reason it does not is kept by `Health`.

    Closed while recovery runs (`Subsystem.RECOVERY` makes Ready NOT_READY), open for good once
    it is done. Used from the event loop only.
    """

    def __init__(self, health: Health) -> None:
        self._health = health
        self._opened = asyncio.Event()

    @property
    def is_open(self) -> bool:
        """True once writes are accepted."""
        return self._opened.is_set()

    @property
    def reason(self) -> str:
        """Why writes are refused; "" once the gate is open."""
        return self._health.reasons().get(Subsystem.RECOVERY, "")

    def close(self, reason: str) -> None:
        """Refuse writes for `reason` (also what Ready answers)."""
        self._health.report(Subsystem.RECOVERY, False, reason)

    def open(self) -> None:
        """Accept writes from now on."""
        self._health.report(Subsystem.RECOVERY, True)
        self._opened.set()

    async def wait(self, timeout_s: float) -> bool:
        """Wait at most `timeout_s` for the gate to open; True when it is open."""
        if self.is_open:
            return True
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await self._opened.wait()
        except TimeoutError:
            return False
        return True


def waiting_reason(endpoints: Sequence[str]) -> str:
    """What Ready and refused writes say while recovery waits for `endpoints`."""
    return (
        "recovering this node's own logs from its peers (its store is new): waiting for "
        f"{', '.join(endpoints)}; writes are refused until every peer has answered "
        "(start msgbusd with --no-recover to skip this)"
    )


class OwnLogRecovery:
    """Recovers this node's own logs from every configured peer once, then opens `gate`."""

    def __init__(
        self,
        *,
        local_node: NodeId,
        peers: Sequence[PeerSpec],
        store: MsgbusStore,
        pipeline: CommitPipeline,
        settings: SyncSettings,
        tls: PeerTlsConfig | None,
        gate: WriteGate,
    ) -> None:
        self._local_node = local_node
        # A peer configured twice is asked once, as sync syncs it once.
        self._peers = list({spec.endpoint: spec for spec in reversed(peers)}.values())[::-1]
        self._store = store
        self._pipeline = pipeline
        self._settings = settings
        self._tls = tls
        self._gate = gate
        self._waiting = [spec.endpoint for spec in self._peers]
        self._pulling = asyncio.Lock()
        self._claims: set[LogId] = set()
        gate.close(waiting_reason(self._waiting))

    async def run(self) -> None:
        """Ask every peer until each has answered once, then open the gate for writes."""
        started = time.monotonic()
        log.info(
            "recovery: the store is new; asking %d peer(s) for this node's own logs (%s) "
            "before accepting writes",
            len(self._peers),
            self._local_node.key,
        )
        seed = await asyncio.to_thread(self._store.list_sync_states)
        workers = [
            PeerWorker(self._context(spec, [s for s in seed if s.peer == spec.endpoint]))
            for spec in self._peers
        ]
        try:
            results = await asyncio.gather(*(self._recover_from(worker) for worker in workers))
        finally:
            for worker in workers:
                await worker.close()
        log.info(
            "recovered %d logs (%d messages) of this node from %d peers in %.0f ms",
            sum(result.logs for result in results),
            sum(result.messages for result in results),
            len(results),
            (time.monotonic() - started) * 1000,
        )
        self._gate.open()

    def _context(self, spec: PeerSpec, seed: Sequence[PeerSyncState]) -> PeerContext:
        # Failures are recorded like sync's, so ListPeerSyncStates shows what is awaited.
        return PeerContext.of(
            spec,
            seed,
            local_node=self._local_node,
            settings=self._settings,
            store=self._store,
            pipeline=self._pipeline,
            claims=self._claims,
            tls=self._tls,
        )

    async def _recover_from(self, worker: PeerWorker) -> RecoveredLogs:
        """Ask one peer until it answers; each new failure is logged once."""
        failures = 0
        announced = ""
        rng = random.Random()  # jitter of its own, so peers are not retried in step
        while True:
            try:
                recovered = await worker.recover_local_logs(self._pulling)
            except SyncFailure as failure:
                failures += 1
                if str(failure) != announced:
                    announced = str(failure)
                    log.warning(
                        "recovery: waiting for peer %s (%s); publishes are refused until every "
                        "peer has answered; --no-recover skips this",
                        worker.endpoint,
                        failure,
                    )
                await asyncio.sleep(self._settings.backoff(failures, rng))
                continue
            self._waiting.remove(worker.endpoint)
            if self._waiting:
                self._gate.close(waiting_reason(self._waiting))
            log.info(
                "recovery: peer %s answered: %d logs (%d messages) of this node recovered",
                worker.endpoint,
                recovered.logs,
                recovered.messages,
            )
            return recovered
