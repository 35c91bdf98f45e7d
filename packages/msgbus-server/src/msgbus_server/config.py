"""The daemon configuration, as built by the CLI from flags and environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from msgbus_core.cursors import DEFAULT_MAX_CURSORS
from msgbus_core.limits import DEFAULT_MAX_PAYLOAD_BYTES
from msgbus_core.model import NodeId
from msgbus_core.publish_keys import DEFAULT_DEDUP_WINDOW_MS, DEFAULT_MAX_KEYS
from msgbus_server.fifo_attempts import MaxAttempts
from msgbus_server.peers import PeerSpec, PeerTlsConfig
from msgbus_server.retention_rules import RetentionPolicy
from msgbus_server.sync_fetch import DEFAULT_RESPONSE_IDLE_TIMEOUT_S

if TYPE_CHECKING:  # both import ConfigError from here
    from msgbus_server.listeners import Listener
    from msgbus_server.policy import Policy, PolicySource

DEFAULT_MAX_STREAMS_PER_CONNECTION = 4096
"""Concurrent streams per client connection unless `--max-streams-per-connection` says.

Generous on purpose: gRPC shares one connection between the channels of a process, so an
application's subscriptions (which never end) and its publishes in flight all count against it,
and calls above the cap wait until a stream ends."""
DEFAULT_MAX_READ_BYTES_IN_FLIGHT = 16 * 1024 * 1024
"""Read bytes in flight across the daemon unless `--max-read-bytes-in-flight` says."""
DEFAULT_METRICS_MAX_LOGS = 100
"""Logs (and FIFO queues) with metric series of their own unless `--metrics-max-logs` says."""


class ConfigError(Exception):
    """A configuration problem: msgbusd prints `str(error)` as one line and exits with 2."""


@dataclass(frozen=True, slots=True)
class ServerTls:
    """PEM material for the server side: TLS, or mTLS when `client_ca` is set."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything msgbusd needs to run; validated before anything is opened."""

    node: NodeId
    listen_host: str
    listen_port: int
    data: str = "./msgbus.sqlite"
    storage: str = "sqlite"
    peers: tuple[PeerSpec, ...] = ()
    upstreams: tuple[PeerSpec, ...] = ()
    """`--upstream`: hubs this daemon dials, pulls from like peers and pushes to."""
    accept_relayed: bool = False
    """`--accept-relayed`: take pushed logs of origins other than the pusher's own."""
    push_service: bool = True
    """False (`--no-push-service`): the Push RPC answers UNIMPLEMENTED, as an original's."""
    peer_tls: PeerTlsConfig | None = None
    tls: ServerTls | None = None
    sync_interval_s: float = 1.0
    sync_batch_limit: int | None = None
    """`--sync-batch-limit`: messages per sync batch; None (the default) adapts each log's
    batches to the link's round trips, within 8 MiB (`sync_fetch.AdaptiveBudget`)."""
    sync_response_idle_s: float = DEFAULT_RESPONSE_IDLE_TIMEOUT_S
    """How long a sync Fetch may go without a response (`--sync-response-idle-ms`)."""
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION
    """Concurrent gRPC streams (calls) one client connection may have open."""
    max_read_bytes_in_flight: int = DEFAULT_MAX_READ_BYTES_IN_FLIGHT
    """Bytes that Fetch and Subscribe streams together may have read and not yet written."""
    log_format: str = "text"
    log_level: str = "INFO"
    allow_insecure: bool = False
    volatile: bool = False
    """The store keeps nothing on disk (`--storage memory` with `--volatile`): a restart loses
    everything, and the daemon says so at startup."""
    grace_s: float = 2.0
    """How long in-flight unary calls get to finish on shutdown."""
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    """How much of each log to keep, by topic pattern (`--retention`); empty keeps everything."""
    dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS
    """How long an idempotency key is remembered at least (`--dedup-window`)."""
    dedup_max_keys: int = DEFAULT_MAX_KEYS
    """The most idempotency keys kept (`--dedup-max-keys`); the oldest go first beyond it."""
    max_disk_bytes: int | None = None
    """The daemon-wide disk budget (`--max-disk-bytes`), at least 1 MiB; None for no budget."""
    discard: str = "old"
    """At the disk budget: `old` trims the oldest messages, `new` refuses writes
    (RESOURCE_EXHAUSTED); one of `retention_rules.DISCARD_POLICIES`."""
    retain_unsynced: bool = True
    """A message of this node's own origin is not trimmed until a configured peer has reported
    holding it (`--retain-unsynced`); without peers it has no effect."""
    recover: bool = True
    """A daemon whose store is new recovers its own logs from its peers before it accepts
    writes (`msgbus_server.recovery`); `--no-recover` turns that off."""
    listeners: tuple[Listener, ...] = ()
    """Every `--listen` address, TCP and Unix sockets; empty means listen_host:listen_port
    alone. listen_host and listen_port are the first TCP listener's (("", 0) without one)."""
    policy: Policy | None = None
    """The authorization policy in force at startup; None allows every call."""
    policy_source: PolicySource | None = None
    """Where SIGHUP reads the policy again: the `--policy` file or the `--config` file."""
    allow_anyone: bool = False
    """`--allow-anyone`: serve a listener other than loopback and Unix sockets without a
    policy, so every caller that reaches it may do everything."""
    metrics_host: str | None = None
    """Where `--metrics-listen` serves /metrics, /status and /status.json; None: nowhere."""
    metrics_port: int = 0
    metrics_max_logs: int = DEFAULT_METRICS_MAX_LOGS
    """The busiest logs (and deepest queues) that get metric series of their own."""
    max_cursors: int = DEFAULT_MAX_CURSORS
    """The most durable cursors this daemon keeps (`--max-cursors`); a commit of one more is
    RESOURCE_EXHAUSTED."""
    fifo_max_attempts: MaxAttempts = field(default_factory=MaxAttempts)
    """Failed attempts each FIFO queue allows before its dead-letter queue (`--fifo-max-attempts`,
    by queue glob); a queue no rule matches has no limit."""

    @property
    def listen(self) -> str:
        """The listen address as gRPC expects it (`host:port`, IPv6 in brackets)."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    @property
    def served(self) -> tuple[Listener, ...]:
        """Every listener: `listeners`, or the one at listen_host:listen_port."""
        from msgbus_server.listeners import TcpListener  # it imports this module

        return self.listeners or (TcpListener(self.listen_host, self.listen_port),)

    @property
    def metrics_listen(self) -> str | None:
        """The `--metrics-listen` address (`host:port`, IPv6 in brackets), or None."""
        if self.metrics_host is None:
            return None
        host = f"[{self.metrics_host}]" if ":" in self.metrics_host else self.metrics_host
        return f"{host}:{self.metrics_port}"
