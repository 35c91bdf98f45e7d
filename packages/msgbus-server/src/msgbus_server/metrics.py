"""The daemon's Prometheus metrics: what `/metrics` serves with `--metrics-listen`.

`CATALOGUE` is the one list of the metrics msgbusd exports (name, type, labels, meaning); the
README's table is generated from it and the tests hold every scrape to it. Besides these, the
library's process, platform and garbage collector metrics (`process_*`, `python_*`) are served.

Two kinds of metric:

- Events are counted as they happen, by the library's thread-safe metric objects: each write
  transaction (`transaction`, called by the commit pipeline's writer thread: commit latency with
  the fsync, ops per transaction, what was published, trimmed, deleted and queued) and each gRPC
  call (`call_ended`, from the interceptor in `grpc_metrics`).
- State is read at scrape time from a `daemon_status.DaemonStatus` snapshot: storage, the
  busiest logs and deepest queues, subscribers, and each peer's sync counters and lag.

Cardinality is bounded: per-log series exist only for the `--metrics-max-logs` busiest logs
(`daemon_status` says which), per-queue series only for as many deepest queues; every log and
queue counts in the totals (`msgbus_logs`, `msgbus_held_messages`, `msgbus_fifo_held_messages`).
Other labels take few values: configured peers, RPC methods, status codes, failure reasons.

Every registry is the daemon's own (not the library's global one), so several daemons in one
process never mix their numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from msgbus_core.model import FifoMessage, Message
from msgbus_core.ops import (
    AckOp,
    AppendOp,
    DeleteRangeOp,
    DeleteResult,
    EnqueueOp,
    Outcome,
    RejectOp,
    TrimOp,
    TrimResult,
    WriteOp,
)
from msgbus_core.publish_keys import DuplicatePublish
from msgbus_server.daemon_status import DaemonStatus
from msgbus_server.stream_stats import FETCH, SUBSCRIBE
from msgbus_server.sync_fetch import FailureKind

__all__ = ["AREAS", "CATALOGUE", "DaemonMetrics", "MetricSpec"]

Kind = Literal["counter", "gauge", "histogram", "summary"]

AREAS: Final = ("publishing", "storage", "subscribers", "sync", "fifo", "process")
"""The areas the metrics are grouped in (the README's table, the Grafana dashboard's rows)."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric.

    `name` is what a query names: a counter's ends in `_total`; a histogram's or summary's is the
    base of its `_bucket`, `_sum` and `_count` series.
    """

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str
    area: str
    buckets: tuple[float, ...] = ()


_LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_OPS_BUCKETS: Final = tuple(float(2**n) for n in range(14))  # 1 .. 8192 (MAX_OPS_PER_TRANSACTION)
_BATCH_BUCKETS: Final = (1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0)

CATALOGUE: Final[tuple[MetricSpec, ...]] = (
    # -- publishing
    MetricSpec(
        "msgbus_published_messages_total",
        "counter",
        (),
        "Messages published by clients (Publish and PublishBatch), counted once committed.",
        "publishing",
    ),
    MetricSpec(
        "msgbus_published_bytes_total",
        "counter",
        (),
        "Payload bytes of the messages published.",
        "publishing",
    ),
    MetricSpec(
        "msgbus_publish_duplicates_total",
        "counter",
        (),
        "Publishes (and batch entries) whose idempotency key repeated an earlier publish: "
        "answered with the message stored then, nothing stored.",
        "publishing",
    ),
    MetricSpec(
        "msgbus_publish_batch_messages",
        "histogram",
        (),
        "Messages per publish call: 1 for Publish, the entries of a PublishBatch.",
        "publishing",
        _BATCH_BUCKETS,
    ),
    MetricSpec(
        "msgbus_commit_seconds",
        "histogram",
        (),
        "Time one write transaction takes in the store, the durable commit (fsync) included.",
        "publishing",
        _LATENCY_BUCKETS,
    ),
    MetricSpec(
        "msgbus_transactions_total",
        "counter",
        ("result",),
        "Write transactions, by result: committed or failed.",
        "publishing",
    ),
    MetricSpec(
        "msgbus_transaction_ops",
        "histogram",
        (),
        "Operations per write transaction (publishes, replicated batches, FIFO operations, "
        "trims, sync state records): how well concurrent writes share a commit.",
        "publishing",
        _OPS_BUCKETS,
    ),
    MetricSpec(
        "msgbus_deleted_messages_total",
        "counter",
        (),
        "Messages newly deleted by DeleteRange.",
        "publishing",
    ),
    # -- storage
    MetricSpec(
        "msgbus_storage_bytes",
        "gauge",
        (),
        "Bytes of the store's database files (its write-ahead log included).",
        "storage",
    ),
    MetricSpec(
        "msgbus_storage_reusable_bytes",
        "gauge",
        (),
        "Free bytes inside the database files that the store reuses before it grows them.",
        "storage",
    ),
    MetricSpec("msgbus_logs", "gauge", (), "Logs in the store.", "storage"),
    MetricSpec(
        "msgbus_held_messages",
        "gauge",
        (),
        "Messages held in all logs (deleted ones keep their head and count).",
        "storage",
    ),
    MetricSpec(
        "msgbus_held_bytes",
        "gauge",
        (),
        "Payload and header bytes held in all logs.",
        "storage",
    ),
    MetricSpec(
        "msgbus_log_head_id",
        "gauge",
        ("topic", "origin"),
        "Last head of each of the busiest logs (at most --metrics-max-logs logs).",
        "storage",
    ),
    MetricSpec(
        "msgbus_log_first_head_id",
        "gauge",
        ("topic", "origin"),
        "First head still held of each of the busiest logs (0: trimmed empty).",
        "storage",
    ),
    MetricSpec(
        "msgbus_log_held_messages",
        "gauge",
        ("topic", "origin"),
        "Messages held in each of the busiest logs.",
        "storage",
    ),
    MetricSpec(
        "msgbus_log_held_bytes",
        "gauge",
        ("topic", "origin"),
        "Bytes held in each of the busiest logs.",
        "storage",
    ),
    MetricSpec(
        "msgbus_retention_trimmed_messages_total",
        "counter",
        (),
        "Messages removed by retention (rules and the disk budget).",
        "storage",
    ),
    MetricSpec(
        "msgbus_retention_trimmed_bytes_total",
        "counter",
        (),
        "Bytes removed by retention.",
        "storage",
    ),
    MetricSpec(
        "msgbus_disk_budget_bytes",
        "gauge",
        (),
        "The disk budget (--max-disk-bytes); absent without one.",
        "storage",
    ),
    MetricSpec(
        "msgbus_disk_budget_used_bytes",
        "gauge",
        (),
        "What the disk budget counts as used: the last measurement plus the writes since.",
        "storage",
    ),
    MetricSpec(
        "msgbus_survey_seconds",
        "gauge",
        (),
        "How long the last survey of the store for the status took (it is cached meanwhile).",
        "storage",
    ),
    # -- subscribers and readers
    MetricSpec("msgbus_subscribe_streams", "gauge", (), "Open Subscribe streams.", "subscribers"),
    MetricSpec(
        "msgbus_subscribe_replaying_streams",
        "gauge",
        (),
        "Open Subscribe streams still reading what was committed before (not yet live).",
        "subscribers",
    ),
    MetricSpec(
        "msgbus_subscribe_behind_seconds",
        "gauge",
        (),
        "How far behind its log's head the furthest open Subscribe stream is: the age of the "
        "last message it was sent; 0 when every stream is live.",
        "subscribers",
    ),
    MetricSpec(
        "msgbus_delivered_messages_total",
        "counter",
        ("method",),
        "Messages sent to clients, by method (Fetch or Subscribe).",
        "subscribers",
    ),
    # -- sync
    MetricSpec(
        "msgbus_sync_lag_messages",
        "gauge",
        ("peer",),
        "Messages the peer has listed that this node has not stored yet (the peer's head minus "
        "the local head, summed over its logs).",
        "sync",
    ),
    MetricSpec(
        "msgbus_sync_unsynced_messages",
        "gauge",
        ("peer",),
        "Messages of this node's own logs that the peer has not listed as held (the local head "
        "minus the peer's, summed): how far behind a peer that pulls from this node is. Known "
        "once the peer's listing was read; kept while the peer is down.",
        "sync",
    ),
    MetricSpec(
        "msgbus_sync_peer_up",
        "gauge",
        ("peer",),
        "1 when the last sync pass with the peer completed, 0 when it failed.",
        "sync",
    ),
    MetricSpec(
        "msgbus_sync_passes_total",
        "counter",
        ("peer", "result"),
        "Sync passes, by result: ok or failed.",
        "sync",
    ),
    MetricSpec(
        "msgbus_sync_pass_seconds",
        "summary",
        ("peer",),
        "Duration of the sync passes.",
        "sync",
    ),
    MetricSpec(
        "msgbus_sync_failures_total",
        "counter",
        ("peer", "reason"),
        "Sync failures, by reason: peer (unreachable, hung or not who it must be: the pass "
        "fails), log (one log could not be synced), store (the local store failed), bug.",
        "sync",
    ),
    MetricSpec(
        "msgbus_sync_refused_total",
        "counter",
        ("peer",),
        "Transfers refused by an accept rule: a conflict, a gap, a malformed or suppressed "
        "delete, a payload above the limit, a log of this node, a diverged history.",
        "sync",
    ),
    MetricSpec(
        "msgbus_sync_failing_logs",
        "gauge",
        ("peer",),
        "Logs that failed with the peer and have not synced since.",
        "sync",
    ),
    MetricSpec(
        "msgbus_push_streams",
        "gauge",
        ("direction",),
        'Push streams open: "in" from devices pushing here, "out" to this node\'s upstreams.',
        "sync",
    ),
    MetricSpec(
        "msgbus_push_batches_total",
        "counter",
        ("direction",),
        'Push batches applied: "in" here from devices, "out" acknowledged by upstreams.',
        "sync",
    ),
    MetricSpec(
        "msgbus_push_messages_total",
        "counter",
        ("direction",),
        'Messages of applied push batches: "in" stored here, "out" acknowledged by upstreams.',
        "sync",
    ),
    MetricSpec(
        "msgbus_push_refused_total",
        "counter",
        ("direction",),
        'Pushed logs refused: "in" by this node, "out" by an upstream (once per new refusal).',
        "sync",
    ),
    MetricSpec(
        "msgbus_sync_pulled_messages_total",
        "counter",
        ("peer",),
        "Messages pulled from the peer and stored (rate: the pull rate).",
        "sync",
    ),
    MetricSpec(
        "msgbus_sync_pulled_bytes_total",
        "counter",
        ("peer",),
        "Payload bytes pulled from the peer and stored.",
        "sync",
    ),
    MetricSpec(
        "msgbus_sync_last_success_timestamp_seconds",
        "gauge",
        ("peer",),
        "When a sync pass with the peer last completed (Unix time); 0 before the first.",
        "sync",
    ),
    # -- fifo
    MetricSpec(
        "msgbus_fifo_queues", "gauge", (), "FIFO queues holding at least one message.", "fifo"
    ),
    MetricSpec("msgbus_fifo_held_messages", "gauge", (), "Messages in all FIFO queues.", "fifo"),
    MetricSpec(
        "msgbus_fifo_leased_messages",
        "gauge",
        (),
        "Messages a lease holds, in all queues (an expired lease counts until it is released).",
        "fifo",
    ),
    MetricSpec(
        "msgbus_fifo_dead_letter_messages",
        "gauge",
        (),
        "Messages in all dead-letter queues (QUEUE.dead): those that reached max_attempts.",
        "fifo",
    ),
    MetricSpec(
        "msgbus_fifo_queue_depth_messages",
        "gauge",
        ("queue",),
        "Messages in each of the deepest queues (at most --metrics-max-logs queues).",
        "fifo",
    ),
    MetricSpec(
        "msgbus_fifo_queue_attempts",
        "gauge",
        ("queue",),
        "Rejected attempts of the messages in each of the deepest queues (redeliveries).",
        "fifo",
    ),
    MetricSpec("msgbus_fifo_enqueued_total", "counter", (), "Messages enqueued.", "fifo"),
    MetricSpec("msgbus_fifo_acked_total", "counter", (), "Messages acknowledged.", "fifo"),
    MetricSpec(
        "msgbus_fifo_rejected_total",
        "counter",
        (),
        "Accepted rejects: each one redelivers the front message.",
        "fifo",
    ),
    # -- process
    MetricSpec(
        "msgbus_info",
        "gauge",
        ("node", "version", "storage"),
        "Always 1: the node identity, the msgbus-server version and the store backend.",
        "process",
    ),
    MetricSpec(
        "msgbus_serving",
        "gauge",
        (),
        "1 while the daemon serves (its Health answers SERVING), 0 otherwise.",
        "process",
    ),
    MetricSpec(
        "msgbus_grpc_calls_total",
        "counter",
        ("service", "method", "code"),
        "gRPC calls handled, by service, method and status code.",
        "process",
    ),
)
"""Every metric msgbusd exports, by area."""

_SPECS: Final = {spec.name: spec for spec in CATALOGUE}
_FAILURE_REASONS: Final = tuple(kind.name.lower() for kind in FailureKind)


def _base(name: str) -> str:
    """A counter's name as the library takes it (it adds `_total` itself)."""
    return name.removesuffix("_total")


class DaemonMetrics:
    """The metrics of one daemon: its registry, its event counters, and its state collector.

    It is the commit pipeline's `CommitObserver` (`transaction`, on the writer thread) and what
    the gRPC interceptor reports calls to (`call_ended`). `watch` adds the state read from
    `DaemonStatus` snapshots; `exposition` renders everything in the Prometheus text format.
    """

    def __init__(self) -> None:
        # No `_created` series beside every counter and histogram: they double the series and
        # say only when the daemon started (process_start_time_seconds says it once).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        if GC_COLLECTOR is not None:
            GCCollector(registry=self.registry)
        self._published = self._counter("msgbus_published_messages_total")
        self._published_bytes = self._counter("msgbus_published_bytes_total")
        self._duplicates = self._counter("msgbus_publish_duplicates_total")
        self._batch = self._histogram("msgbus_publish_batch_messages")
        self._commit = self._histogram("msgbus_commit_seconds")
        transactions = self._counter("msgbus_transactions_total")
        self._committed = transactions.labels("committed")
        self._failed = transactions.labels("failed")
        self._ops = self._histogram("msgbus_transaction_ops")
        self._deleted = self._counter("msgbus_deleted_messages_total")
        self._trimmed = self._counter("msgbus_retention_trimmed_messages_total")
        self._trimmed_bytes = self._counter("msgbus_retention_trimmed_bytes_total")
        self._enqueued = self._counter("msgbus_fifo_enqueued_total")
        self._acked = self._counter("msgbus_fifo_acked_total")
        self._rejected = self._counter("msgbus_fifo_rejected_total")
        self._calls = self._counter("msgbus_grpc_calls_total")
        self._call_counters: dict[tuple[str, str, str], Counter] = {}
        """The labelled children of `_calls`, found once (`labels` takes a lock and a lookup)."""

    def _counter(self, name: str) -> Counter:
        spec = _SPECS[name]
        return Counter(_base(name), spec.help, spec.labels, registry=self.registry)

    def _histogram(self, name: str) -> Histogram:
        spec = _SPECS[name]
        return Histogram(name, spec.help, spec.labels, registry=self.registry, buckets=spec.buckets)

    def watch(self, snapshot: Callable[[], DaemonStatus]) -> None:
        """Serve the state that `snapshot` (called at each scrape, on the scraping thread) gives."""
        self.registry.register(_StatusCollector(snapshot))

    def exposition(self) -> bytes:
        """Every metric, in the Prometheus text format (one snapshot for the state)."""
        return generate_latest(self.registry)

    # -- events -----------------------------------------------------------------------------------

    def transaction(
        self,
        submissions: Sequence[Sequence[WriteOp]],
        outcomes: Sequence[Outcome],
        seconds: float,
        failed: bool,
    ) -> None:
        """Count one write transaction (`pipeline.CommitObserver`, on the writer thread)."""
        self._commit.observe(seconds)
        self._ops.observe(sum(len(ops) for ops in submissions))
        if failed:
            self._failed.inc()
            return
        self._committed.inc()
        published = published_bytes = deleted = trimmed = trimmed_bytes = 0
        enqueued = acked = rejected = duplicates = 0
        index = 0
        for ops in submissions:
            if ops and isinstance(ops[0], AppendOp):
                self._batch.observe(len(ops))
            for op in ops:
                outcome = outcomes[index]
                index += 1
                if isinstance(op, AppendOp):
                    if isinstance(outcome, Message):
                        published += 1
                        published_bytes += len(op.payload)
                    else:
                        duplicates += isinstance(outcome, DuplicatePublish)
                elif isinstance(op, TrimOp):
                    if isinstance(outcome, TrimResult):
                        trimmed += outcome.removed
                        trimmed_bytes += outcome.freed_bytes
                elif isinstance(op, DeleteRangeOp):
                    if isinstance(outcome, DeleteResult):
                        deleted += outcome.deleted_count
                elif isinstance(op, EnqueueOp):
                    enqueued += isinstance(outcome, FifoMessage)
                elif isinstance(op, AckOp):
                    acked += outcome is True
                elif isinstance(op, RejectOp):
                    rejected += outcome is True
        # One increment per counter and transaction, not per op: each takes a lock.
        for counter, amount in (
            (self._published, published),
            (self._published_bytes, published_bytes),
            (self._duplicates, duplicates),
            (self._deleted, deleted),
            (self._trimmed, trimmed),
            (self._trimmed_bytes, trimmed_bytes),
            (self._enqueued, enqueued),
            (self._acked, acked),
            (self._rejected, rejected),
        ):
            if amount:
                counter.inc(amount)

    def call_ended(self, service: str, method: str, code: str) -> None:
        """Count one gRPC call that ended with status `code` (the interceptor calls it).

        On the event loop thread only.
        """
        key = (service, method, code)
        counter = self._call_counters.get(key)
        if counter is None:
            counter = self._call_counters[key] = self._calls.labels(service, method, code)
        counter.inc()


class _StatusCollector(Collector):
    """The state metrics, read from one `DaemonStatus` snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], DaemonStatus]) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        """Nothing to check at registration: the names are the catalogue's."""
        return ()

    def collect(self) -> Iterable[Metric]:
        """The state metrics of a snapshot taken now."""
        status = self._snapshot()
        families: dict[str, Metric] = {}

        def add(name: str, labels: Sequence[str], value: float) -> None:
            family = families.get(name)
            if family is None:
                family = families[name] = _family(name)
            family.add_metric(list(labels), value)  # type: ignore[attr-defined]

        survey = status.survey
        add("msgbus_info", (status.node, status.version, status.storage), 1)
        add("msgbus_serving", (), 1 if status.serving else 0)
        add("msgbus_storage_bytes", (), survey.usage.file_bytes)
        add("msgbus_storage_reusable_bytes", (), survey.usage.reusable_bytes)
        add("msgbus_logs", (), survey.logs)
        add("msgbus_held_messages", (), survey.messages)
        add("msgbus_held_bytes", (), survey.bytes)
        add("msgbus_survey_seconds", (), survey.seconds)
        for log in survey.busiest:
            key = (log.topic, log.origin)
            add("msgbus_log_head_id", key, log.head_id)
            add("msgbus_log_first_head_id", key, log.first_head_id)
            add("msgbus_log_held_messages", key, log.messages)
            add("msgbus_log_held_bytes", key, log.bytes)
        if status.budget_bytes is not None:
            add("msgbus_disk_budget_bytes", (), status.budget_bytes)
            add("msgbus_disk_budget_used_bytes", (), status.budget_used_bytes or 0)
        add("msgbus_subscribe_streams", (), status.subscribers)
        add("msgbus_subscribe_replaying_streams", (), status.replaying_subscribers)
        add("msgbus_subscribe_behind_seconds", (), status.behind_seconds)
        for method in (FETCH, SUBSCRIBE):
            add("msgbus_delivered_messages_total", (method,), status.delivered.get(method, 0))
        add("msgbus_fifo_queues", (), survey.queues)
        add("msgbus_fifo_held_messages", (), survey.queued_messages)
        add("msgbus_fifo_leased_messages", (), survey.leased_messages)
        add("msgbus_fifo_dead_letter_messages", (), survey.dead_letters)
        for queue in survey.deepest:
            add("msgbus_fifo_queue_depth_messages", (queue.queue,), queue.depth)
            add("msgbus_fifo_queue_attempts", (queue.queue,), queue.attempts)
        for peer in status.peers:
            p = peer.endpoint
            add("msgbus_sync_lag_messages", (p,), peer.lag_messages)
            if peer.unsynced_messages is not None:
                add("msgbus_sync_unsynced_messages", (p,), peer.unsynced_messages)
            add("msgbus_sync_peer_up", (p,), 1 if peer.up else 0)
            add("msgbus_sync_passes_total", (p, "ok"), peer.passes)
            add("msgbus_sync_passes_total", (p, "failed"), peer.failed_passes)
            families.setdefault("msgbus_sync_pass_seconds", _family("msgbus_sync_pass_seconds"))
            summary = families["msgbus_sync_pass_seconds"]
            assert isinstance(summary, SummaryMetricFamily)
            summary.add_metric(
                [p], count_value=peer.passes + peer.failed_passes, sum_value=peer.pass_seconds
            )
            for reason in _FAILURE_REASONS:
                add("msgbus_sync_failures_total", (p, reason), peer.failures.get(reason, 0))
            add("msgbus_sync_refused_total", (p,), peer.refused)
            add("msgbus_sync_failing_logs", (p,), peer.failing_logs)
            add("msgbus_sync_pulled_messages_total", (p,), peer.pulled_messages)
            add("msgbus_sync_pulled_bytes_total", (p,), peer.pulled_bytes)
            add("msgbus_sync_last_success_timestamp_seconds", (p,), peer.last_success_at_ms / 1000)
        for direction, push in (("in", status.push_in), ("out", status.push_out)):
            add("msgbus_push_streams", (direction,), push.streams)
            batches, messages = (
                (push.batches_in, push.messages_in)
                if direction == "in"
                else (push.batches_out, push.messages_out)
            )
            add("msgbus_push_batches_total", (direction,), batches)
            add("msgbus_push_messages_total", (direction,), messages)
            add("msgbus_push_refused_total", (direction,), push.refused)
        return families.values()


def _family(name: str) -> Metric:
    spec = _SPECS[name]
    labels = list(spec.labels)
    if spec.kind == "counter":
        return CounterMetricFamily(_base(name), spec.help, labels=labels)
    if spec.kind == "summary":
        return SummaryMetricFamily(name, spec.help, labels=labels)
    assert spec.kind == "gauge", name
    return GaugeMetricFamily(name, spec.help, labels=labels)
