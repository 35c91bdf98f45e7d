"""Assembles msgbusd: store, commit pipeline, gRPC server, peer sync, and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from msgbus_core.limits import receive_limit_bytes
from msgbus_core.store import MsgbusStore
from msgbus_proto import SERVICE_NAME
from msgbus_server.authz import Authorizer
from msgbus_server.config import ConfigError, DaemonConfig
from msgbus_server.daemon_status import DaemonStatus, StatusSource
from msgbus_server.decoding import add_msgbus_service
from msgbus_server.dedup import DedupWorker
from msgbus_server.disk_budget import DiskBudget, format_bytes
from msgbus_server.grpc_metrics import CallCounter
from msgbus_server.head_changes import HeadChanges
from msgbus_server.health import Health, Subsystem, storage_reason
from msgbus_server.listeners import UnixSockets, add_tcp_ports, exposed_listeners
from msgbus_server.metrics import DaemonMetrics
from msgbus_server.notify import LogNotifier
from msgbus_server.peer_authz import PushRules
from msgbus_server.pipeline import CommitPipeline
from msgbus_server.push_intake import PushAcceptance, PushIntake
from msgbus_server.read_gate import ReadGate
from msgbus_server.recovery import SYNC_GRACE_S, OwnLogRecovery, WriteGate
from msgbus_server.retention import PeerHoldings, RetentionWorker
from msgbus_server.service import SHUTTING_DOWN, MsgbusService
from msgbus_server.shared_store import CommitFeed, WorkClaims
from msgbus_server.status_page import StatusPage
from msgbus_server.sync import PeerSync, SyncSettings, forget_unconfigured_peers
from msgbus_server.sync_state import PUSHED, direction_of
from msgbus_server.tls import server_ssl_context

logger = logging.getLogger("msgbus_server.daemon")

# grpcio-health-checking's asyncio servicer has no type stubs (grpc-stubs covers the sync one).
_health_aio: Any = importlib.import_module("grpc_health.v1._async")

READER_THREADS = 4
"""Threads (and so store read connections) serving reads; the writer has its own thread."""
HEALTH_CHECK_INTERVAL_S = 2.0
MAX_PENDING_CALLS = 10_000
"""gRPC core's backlog of calls that arrived but that the server has not picked up yet (see
`_start_server`); above it, new calls are shed at random, and all of them above twice it."""
SHUTDOWN_BUDGET_S = 4.5
"""Everything after the signal must fit in this, to exit within 5 s even with subscribers."""
SNAPSHOT_TIMEOUT_S = 10.0
"""How long a request to the metrics and status listener waits for the event loop's snapshot."""


def settle_heap() -> int:
    """Collect startup's garbage, then freeze what is left out of the cyclic GC; how many.

    Run once the daemon serves. What exists then (modules, the store, gRPC's objects) lives as
    long as the daemon, and one full collection of it paused the event loop for 50-55 ms in
    bench/daemon_budget.py's scenario (b) (2026-12-02): frozen (`gc.freeze`), it is never
    scanned again, so a pause is bounded by what was allocated since (under 3 ms there).
    Collecting first keeps startup's garbage out of it: a frozen object is never freed.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def run(config: DaemonConfig, store: MsgbusStore, *, fresh_store: bool = False) -> int:
    """Serve until SIGINT/SIGTERM; return the exit code. The store is closed on return.

    `fresh_store` says the store holds nothing of an earlier run (`cli.store_is_new`): with
    peers, the daemon then recovers its own logs from them first (`recovery`).
    Raises `ConfigError` when the listen address cannot be bound.
    """
    return asyncio.run(Daemon(config, store, fresh_store=fresh_store).serve())


class Daemon:
    """One msgbusd instance inside a running event loop."""

    def __init__(
        self, config: DaemonConfig, store: MsgbusStore, *, fresh_store: bool = False
    ) -> None:
        self.config = config
        self.store = store
        self.notifier = LogNotifier()
        self.health = Health()
        """Serving or not, and why: what the Health and Ready RPCs and grpc.health.v1 answer."""
        self.metrics = DaemonMetrics() if config.metrics_host is not None else None
        """What `--metrics-listen` serves; None without it (and nothing is counted)."""
        self.pipeline = CommitPipeline(store, self.notifier, self.health, observer=self.metrics)
        self.commit_feed = CommitFeed.of(store, self.notifier)
        """Other processes' commits, when they share the store (None otherwise)."""
        self.work = WorkClaims(store)
        """Which once-per-store work (peer sync, retention) this process runs."""
        self.readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="msgbus-reader")
        self.read_gate = ReadGate(config.max_read_bytes_in_flight)
        """Bytes read for Fetch and Subscribe streams and not yet written, across the daemon."""
        self.disk_budget = (
            DiskBudget(config.max_disk_bytes, config.discard)
            if config.max_disk_bytes is not None
            else None
        )
        # Only a daemon that has peers to wait for protects what they have not pulled.
        self.holdings = (
            PeerHoldings()
            if config.retain_unsynced and (config.peers or config.upstreams)
            else None
        )
        self.dedup = DedupWorker(
            pipeline=self.pipeline,
            window_ms=config.dedup_window_ms,
            max_keys=config.dedup_max_keys,
        )
        """Forgets idempotency keys past --dedup-window or beyond --dedup-max-keys."""
        self.retention: RetentionWorker | None = None
        if config.retention or self.disk_budget is not None:
            self.retention = RetentionWorker(
                store=store,
                pipeline=self.pipeline,
                policy=config.retention,
                local_node=config.node,
                budget=self.disk_budget,
                holdings=self.holdings,
                changes=lambda: self.notifier.changes,
                work=self.work,
            )
        self.recovery: OwnLogRecovery | None = None
        """Set when the store is new and peers may hold this node's own logs: writes wait for
        it, and peer sync starts after it (see `_recover_then_sync`)."""
        write_gate: WriteGate | None = None
        if fresh_store and config.peers and config.recover:
            write_gate = WriteGate(self.health)
            self.recovery = OwnLogRecovery(
                local_node=config.node,
                peers=config.peers,
                store=store,
                pipeline=self.pipeline,
                settings=self._sync_settings(),
                tls=config.peer_tls,
                gate=write_gate,
            )
        self._opening: asyncio.Task[None] | None = None
        self.push_intake: PushIntake | None = None
        """The hub side of the Push RPC; None with --no-push-service."""
        if config.push_service:
            self.push_intake = PushIntake(
                local_node=config.node,
                store=store,
                pipeline=self.pipeline,
                acceptance=PushAcceptance(
                    local_node=config.node,
                    accept_relayed=config.accept_relayed,
                    # Read at each check, so the policy a SIGHUP puts in force decides.
                    policy=lambda: self.authz.policy,
                    audit=lambda: self.authz.audit,
                ),
                max_payload_bytes=config.max_payload_bytes,
                budget=self.disk_budget,
            )
        self.service = MsgbusService(
            node=config.node,
            store=store,
            pipeline=self.pipeline,
            health=self.health,
            notifier=self.notifier,
            readers=self.readers,
            max_payload_bytes=config.max_payload_bytes,
            read_gate=self.read_gate,
            disk_budget=self.disk_budget,
            write_gate=write_gate,
            push=self.push_intake,
            max_cursors=config.max_cursors,
            fifo_max_attempts=config.fifo_max_attempts,
        )
        self.status: StatusSource | None = None
        """Takes the snapshots the metrics and the status page show (with --metrics-listen)."""
        if self.metrics is not None:
            self.status = self._status_source()
        self._status_page: StatusPage | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.unix = UnixSockets(config.served)
        """The Unix socket listeners, and who is at the other end of each connection."""
        self.authz = Authorizer(
            node=config.node,
            policy=config.policy,
            source=config.policy_source,
            unix=self.unix.lookup,
            needs_policy=bool(exposed_listeners(config.served)) and not config.allow_anyone,
            relayed=bool(self.unix.listeners),
        )
        """Who may do what: checks every call, and reloads the policy on SIGHUP."""
        if self.authz.guard is not None:
            # A PublishStream's requests are checked one by one, by the same rules.
            self.service.stream_check = self.authz.refusal
        self.grpc_health: Any = _health_aio.HealthServicer()
        self.health.on_change(self._on_health_change)
        self._mirroring: set[asyncio.Task[None]] = set()
        self.server: grpc.aio.Server | None = None
        self.sync: PeerSync | None = None
        self._stop = asyncio.Event()
        self._monitor: asyncio.Task[None] | None = None
        self._shutting_down = False

    async def serve(self) -> int:
        """Start everything, wait for a signal, shut down; always closes the store."""
        started = time.monotonic()
        try:
            await self.pipeline.start()
            await forget_unconfigured_peers(
                self.pipeline,
                self.config.peers,
                self.config.upstreams,
                await asyncio.to_thread(self._pushed_records),
            )
            if self.commit_feed is not None:
                # Before the listing: what other processes commit after it is relayed.
                await asyncio.to_thread(self.commit_feed.begin)
            # Every log counts as changed once, so a peer's first "changed since" is complete.
            logs = await asyncio.to_thread(self.store.list_heads)
            self.notifier.changes = HeadChanges((head.topic, head.origin) for head in logs)
            if self.commit_feed is not None:
                await self.commit_feed.start()
            addresses = await self._start_server()
            self._start_status_page()
            if self.recovery is not None:
                # In the background: an unreachable peer must not hold up signals or shutdown.
                self._opening = asyncio.create_task(self._recover_then_sync(), name="recovery")
            else:
                await self._start_sync()
            await self._start_retention()
            await self.dedup.start()
            self._install_signal_handlers()
            self._monitor = asyncio.create_task(self._health_monitor(), name="health-monitor")
            settle_heap()
            logger.info(
                "listening on %s (node %s, storage %s, tls %s, startup %.0f ms)",
                " and ".join(addresses),
                self.config.node.key,
                self.config.storage,
                "mtls"
                if self.config.tls and self.config.tls.client_ca
                else ("on" if self.config.tls else "off"),
                (time.monotonic() - started) * 1000,
            )
            await self._stop.wait()
            logger.info("shutdown signal received")
            await self._shutdown()
        finally:
            await self._release()
        logger.info("msgbusd stopped")
        return 0

    async def _start_server(self) -> list[str]:
        config = self.config
        server = grpc.aio.server(
            interceptors=(CallCounter(self.metrics),) if self.metrics is not None else None,
            options=[
                # Without this, a second daemon on the same port would silently share it.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", receive_limit_bytes(config.max_payload_bytes)),
                ("grpc.max_send_message_length", -1),
                # Each stream is a handler task and its buffers: one connection cannot open an
                # unbounded number of them. gRPC clients queue the calls above the limit until
                # a stream ends. gRPC core's "overload protection" would instead refuse them
                # (RST_STREAM, UNAVAILABLE) while finished streams are still being torn down,
                # which failed a client with 300 publishes in flight on a limit of 256.
                ("grpc.max_concurrent_streams", config.max_streams_per_connection),
                ("grpc.http.overload_protection", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                # grpc.aio picks new calls up one at a time on the event loop, so a burst of
                # calls waits in gRPC core's pending backlog meanwhile. Its defaults (1,000,
                # then random early drop up to a hard 3,000) killed calls of a client with
                # ~2,000 publishes in flight: they ended CANCELLED without reaching a handler,
                # while 64 in flight never did. A pending call costs little (its bytes are
                # bounded by HTTP/2 flow control), so allow bursts ten times larger.
                ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
            ],
        )
        self.server = server
        add_msgbus_service(self.service, server, guard=self.authz.guard)
        health_pb2_grpc.add_HealthServicer_to_server(self.grpc_health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        addresses = add_tcp_ports(server, config.served, config.tls)
        self.unix.add_internal_port(server)
        await server.start()
        addresses += await self.unix.start()
        logger.info("authorization: %s", self.authz.describe())
        await self._mirror_health()
        return addresses

    def _status_source(self) -> StatusSource:
        from msgbus_server.cli import shown_location  # the one rule for hiding a password

        config = self.config
        return StatusSource(
            node=config.node,
            storage=config.storage,
            location=shown_location(config.data),
            listen=config.listen,
            store=self.store,
            readers=self.readers,
            health=self.health,
            notifier=self.notifier,
            streams=self.service.streams,
            peers=config.peers,
            sync=lambda: self.sync,
            budget=self.disk_budget,
            max_logs=config.metrics_max_logs,
            push_in=self.push_intake.stats if self.push_intake is not None else None,
        )

    def _start_status_page(self) -> None:
        """Serve /metrics, /status and /status.json (`--metrics-listen`) from a thread."""
        config = self.config
        if self.metrics is None or config.metrics_host is None:
            return
        self._loop = asyncio.get_running_loop()
        self.metrics.watch(self._snapshot_from_thread)
        page = StatusPage(
            config.metrics_host,
            config.metrics_port,
            metrics=self.metrics,
            snapshot=self._snapshot_from_thread,
            ssl_context=server_ssl_context(config.tls) if config.tls is not None else None,
        )
        try:
            port = page.start()
        except OSError as error:
            raise ConfigError(
                f"--metrics-listen: cannot listen on {config.metrics_listen}: "
                f"{error.strerror or error}"
            ) from None
        self._status_page = page
        host = config.metrics_host
        shown = f"[{host}]" if ":" in host else host
        logger.info(
            "metrics and status on %s://%s:%d (/metrics, /status, /status.json)",
            "https" if config.tls is not None else "http",
            shown,
            port,
        )

    def _snapshot_from_thread(self) -> DaemonStatus:
        """A status snapshot taken on the event loop, for a thread of the status listener."""
        assert self.status is not None
        assert self._loop is not None
        try:
            future = asyncio.run_coroutine_threadsafe(self.status.snapshot(), self._loop)
        except RuntimeError:  # the loop is closed: the daemon is stopping
            raise TimeoutError("msgbusd is shutting down") from None
        try:
            return future.result(SNAPSHOT_TIMEOUT_S)
        except TimeoutError:
            future.cancel()
            raise

    async def _stop_status_page(self) -> None:
        page, self._status_page = self._status_page, None
        if page is not None:
            await asyncio.to_thread(page.stop)

    def _pushed_records(self) -> list[str]:
        """The stored peers of the records of devices that pushed to this daemon."""
        peers = {state.peer for state in self.store.list_sync_states()}
        return [peer for peer in peers if direction_of(peer)[0] == PUSHED]

    async def _start_sync(self) -> None:
        config = self.config
        if not config.peers and not config.upstreams:
            return
        self.sync = PeerSync(
            local_node=config.node,
            peers=config.peers,
            store=self.store,
            pipeline=self.pipeline,
            settings=self._sync_settings(),
            tls=config.peer_tls,
            holdings=self.holdings,
            budget=self.disk_budget,
            work=self.work,
            # Read at each check, so the policy a SIGHUP puts in force decides the next one.
            push=PushRules(lambda: self.authz.policy, self.authz.audit),
            upstreams=config.upstreams,
            notifier=self.notifier,
        )
        logger.info(
            "starting peer sync with %d peer(s) and %d upstream(s) every %.0f ms",
            len(config.peers),
            len(config.upstreams),
            config.sync_interval_s * 1000,
        )
        await self.sync.start()

    def _sync_settings(self) -> SyncSettings:
        config = self.config
        return SyncSettings.of(
            interval_s=config.sync_interval_s,
            batch_limit=config.sync_batch_limit,
            max_payload_bytes=config.max_payload_bytes,
            response_idle_timeout_s=config.sync_response_idle_s,
        )

    async def _recover_then_sync(self) -> None:
        """Recover this node's own logs (writes wait), then start peer sync.

        Sync also starts once recovery has waited `SYNC_GRACE_S` for a peer: a peer that never
        answers must hold up this node's writes, not its replication from the other peers.
        Sync never takes this node's own logs, so the two do not pull the same log.
        """
        assert self.recovery is not None
        recovering = asyncio.create_task(self.recovery.run(), name="recovery-run")
        try:
            done, _ = await asyncio.wait({recovering}, timeout=SYNC_GRACE_S)
            if not done:
                logger.warning(
                    "recovery: still waiting after %.0f s; starting peer sync meanwhile",
                    SYNC_GRACE_S,
                )
                await self._start_sync()
            try:
                await recovering
            except Exception:
                # A bug: writes stay refused rather than risk publishing heads peers hold.
                logger.exception("recovery failed; writes stay refused (--no-recover skips it)")
            if done:
                await self._start_sync()
        finally:
            if not recovering.done():
                recovering.cancel()  # shutdown: let it close its peer channels
                with contextlib.suppress(asyncio.CancelledError):
                    await recovering

    async def _stop_opening(self) -> None:
        """Cancel a recovery that is still running (writes stay refused)."""
        task, self._opening = self._opening, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await task
            except Exception:
                logger.exception("recovery failed")

    async def _start_retention(self) -> None:
        if self.retention is None:
            return
        config = self.config
        rules = "; ".join(str(rule) for rule in config.retention.rules) or "none"
        budget = (
            f"{format_bytes(config.max_disk_bytes)} (--discard {config.discard})"
            if config.max_disk_bytes is not None
            else "none"
        )
        logger.info(
            "retention: rules %s; disk budget %s; retain-unsynced %s",
            rules,
            budget,
            "on" if self.holdings is not None else "off",
        )
        await self.retention.start()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.authz.reload_soon)

    def _on_health_change(self, serving: bool) -> None:
        # Health is reported from plain functions on the loop; grpc.health.v1 is set by a task.
        task = asyncio.get_running_loop().create_task(self._mirror_health())
        self._mirroring.add(task)
        task.add_done_callback(self._mirroring.discard)

    async def _mirror_health(self) -> None:
        """Make grpc.health.v1 say what `self.health` says now (whatever the order of tasks)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.health.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.grpc_health.set(name, status)

    async def _health_monitor(self) -> None:
        """Report the store to `self.health`, so it turns NOT_SERVING while the store fails.

        While the last write transaction failed, it also probes the commit pipeline with a
        write that changes nothing. A quiet node is then SERVING again as soon as the store
        commits, not at the next client write, and NOT_SERVING, with the probe's error, while
        the store still fails.
        """
        loop = asyncio.get_running_loop()
        probe: asyncio.Task[bool] | None = None
        try:
            while True:
                await asyncio.sleep(HEALTH_CHECK_INTERVAL_S)
                try:
                    await loop.run_in_executor(self.readers, self.store.check)
                except Exception as error:
                    self.health.report(Subsystem.STORE, False, storage_reason(error))
                else:
                    self.health.report(Subsystem.STORE, True)
                # One probe at a time, in its own task: a writer stuck in a transaction must
                # neither pile probes up nor hold up the store checks.
                if self.health.failing(Subsystem.PIPELINE) and (probe is None or probe.done()):
                    probe = asyncio.create_task(self.pipeline.probe(), name="pipeline-probe")
        finally:
            if probe is not None:
                probe.cancel()

    async def _shutdown(self) -> None:
        """Stop accepting calls, end subscriptions, finish writes, stop sync."""
        deadline = time.monotonic() + SHUTDOWN_BUDGET_S
        self._shutting_down = True
        self.health.report(Subsystem.SHUTDOWN, False, SHUTTING_DOWN)
        # NOT_SERVING for good: grpc.health.v1 ignores any later change.
        await self.grpc_health.enter_graceful_shutdown()
        # Subscribe streams see the closed notifier and end with UNAVAILABLE right away, so
        # SDKs reconnect (to us after a restart, or elsewhere).
        self.notifier.close()
        await self._stop_status_page()
        await self._stop_opening()  # before sync: a recovery that finishes now would start it
        await self.unix.stop()  # new local callers get "no such socket", as for a stopped daemon
        tasks = []
        if self.server is not None:
            tasks.append(self.server.stop(self.config.grace_s))
        if self.sync is not None:
            tasks.append(self._stop_sync())
        if self.retention is not None:
            tasks.append(self.retention.stop())
        tasks.append(self.dedup.stop())
        if self.commit_feed is not None:
            tasks.append(self.commit_feed.stop())
        await asyncio.gather(*tasks)
        remaining = max(deadline - time.monotonic(), 0.5)
        try:
            await asyncio.wait_for(self.pipeline.stop(), remaining)
        except TimeoutError:
            logger.error("writes still running at the shutdown deadline; exiting anyway")

    async def _stop_sync(self) -> None:
        if self.sync is None:
            return
        try:
            await asyncio.wait_for(self.sync.stop(), 1.5)
        except TimeoutError:
            logger.warning("peer sync did not stop in time")
        except Exception:
            logger.exception("peer sync failed while stopping")

    async def _release(self) -> None:
        """Release everything, whatever state startup or shutdown reached."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self._stop_status_page()
        await self._stop_opening()
        if self.server is not None and not self._shutting_down:
            await self.server.stop(None)
        await self.unix.stop()
        self.unix.close_all()
        if self.sync is not None and not self._shutting_down:
            await self._stop_sync()
        if self.retention is not None and not self._shutting_down:
            await self.retention.stop()
        if not self._shutting_down:
            await self.dedup.stop()
        if self.commit_feed is not None:
            await self.commit_feed.stop()
        self.notifier.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pipeline.stop(), 2.0)
        self.readers.shutdown(wait=True, cancel_futures=True)
        try:
            self.store.close()
        except Exception:
            logger.exception("closing the store failed")
