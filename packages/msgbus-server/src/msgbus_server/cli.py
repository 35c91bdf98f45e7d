"""The `msgbusd` command line.

Every flag of the original daemon keeps its name and environment variable, and is also a key of
the optional TOML file given by `--config` (see `msgbus_server.config_file`). A flag on the
command line wins over its variable, which wins over the file. Every configuration error is ONE
line on stderr and exit status 2: operators should never have to read a traceback to learn that
a path is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import ipaddress
import logging
import os
import re
import socket
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, NoReturn

from msgbus_core.cursors import DEFAULT_MAX_CURSORS
from msgbus_core.errors import MsgbusError
from msgbus_core.limits import DEFAULT_MAX_PAYLOAD_BYTES, MAX_PAYLOAD_LIMIT
from msgbus_core.model import NodeId
from msgbus_core.publish_keys import DEFAULT_MAX_KEYS
from msgbus_core.store import ENTRY_POINT_GROUP, MsgbusStore
from msgbus_core.validation import validate_node_part
from msgbus_server.config import (
    DEFAULT_MAX_READ_BYTES_IN_FLIGHT,
    DEFAULT_MAX_STREAMS_PER_CONNECTION,
    DEFAULT_METRICS_MAX_LOGS,
    ConfigError,
    DaemonConfig,
    ServerTls,
)
from msgbus_server.config_file import FileKey, ValueKind, load_config_file
from msgbus_server.fifo_attempts import max_attempts_of
from msgbus_server.listeners import (
    DEFAULT_SOCKET_MODE,
    UNIX_PREFIX,
    Listener,
    TcpListener,
    UnixListener,
    check_unix_listener,
    exposed_listeners,
    parse_socket_group,
    parse_socket_mode,
    parse_unix_listener,
    without_covered,
)
from msgbus_server.logs import LOG_FORMATS, LOG_LEVELS
from msgbus_server.peers import PeerSpec, PeerTlsConfig, parse_peer_spec
from msgbus_server.policy import PolicySource
from msgbus_server.retention_rules import (
    DISCARD_POLICIES,
    RetentionPolicy,
    RetentionRule,
    parse_duration_ms,
    parse_retention,
    parse_size,
)
from msgbus_server.sync_fetch import DEFAULT_RESPONSE_IDLE_TIMEOUT_S, FETCH_STREAM_CAP_S
from msgbus_server.tls import load_server_tls
from msgbus_server.topic_filter import parse_topic_globs

EXIT_CONFIG = 2
MAX_STREAMS_LIMIT = 2**31 - 1
"""Upper bound for --max-streams-per-connection: gRPC takes it as a C int."""
VOLATILE_STORES = frozenset({"memory"})
SERVER_STORES = frozenset({"postgres"})
"""Stores in a database server: `--data` is a connection string, not a file."""
"""Stores that keep nothing on disk. A daemon on one would acknowledge publishes that the next
restart loses, so it starts only when the operator asks for that with --volatile."""
MAX_SYNC_RESPONSE_IDLE_MS = int(FETCH_STREAM_CAP_S * 1000)
"""Upper bound for --sync-response-idle-ms: the backstop deadline of one whole Fetch stream."""
MIN_DISK_BYTES = 1024 * 1024
"""The smallest --max-disk-bytes: a smaller budget leaves next to no room for messages beside the
store's own tables and journal, and is most likely a unit mistake (bytes meant as KiB or MiB)."""
MAX_METRICS_MAX_LOGS = 10_000
"""Upper bound for --metrics-max-logs: four series per log, so at most 40,000 of them."""
MAX_CURSORS_LIMIT = 10_000_000
"""The largest --max-cursors: cursors are small rows, but each costs a key in the store."""
MAX_DEDUP_KEYS = 100_000_000
"""The largest --dedup-max-keys: a key row costs some 200 bytes of store, so 20 GB at most."""
RETENTION_ENV_SEPARATOR = ";"
"""Separates the specs in MSGBUS_RETENTION; commas already separate the rules of one spec."""


@dataclass(frozen=True, slots=True)
class _Option:
    """Where one flag's value comes from when it is not on the command line."""

    action: argparse.Action
    env: str
    default: Any
    kind: ValueKind
    is_path: bool

    @property
    def flag(self) -> str:
        return self.action.option_strings[0]

    @property
    def key(self) -> str:
        """The flag's key in the configuration file: its long name without the dashes."""
        return self.flag.removeprefix("--")


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (no usage dump) with exit status 2.

    Flags added with `option` are layered: the command line, then their MSGBUS_* variable, then
    the configuration file, then the default. They parse to None when absent, so `resolve`
    can tell an absent flag from one given with the default's value.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options: list[_Option] = []

    def error(self, message: str) -> NoReturn:
        fail(message)

    def option(
        self,
        flag: str,
        *,
        env: str,
        default: Any = None,
        is_path: bool = False,
        kind: ValueKind | None = None,
        **kwargs: Any,
    ) -> None:
        """Add a layered flag; `env` is its variable.

        The file's `kind` comes from `action`/`type` unless given (a size or retention).
        """
        help_text = kwargs.pop("help", None)
        kwargs["help"] = f"{help_text} (env {env})" if help_text else f"env {env}"
        # default=None also for --x/--no-x switches, so an absent one is told from a given one.
        action = self.add_argument(flag, default=None, **kwargs)
        self.options.append(_Option(action, env, default, kind or _kind_of(kwargs), is_path))

    def resolve(self, args: argparse.Namespace, config_path: str | None) -> dict[str, str]:
        """Fill every absent flag from its variable, the file or its default, in that order.

        Returns, for each value that did not come from the command line or a default, where it
        came from (a variable or the file), so that a bad value can be traced to its source.
        """
        keys = {option.key: FileKey(option.kind, option.is_path) for option in self.options}
        in_file = load_config_file(config_path, keys) if config_path else {}
        origins: dict[str, str] = {}
        for option in self.options:
            dest = option.action.dest
            if getattr(args, dest) is not None:
                continue
            text = _env(option.env)
            if text is not None:
                value = _from_text(option, text, f"{option.flag} ({option.env})")
                origins[dest] = option.env
            elif option.key in in_file:
                value = in_file[option.key]
                if isinstance(value, str):  # typed by the file; converted and checked like text
                    value = _from_text(option, value, f"{config_path}: {option.key}")
                origins[dest] = str(config_path)
            else:
                value = option.default
            setattr(args, dest, value)
        return origins


def _kind_of(kwargs: dict[str, Any]) -> ValueKind:
    """The file type of a flag, from how argparse parses it."""
    if kwargs.get("action") in ("store_true", argparse.BooleanOptionalAction):
        return "boolean"
    if kwargs.get("action") == "append":
        return "strings"
    return "integer" if kwargs.get("type") is int else "string"


def _from_text(option: _Option, text: str, source: str) -> Any:
    """Convert a variable's or the file's text as argparse converts the flag's."""
    if option.kind == "boolean" and isinstance(option.action, argparse.BooleanOptionalAction):
        return _switch(text, source)
    if option.kind == "boolean":
        return _truthy(text)
    if option.kind == "strings":
        return [text]
    if option.kind in ("retention", "max-attempts"):
        return [spec.strip() for spec in text.split(RETENTION_ENV_SEPARATOR) if spec.strip()]
    convert = option.action.type if callable(option.action.type) else str
    try:
        value = convert(text)
    except ValueError:
        raise ConfigError(f"{source}: invalid {option.kind} value {text!r}") from None
    choices = option.action.choices
    if choices is not None and value not in choices:
        allowed = ", ".join(str(choice) for choice in choices)
        raise ConfigError(f"{source}: invalid choice {text!r} (choose from {allowed})")
    return value


def fail(message: str) -> NoReturn:
    """Print one configuration error line and exit 2.

    Messages from libraries can span lines (DuckDB's do); they are joined so the promise of
    one line holds whatever the cause.
    """
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    sys.stderr.write(f"msgbusd: error: {line}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_CONFIG)


def _env(name: str) -> str | None:
    """The variable's value; an empty variable counts as unset."""
    return os.environ.get(name) or None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def _switch(text: str, source: str) -> bool:
    """A variable for an on-by-default switch, read strictly.

    The older off-by-default flags read anything but a truthy word as off, their default; here
    a typo would silently turn the setting off, so only the listed words are taken.
    """
    word = text.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ConfigError(
        f"{source}: invalid boolean value {text!r} (use 1/0, true/false, yes/no or on/off)"
    )


def build_parser() -> _Parser:
    """The msgbusd argument parser; `_Parser.resolve` fills what the command line leaves out."""
    parser = _Parser(
        prog="msgbusd",
        description="msgbusd: the local msgbus daemon (gRPC msgbus.v1 on 127.0.0.1:50051).",
        epilog="Each setting comes from its flag, else its MSGBUS_* variable, else the TOML file "
        'given by --config (keys are the flag names without dashes: listen = "127.0.0.1:50051", '
        'peer = ["host:port"], volatile = true, max-disk-bytes = "2GiB", retention = '
        '["telemetry.*:max-age=7d"] or a [retention."telemetry.*"] table with max-age = "7d"; '
        "relative paths are relative to the file), else the default.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML file with settings by flag name (env MSGBUS_CONFIG); flags and MSGBUS_* "
        "variables win over it",
    )
    add = parser.option
    add(
        "--listen",
        env="MSGBUS_LISTEN",
        default=["127.0.0.1:50051"],
        action="append",
        metavar="IP:PORT|unix:PATH",
        help="where to serve: IP:port, or a Unix socket unix:///run/msgbus/msgbusd.sock; "
        "repeatable and comma-separated (default 127.0.0.1:50051)",
    )
    add(
        "--socket-mode",
        env="MSGBUS_SOCKET_MODE",
        default=f"{DEFAULT_SOCKET_MODE:04o}",
        metavar="MODE",
        help="permission bits of each Unix socket --listen creates "
        f"(default {DEFAULT_SOCKET_MODE:04o}: its user and group)",
    )
    add(
        "--socket-group",
        env="MSGBUS_SOCKET_GROUP",
        metavar="GROUP",
        help="group (name or gid) of each Unix socket --listen creates; default the daemon's",
    )
    add(
        "--data",
        env="MSGBUS_DATA",
        default="./msgbus.sqlite",
        is_path=True,
        help="database file path",
    )
    add(
        "--storage",
        env="MSGBUS_STORAGE",
        default="sqlite",
        help="store backend: any installed msgbus.stores entry point (sqlite, duckdb, ...)",
    )
    add(
        "--peer",
        env="MSGBUS_PEERS",
        default=[],
        action="append",
        metavar="ENDPOINT[=tenant/bl/device]",
        help="peer to pull from; repeatable and comma-separated",
    )
    add(
        "--upstream",
        env="MSGBUS_UPSTREAMS",
        default=[],
        action="append",
        metavar="ENDPOINT[=tenant/bl/device][;push=GLOBS][;pull=GLOBS]",
        help="hub to dial and sync with both ways over that one connection (pull as from a "
        "--peer, push with the Push RPC); repeatable and comma-separated",
    )
    add(
        "--push-topics",
        env="MSGBUS_PUSH_TOPICS",
        default="",
        metavar="GLOBS",
        help="topic globs pushed to each --upstream without its own ;push= (default: every "
        "log this node holds)",
    )
    add(
        "--pull-topics",
        env="MSGBUS_PULL_TOPICS",
        default="",
        metavar="GLOBS",
        help="topic globs pulled from each --peer and --upstream without its own ;pull= "
        "(default: everything)",
    )
    add(
        "--accept-relayed",
        env="MSGBUS_ACCEPT_RELAYED",
        default=False,
        action="store_true",
        help="take pushed logs of other origins than the pusher's own (devices that relay "
        "others); without a policy only a pusher's own logs are taken",
    )
    add(
        "--no-push-service",
        env="MSGBUS_NO_PUSH_SERVICE",
        default=False,
        action="store_true",
        help="answer the Push RPC UNIMPLEMENTED, as an original daemon does",
    )
    add("--peer-tls-ca", env="MSGBUS_PEER_TLS_CA", is_path=True, help="PEM CA for peer connections")
    add("--peer-tls-cert", env="MSGBUS_PEER_TLS_CERT", is_path=True, help="peer client certificate")
    add("--peer-tls-key", env="MSGBUS_PEER_TLS_KEY", is_path=True, help="peer client key")
    add("--peer-tls-domain", env="MSGBUS_PEER_TLS_DOMAIN", help="TLS name override")
    add("--tls-cert", env="MSGBUS_TLS_CERT", is_path=True, help="server certificate (PEM)")
    add("--tls-key", env="MSGBUS_TLS_KEY", is_path=True, help="server private key (PEM)")
    add(
        "--tls-client-ca",
        env="MSGBUS_TLS_CLIENT_CA",
        is_path=True,
        help="CA for client certificates; turns on mTLS (client certificates required)",
    )
    add("--sync-interval-ms", env="MSGBUS_SYNC_INTERVAL_MS", default=1000, type=int)
    add(
        "--sync-batch-limit",
        env="MSGBUS_SYNC_BATCH_LIMIT",
        default=None,
        type=int,
        help="messages per sync batch (at least 1); by default each log's batches adapt to the "
        "link: they grow while Fetch round trips stay fast and shrink on slow links, within "
        "10,000 messages and 8 MiB",
    )
    add(
        "--sync-response-idle-ms",
        env="MSGBUS_SYNC_RESPONSE_IDLE_MS",
        default=int(DEFAULT_RESPONSE_IDLE_TIMEOUT_S * 1000),
        type=int,
        help="how long a sync Fetch from a peer may go without a response before the log's "
        "transfer stops, keeps what arrived and resumes later with half the batch (default "
        "30000; raise it on a slow link)",
    )
    add("--tenant-id", env="MSGBUS_TENANT_ID", default="tenant")
    add("--bl-name", env="MSGBUS_BL_NAME", default="default")
    add("--device-id", env="MSGBUS_DEVICE_ID", default="device")
    add(
        "--max-payload-bytes",
        env="MSGBUS_MAX_PAYLOAD_BYTES",
        default=DEFAULT_MAX_PAYLOAD_BYTES,
        type=int,
        help="largest accepted payload, from clients and from peers (default 1 MiB, at most "
        f"{MAX_PAYLOAD_LIMIT}: what the SDK and peers receive)",
    )
    add(
        "--max-streams-per-connection",
        env="MSGBUS_MAX_STREAMS_PER_CONNECTION",
        default=DEFAULT_MAX_STREAMS_PER_CONNECTION,
        type=int,
        help=f"concurrent calls one client connection may have open "
        f"(default {DEFAULT_MAX_STREAMS_PER_CONNECTION})",
    )
    add(
        "--max-read-bytes-in-flight",
        env="MSGBUS_MAX_READ_BYTES_IN_FLIGHT",
        default=DEFAULT_MAX_READ_BYTES_IN_FLIGHT,
        type=int,
        help="bytes all Fetch and Subscribe streams together may have read and not yet sent; "
        "readers wait beyond it (default 16 MiB)",
    )
    add(
        "--log-format",
        env="MSGBUS_LOG_FORMAT",
        default="text",
        choices=LOG_FORMATS,
        help="text or json lines on stderr",
    )
    add("--log-level", env="MSGBUS_LOG_LEVEL", default="info", type=str.lower, choices=LOG_LEVELS)
    add(
        "--allow-insecure",
        env="MSGBUS_ALLOW_INSECURE",
        default=False,
        action="store_true",
        help="allow plaintext gRPC on a non-loopback address",
    )
    add(
        "--policy",
        env="MSGBUS_POLICY",
        kind="policy",
        is_path=True,
        metavar="PATH",
        help="TOML file whose [policy] table says who may do what (README: Authorization); "
        "default: the [policy] table of the --config file, if any; SIGHUP reads it again",
    )
    add(
        "--allow-anyone",
        env="MSGBUS_ALLOW_ANYONE",
        default=False,
        action="store_true",
        help="serve a non-loopback listener without a policy: every caller that reaches it "
        "may do everything",
    )
    add(
        "--volatile",
        env="MSGBUS_VOLATILE",
        default=False,
        action="store_true",
        help="allow a store that keeps nothing on disk (--storage memory): "
        "every message is lost when the daemon stops",
    )
    add(
        "--retention",
        env="MSGBUS_RETENTION",
        default=[],
        action="append",
        kind="retention",
        metavar="PATTERN:RULES",
        help="how much of the logs whose topic matches the glob PATTERN to keep, e.g. "
        "--retention 'telemetry.*:max-age=7d,max-bytes=1GiB'; RULES are comma-separated "
        "max-messages=N, max-age=DURATION (90s, 12h, 7d), max-bytes=SIZE (500MiB, 2GiB); "
        "repeatable: the first matching pattern applies, to each log separately; default: keep "
        f"everything; the variable takes several specs separated by "
        f"'{RETENTION_ENV_SEPARATOR}'",
    )
    add(
        "--max-disk-bytes",
        env="MSGBUS_MAX_DISK_BYTES",
        kind="size",
        metavar="SIZE",
        help="disk budget of the whole daemon, in bytes or with a unit (2GiB, 500MB), at least "
        "1MiB; default: none",
    )
    add(
        "--discard",
        env="MSGBUS_DISCARD",
        default="old",
        choices=DISCARD_POLICIES,
        help="at --max-disk-bytes: old trims the oldest messages first (default), new refuses "
        "writes with RESOURCE_EXHAUSTED",
    )
    add(
        "--retain-unsynced",
        env="MSGBUS_RETAIN_UNSYNCED",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="a message of this node's own origin is not trimmed until a configured peer has "
        "reported holding it; with no peer configured it has no effect (default on)",
    )
    add(
        "--no-recover",
        env="MSGBUS_NO_RECOVER",
        default=False,
        action="store_true",
        help="accept writes at once on a new store (one that did not exist or was empty, or "
        "--volatile) instead of first recovering this node's own logs from every configured "
        "peer; a node that lost its database then publishes heads its peers already hold, "
        "which they record as a conflict",
    )
    add(
        "--metrics-listen",
        env="MSGBUS_METRICS_LISTEN",
        metavar="IP:PORT",
        help="serve Prometheus metrics (/metrics) and the status page (/status, /status.json) "
        "over HTTP on this address; default: off. With --tls-cert/--tls-key it serves HTTPS "
        "with them (and requires client certificates with --tls-client-ca); plaintext on a "
        "non-loopback address needs --allow-insecure, as for --listen",
    )
    add(
        "--metrics-max-logs",
        env="MSGBUS_METRICS_MAX_LOGS",
        default=DEFAULT_METRICS_MAX_LOGS,
        type=int,
        help="how many of the busiest logs, and of the deepest FIFO queues, get metric series "
        "of their own; the others only count in the totals (default "
        f"{DEFAULT_METRICS_MAX_LOGS}, at most {MAX_METRICS_MAX_LOGS})",
    )
    add(
        "--dedup-window",
        env="MSGBUS_DEDUP_WINDOW",
        default="24h",
        metavar="DURATION",
        help="how long a publish's idempotency key is remembered, so that a repeat answers "
        "the message stored the first time and stores nothing (90s, 12h, 7d; default 24h)",
    )
    add(
        "--dedup-max-keys",
        env="MSGBUS_DEDUP_MAX_KEYS",
        default=DEFAULT_MAX_KEYS,
        type=int,
        help="the most idempotency keys remembered; beyond it the oldest are forgotten first, "
        f"even within --dedup-window (default {DEFAULT_MAX_KEYS}, at most {MAX_DEDUP_KEYS})",
    )
    add(
        "--max-cursors",
        env="MSGBUS_MAX_CURSORS",
        default=DEFAULT_MAX_CURSORS,
        type=int,
        help="the most durable named cursors this daemon keeps; committing one more is "
        f"refused with RESOURCE_EXHAUSTED (default {DEFAULT_MAX_CURSORS}, at most "
        f"{MAX_CURSORS_LIMIT})",
    )
    add(
        "--fifo-max-attempts",
        env="MSGBUS_FIFO_MAX_ATTEMPTS",
        default=[],
        action="append",
        kind="max-attempts",
        metavar="PATTERN=N",
        help="failed attempts (rejects and expired leases) a FIFO message of the queues whose "
        "name matches the glob PATTERN may have before it moves to the dead-letter queue "
        "QUEUE.dead, e.g. --fifo-max-attempts 'jobs.*=5'; repeatable: the first matching "
        "pattern applies; default: no limit; the variable takes several specs separated by "
        f"'{RETENTION_ENV_SEPARATOR}'",
    )
    return parser


def parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    """Parse `IP:port` or `[IPv6]:port`; host names are rejected, as in the original.

    Errors name `flag`, the setting the address came from.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{flag}: expected IP:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{flag}: {host!r} is not an IP address (expected IP:port)") from None
    if isinstance(address, ipaddress.IPv6Address) and not value.startswith("["):
        raise ConfigError(f"{flag}: write IPv6 addresses as [addr]:port, got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{flag}: port must be 0..65535, got {port_text!r}")
    return str(address), int(port_text)


def _peer_values(args: argparse.Namespace, name: str = "peer") -> list[str]:
    raw: list[str] = getattr(args, name)
    return [part.strip() for value in raw for part in value.split(",") if part.strip()]


def _endpoint_specs(args: argparse.Namespace, name: str) -> tuple[PeerSpec, ...]:
    """The `--peer` or `--upstream` specs, with the default topic filters for those without."""
    flag = f"--{name}"
    try:
        push = parse_topic_globs(args.push_topics, "--push-topics")
        pull = parse_topic_globs(args.pull_topics, "--pull-topics")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        return tuple(
            parse_peer_spec(value, push=push, pull=pull) for value in _peer_values(args, name)
        )
    except (ValueError, MsgbusError) as error:
        raise ConfigError(f"{flag}: {error}") from None


_FLAG = re.compile(r"--([a-z][a-z-]*)")


def parse_config(argv: Sequence[str] | None = None) -> DaemonConfig:
    """Parse flags, environment and the `--config` file into a validated `DaemonConfig`.

    Raises `ConfigError`. An invalid value that came from a variable or the file says so.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    origins = parser.resolve(args, args.config or _env("MSGBUS_CONFIG"))
    try:
        return _validated(args)
    except ConfigError as error:
        message = str(error)
        # The first flag a message names is the setting it is about.
        named = _FLAG.search(message)
        origin = origins.get(named.group(1).replace("-", "_")) if named else None
        if origin is None:
            raise
        raise ConfigError(f"{message} (from {origin})") from None


def _validated(args: argparse.Namespace) -> DaemonConfig:
    try:
        node = NodeId(
            validate_node_part("--tenant-id", args.tenant_id),
            validate_node_part("--bl-name", args.bl_name),
            validate_node_part("--device-id", args.device_id),
        )
    except MsgbusError as error:
        raise ConfigError(f"invalid local node id: {error}") from None
    listeners = _listeners(args)
    tcp = [listener for listener in listeners if isinstance(listener, TcpListener)]
    host, port = (tcp[0].host, tcp[0].port) if tcp else ("", 0)
    if not 1 <= args.max_payload_bytes <= MAX_PAYLOAD_LIMIT:
        raise ConfigError(
            f"--max-payload-bytes must be between 1 and {MAX_PAYLOAD_LIMIT} (64 MiB, what the "
            f"SDK and peers receive, less room for headers and envelope), "
            f"got {args.max_payload_bytes}"
        )
    if not 1 <= args.max_streams_per_connection <= MAX_STREAMS_LIMIT:
        raise ConfigError(
            f"--max-streams-per-connection must be between 1 and {MAX_STREAMS_LIMIT}, "
            f"got {args.max_streams_per_connection}"
        )
    if not 1 <= args.sync_response_idle_ms <= MAX_SYNC_RESPONSE_IDLE_MS:
        raise ConfigError(
            f"--sync-response-idle-ms must be between 1 and {MAX_SYNC_RESPONSE_IDLE_MS} (the "
            f"deadline of one whole Fetch stream), got {args.sync_response_idle_ms}"
        )
    if args.max_read_bytes_in_flight < 1:
        raise ConfigError(
            f"--max-read-bytes-in-flight must be at least 1, got {args.max_read_bytes_in_flight}"
        )
    if not args.data:
        raise ConfigError("--data must not be empty")
    if args.storage in SERVER_STORES and not is_connection_string(args.data):
        raise ConfigError(
            f"--data: the {args.storage} store takes a connection string "
            "(postgresql://user@host:port/db, or postgresql:// for the libpq environment "
            f"variables PGHOST, PGDATABASE, ...), got {args.data!r}"
        )
    if args.storage in VOLATILE_STORES and not args.volatile:
        raise ConfigError(
            f"--storage {args.storage} keeps nothing on disk: it would acknowledge publishes "
            "that the next restart loses; pass --volatile (MSGBUS_VOLATILE=1) to run a "
            "volatile daemon anyway"
        )
    tls = load_server_tls(args.tls_cert, args.tls_key, args.tls_client_ca)
    exposed = exposed_listeners(listeners)
    if tls is None and not args.allow_insecure and exposed:
        raise ConfigError(
            f"refusing plaintext gRPC on non-loopback address {exposed[0].address}: "
            "configure --tls-cert/--tls-key, or pass --allow-insecure"
        )
    peers = _endpoint_specs(args, "peer")
    upstreams = _endpoint_specs(args, "upstream")
    try:
        peer_tls = PeerTlsConfig.from_paths(
            args.peer_tls_ca, args.peer_tls_cert, args.peer_tls_key, args.peer_tls_domain
        )
    except (ValueError, OSError) as error:
        raise ConfigError(str(error)) from None
    retention = _retention_policy(args.retention)
    max_disk_bytes = _disk_budget(args.max_disk_bytes)
    policy_source = _policy_source(args)
    policy = policy_source.load() if policy_source is not None else None
    if peer_tls is not None and policy is not None:
        # One rule for how a certificate names a node: callers' and pinned peers' alike.
        peer_tls = dataclasses.replace(peer_tls, certificate_identity=policy.certificate_identity)
    if policy is None and exposed and not args.allow_anyone:
        raise ConfigError(
            f"refusing to serve {exposed[0].address} without an authorization policy: every "
            "caller that reaches it could read, write and delete every log; give a [policy] "
            "(--config or --policy, see the README's Authorization), or pass --allow-anyone"
        )
    metrics_host, metrics_port = _metrics_listener(args, tls, (host, port))
    if (
        metrics_host is not None
        and not ipaddress.ip_address(metrics_host).is_loopback
        and policy is None
        and not args.allow_anyone
    ):
        # The same rule as for --listen: an exposed port needs a policy, or an explicit opt-in.
        raise ConfigError(
            f"--metrics-listen: refusing to serve {args.metrics_listen} without an "
            "authorization policy: every caller that reaches it could read the names and "
            "sizes of every log and queue; give a [policy], or pass --allow-anyone"
        )
    if not 0 <= args.metrics_max_logs <= MAX_METRICS_MAX_LOGS:
        raise ConfigError(
            f"--metrics-max-logs must be between 0 and {MAX_METRICS_MAX_LOGS}, "
            f"got {args.metrics_max_logs}"
        )
    dedup_window_ms = parse_duration_ms(args.dedup_window, "--dedup-window")
    if not 1 <= args.dedup_max_keys <= MAX_DEDUP_KEYS:
        raise ConfigError(
            f"--dedup-max-keys must be between 1 and {MAX_DEDUP_KEYS}, got {args.dedup_max_keys}"
        )
    if not 1 <= args.max_cursors <= MAX_CURSORS_LIMIT:
        raise ConfigError(
            f"--max-cursors must be between 1 and {MAX_CURSORS_LIMIT}, got {args.max_cursors}"
        )
    try:
        fifo_max_attempts = max_attempts_of(args.fifo_max_attempts)
    except ValueError as error:
        raise ConfigError(str(error)) from None

    return DaemonConfig(
        node=node,
        listen_host=host,
        listen_port=port,
        data=args.data,
        storage=args.storage,
        peers=peers,
        upstreams=upstreams,
        accept_relayed=args.accept_relayed,
        push_service=not args.no_push_service,
        peer_tls=peer_tls,
        tls=tls,
        sync_interval_s=max(args.sync_interval_ms, 100) / 1000.0,
        sync_batch_limit=(None if args.sync_batch_limit is None else max(args.sync_batch_limit, 1)),
        sync_response_idle_s=args.sync_response_idle_ms / 1000.0,
        max_payload_bytes=args.max_payload_bytes,
        max_streams_per_connection=args.max_streams_per_connection,
        max_read_bytes_in_flight=args.max_read_bytes_in_flight,
        log_format=args.log_format,
        log_level=args.log_level,
        allow_insecure=args.allow_insecure,
        volatile=args.storage in VOLATILE_STORES,
        retention=retention,
        max_disk_bytes=max_disk_bytes,
        discard=args.discard,
        retain_unsynced=args.retain_unsynced,
        recover=not args.no_recover,
        listeners=listeners,
        policy=policy,
        policy_source=policy_source,
        allow_anyone=args.allow_anyone,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        metrics_max_logs=args.metrics_max_logs,
        max_cursors=args.max_cursors,
        fifo_max_attempts=fifo_max_attempts,
        dedup_window_ms=dedup_window_ms,
        dedup_max_keys=args.dedup_max_keys,
    )


def _metrics_listener(
    args: argparse.Namespace, tls: ServerTls | None, grpc_listener: tuple[str, int]
) -> tuple[str | None, int]:
    """--metrics-listen as (host, port), (None, 0) when off; under --listen's TLS rule."""
    if not args.metrics_listen:
        return None, 0
    host, port = parse_listen(args.metrics_listen, "--metrics-listen")
    if tls is None and not args.allow_insecure and not ipaddress.ip_address(host).is_loopback:
        raise ConfigError(
            f"--metrics-listen: refusing plaintext HTTP on non-loopback address "
            f"{args.metrics_listen}: configure --tls-cert/--tls-key (the metrics and status "
            "listener then serves HTTPS with them), or pass --allow-insecure"
        )
    if port and (host, port) == grpc_listener:
        raise ConfigError(
            f"--metrics-listen: {args.metrics_listen} is the gRPC --listen address; "
            "give the metrics and status listener a port of its own"
        )
    return host, port


def _listeners(args: argparse.Namespace) -> tuple[Listener, ...]:
    """Every --listen value (repeatable, comma-separated).

    Those another listener already serves are dropped (`listeners.without_covered`).
    """
    raw: list[str] = args.listen
    values = [part.strip() for value in raw for part in value.split(",") if part.strip()]
    if not values:
        raise ConfigError("--listen must name at least one address")
    mode = parse_socket_mode(args.socket_mode)
    group = parse_socket_group(args.socket_group) if args.socket_group else None
    listeners: list[Listener] = []
    for value in values:
        if value.startswith(UNIX_PREFIX):
            listeners.append(parse_unix_listener(value, mode, group))
        else:
            listeners.append(TcpListener(*parse_listen(value)))
    return without_covered(listeners)


def _policy_source(args: argparse.Namespace) -> PolicySource | None:
    """Where the policy comes from: --policy's file, else the --config file's [policy]."""
    if isinstance(args.policy, str):
        if not args.policy:
            raise ConfigError("--policy must not be empty")
        return PolicySource(args.policy)
    config_path = args.config or _env("MSGBUS_CONFIG")
    return PolicySource(config_path, optional=True) if config_path else None


def _retention_policy(specs: list[str] | tuple[RetentionRule, ...]) -> RetentionPolicy:
    """The policy of `--retention` specs, or of the rules the file's tables already hold."""
    rules = tuple(parse_retention(spec) if isinstance(spec, str) else spec for spec in specs)
    try:
        return RetentionPolicy(rules)
    except ConfigError as error:  # a pattern given twice
        raise ConfigError(f"--retention: {error}") from None


def _disk_budget(value: str | int | None) -> int | None:
    """--max-disk-bytes in bytes, from a size string (flag, variable, file) or the file's bytes."""
    if value is None:
        return None
    budget = parse_size(str(value), "--max-disk-bytes")
    if budget < MIN_DISK_BYTES:
        raise ConfigError(
            f"--max-disk-bytes must be at least 1MiB ({MIN_DISK_BYTES} bytes), got {value!r}"
        )
    return budget


def check_bindable(host: str, port: int) -> None:
    """Bind the address once ourselves, for a clear error instead of gRPC's generic one."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # gRPC binds with SO_REUSEADDR too, so a port in TIME_WAIT is not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(f"cannot listen on {host}:{port}: address in use") from None
            raise ConfigError(
                f"cannot listen on {host}:{port}: {error.strerror or error}"
            ) from None


def installed_stores() -> dict[str, Any]:
    """Installed store backends by entry point name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def is_connection_string(data: str) -> bool:
    """True for a database server's URI (`scheme://...`) or libpq `key=value` string."""
    if "://" in data:
        return True
    words = data.split(maxsplit=1)
    return bool(words) and "=" in words[0]


def shown_location(data: str) -> str:
    """`--data` as errors and logs may show it: a connection string without its password."""
    if not is_connection_string(data):
        return data
    if "://" in data:
        parts = urllib.parse.urlsplit(data)
        if parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            user = urllib.parse.quote(parts.username or "", safe="")
            data = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
        # A password may also be a query parameter (`?password=...`).
        return re.sub(r"(password=)[^&]*", r"\1***", data)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", data)


def store_is_new(config: DaemonConfig) -> bool:
    """True when the store holds nothing of an earlier run (call it before `open_store`).

    A volatile store is always new; a file store is new when its file does not exist or is
    empty.
    """
    if config.volatile:
        return True
    try:
        return os.path.getsize(config.data) == 0
    except FileNotFoundError:
        return True
    except OSError:
        return False  # not ours to judge: opening the store reports the problem


def open_store(storage: str, path: str) -> MsgbusStore:
    """Open the named backend; any failure is a `ConfigError` naming the store and path."""
    stores = installed_stores()
    entry = stores.get(storage)
    if entry is None:
        names = ", ".join(sorted(stores)) or "none"
        raise ConfigError(f"--storage: unknown store {storage!r}; installed stores: {names}")
    try:
        factory = entry.load()
    except Exception as error:
        raise ConfigError(f"--storage {storage}: cannot load the store package: {error}") from None
    shown = shown_location(path)
    try:
        store: MsgbusStore = factory.open(path)
    except MsgbusError as error:
        raise ConfigError(f"cannot open {storage} store at {shown}: {error}") from None
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise ConfigError(f"cannot open {storage} store at {shown}: {reason}") from None
    return store


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `msgbusd`."""
    try:
        config = parse_config(argv)
    except ConfigError as error:
        fail(str(error))

    from msgbus_server.daemon import run  # imports grpc: keep `--help` and errors fast
    from msgbus_server.logs import setup_logging

    setup_logging(config.log_format, config.log_level)
    try:
        # Before opening the store: a taken port must not create or recover a database.
        for listener in config.served:
            if isinstance(listener, UnixListener):
                check_unix_listener(listener)
            else:
                check_bindable(listener.host, listener.port)
        if config.metrics_host is not None:
            try:
                check_bindable(config.metrics_host, config.metrics_port)
            except ConfigError as error:
                raise ConfigError(f"--metrics-listen: {error}") from None
        opening = time.monotonic()
        fresh_store = store_is_new(config)
        store = open_store(config.storage, config.data)
        # A store in a database server knows whether this open created its schema; a file
        # store's file said so before the open.
        created = getattr(store, "created", None)
        if isinstance(created, bool):
            fresh_store = created
        logger = logging.getLogger("msgbus_server.cli")
        # Opening includes crash recovery (WAL replay), which the daemon's own "startup" figure
        # does not: operators and the crash tests read both.
        logger.info(
            "opened the %s store %s in %.0f ms",
            config.storage,
            shown_location(config.data),
            (time.monotonic() - opening) * 1000,
        )
        if config.volatile:
            logger.warning(
                "VOLATILE daemon: the %s store keeps every message, FIFO queue and sync state "
                "in process memory only; nothing survives a restart or a crash",
                config.storage,
            )
        code = run(config, store, fresh_store=fresh_store)
    except ConfigError as error:
        fail(str(error))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(code)
