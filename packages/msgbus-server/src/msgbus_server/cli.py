"""The `msgbusd` command line.

Every flag of the original daemon keeps its name and environment variable; a flag on the command
line wins over its variable. Every configuration error is ONE line on stderr and exit status 2:
operators should never have to read a traceback to learn that a path is wrong.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import socket
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, NoReturn

from msgbus_core.errors import MsgbusError
from msgbus_core.limits import DEFAULT_MAX_PAYLOAD_BYTES, MAX_PAYLOAD_LIMIT
from msgbus_core.model import NodeId
from msgbus_core.store import ENTRY_POINT_GROUP, MsgbusStore
from msgbus_core.validation import validate_node_part
from msgbus_server.config import (
    DEFAULT_MAX_READ_BYTES_IN_FLIGHT,
    DEFAULT_MAX_STREAMS_PER_CONNECTION,
    ConfigError,
    DaemonConfig,
)
from msgbus_server.logs import LOG_FORMATS, LOG_LEVELS
from msgbus_server.peers import PeerTlsConfig, parse_peer_spec
from msgbus_server.tls import load_server_tls

EXIT_CONFIG = 2
MAX_STREAMS_LIMIT = 2**31 - 1
"""Upper bound for --max-streams-per-connection: gRPC takes it as a C int."""
VOLATILE_STORES = frozenset({"memory"})
"""Stores that keep nothing on disk. A daemon on one would acknowledge publishes that the next
restart loses, so it starts only when the operator asks for that with --volatile."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (no usage dump) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    """Print one configuration error line and exit 2.

    Messages from libraries can span lines (DuckDB's do); they are joined so the promise of
    one line holds whatever the cause.
    """
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    sys.stderr.write(f"msgbusd: error: {line}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_CONFIG)


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    """The msgbusd argument parser, with defaults taken from MSGBUS_* variables."""
    parser = _Parser(
        prog="msgbusd",
        description="msgbusd: the local msgbus daemon (gRPC msgbus.v1 on 127.0.0.1:50051).",
    )
    add = parser.add_argument
    add("--listen", default=_env("MSGBUS_LISTEN", "127.0.0.1:50051"), help="IP:port to serve on")
    add("--data", default=_env("MSGBUS_DATA", "./msgbus.sqlite"), help="database file path")
    add(
        "--storage",
        default=_env("MSGBUS_STORAGE", "sqlite"),
        help="store backend: any installed msgbus.stores entry point (sqlite, duckdb, ...)",
    )
    add(
        "--peer",
        action="append",
        default=None,
        metavar="ENDPOINT[=tenant/bl/device]",
        help="peer to pull from; repeatable and comma-separated (env MSGBUS_PEERS)",
    )
    add("--peer-tls-ca", default=_env("MSGBUS_PEER_TLS_CA"), help="PEM CA for peer connections")
    add("--peer-tls-cert", default=_env("MSGBUS_PEER_TLS_CERT"), help="peer client certificate")
    add("--peer-tls-key", default=_env("MSGBUS_PEER_TLS_KEY"), help="peer client key")
    add("--peer-tls-domain", default=_env("MSGBUS_PEER_TLS_DOMAIN"), help="TLS name override")
    add("--tls-cert", default=_env("MSGBUS_TLS_CERT"), help="server certificate (PEM)")
    add("--tls-key", default=_env("MSGBUS_TLS_KEY"), help="server private key (PEM)")
    add(
        "--tls-client-ca",
        default=_env("MSGBUS_TLS_CLIENT_CA"),
        help="CA for client certificates; turns on mTLS (client certificates required)",
    )
    add("--sync-interval-ms", type=int, default=_env("MSGBUS_SYNC_INTERVAL_MS", "1000"))
    add("--sync-batch-limit", type=int, default=_env("MSGBUS_SYNC_BATCH_LIMIT", "100"))
    add("--tenant-id", default=_env("MSGBUS_TENANT_ID", "tenant"))
    add("--bl-name", default=_env("MSGBUS_BL_NAME", "default"))
    add("--device-id", default=_env("MSGBUS_DEVICE_ID", "device"))
    add(
        "--max-payload-bytes",
        type=int,
        default=_env("MSGBUS_MAX_PAYLOAD_BYTES", str(DEFAULT_MAX_PAYLOAD_BYTES)),
        help="largest accepted payload, from clients and from peers (default 1 MiB, at most "
        f"{MAX_PAYLOAD_LIMIT}: what the SDK and peers receive)",
    )
    add(
        "--max-streams-per-connection",
        type=int,
        default=_env("MSGBUS_MAX_STREAMS_PER_CONNECTION", str(DEFAULT_MAX_STREAMS_PER_CONNECTION)),
        help=f"concurrent calls one client connection may have open "
        f"(default {DEFAULT_MAX_STREAMS_PER_CONNECTION})",
    )
    add(
        "--max-read-bytes-in-flight",
        type=int,
        default=_env("MSGBUS_MAX_READ_BYTES_IN_FLIGHT", str(DEFAULT_MAX_READ_BYTES_IN_FLIGHT)),
        help="bytes all Fetch and Subscribe streams together may have read and not yet sent; "
        "readers wait beyond it (default 16 MiB)",
    )
    add(
        "--log-format",
        choices=LOG_FORMATS,
        default=_env("MSGBUS_LOG_FORMAT", "text"),
        help="text or json lines on stderr",
    )
    add(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=_env("MSGBUS_LOG_LEVEL", "info"),
    )
    add(
        "--allow-insecure",
        action="store_true",
        default=_truthy(_env("MSGBUS_ALLOW_INSECURE")),
        help="allow plaintext gRPC on a non-loopback address",
    )
    add(
        "--volatile",
        action="store_true",
        default=_truthy(_env("MSGBUS_VOLATILE")),
        help="allow a store that keeps nothing on disk (--storage memory): "
        "every message is lost when the daemon stops",
    )
    return parser


def parse_listen(value: str) -> tuple[str, int]:
    """Parse `IP:port` or `[IPv6]:port`; host names are rejected, as in the original."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--listen: expected IP:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"--listen: {host!r} is not an IP address (expected IP:port)") from None
    if isinstance(address, ipaddress.IPv6Address) and not value.startswith("["):
        raise ConfigError(f"--listen: write IPv6 addresses as [addr]:port, got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen: port must be 0..65535, got {port_text!r}")
    return str(address), int(port_text)


def _peer_values(args: argparse.Namespace) -> list[str]:
    raw: list[str] = args.peer if args.peer else [_env("MSGBUS_PEERS", "") or ""]
    return [part.strip() for value in raw for part in value.split(",") if part.strip()]


def parse_config(argv: Sequence[str] | None = None) -> DaemonConfig:
    """Parse flags and environment into a validated `DaemonConfig` (or raise `ConfigError`)."""
    args = build_parser().parse_args(argv)
    try:
        node = NodeId(
            validate_node_part("--tenant-id", args.tenant_id),
            validate_node_part("--bl-name", args.bl_name),
            validate_node_part("--device-id", args.device_id),
        )
    except MsgbusError as error:
        raise ConfigError(f"invalid local node id: {error}") from None
    host, port = parse_listen(args.listen)
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
    if args.max_read_bytes_in_flight < 1:
        raise ConfigError(
            f"--max-read-bytes-in-flight must be at least 1, got {args.max_read_bytes_in_flight}"
        )
    if not args.data:
        raise ConfigError("--data must not be empty")
    if args.storage in VOLATILE_STORES and not args.volatile:
        raise ConfigError(
            f"--storage {args.storage} keeps nothing on disk: it would acknowledge publishes "
            "that the next restart loses; pass --volatile (MSGBUS_VOLATILE=1) to run a "
            "volatile daemon anyway"
        )
    tls = load_server_tls(args.tls_cert, args.tls_key, args.tls_client_ca)
    if tls is None and not args.allow_insecure and not ipaddress.ip_address(host).is_loopback:
        raise ConfigError(
            f"refusing plaintext gRPC on non-loopback address {args.listen}: "
            "configure --tls-cert/--tls-key, or pass --allow-insecure"
        )
    try:
        peers = tuple(parse_peer_spec(value) for value in _peer_values(args))
    except (ValueError, MsgbusError) as error:
        raise ConfigError(f"--peer: {error}") from None
    try:
        peer_tls = PeerTlsConfig.from_paths(
            args.peer_tls_ca, args.peer_tls_cert, args.peer_tls_key, args.peer_tls_domain
        )
    except (ValueError, OSError) as error:
        raise ConfigError(str(error)) from None

    return DaemonConfig(
        node=node,
        listen_host=host,
        listen_port=port,
        data=args.data,
        storage=args.storage,
        peers=peers,
        peer_tls=peer_tls,
        tls=tls,
        sync_interval_s=max(args.sync_interval_ms, 100) / 1000.0,
        sync_batch_limit=max(args.sync_batch_limit, 1),
        max_payload_bytes=args.max_payload_bytes,
        max_streams_per_connection=args.max_streams_per_connection,
        max_read_bytes_in_flight=args.max_read_bytes_in_flight,
        log_format=args.log_format,
        log_level=args.log_level,
        allow_insecure=args.allow_insecure,
        volatile=args.storage in VOLATILE_STORES,
    )


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
    try:
        store: MsgbusStore = factory.open(path)
    except MsgbusError as error:
        raise ConfigError(f"cannot open {storage} store at {path}: {error}") from None
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise ConfigError(f"cannot open {storage} store at {path}: {reason}") from None
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
        check_bindable(config.listen_host, config.listen_port)
        opening = time.monotonic()
        store = open_store(config.storage, config.data)
        logger = logging.getLogger("msgbus_server.cli")
        # Opening includes crash recovery (WAL replay), which the daemon's own "startup" figure
        # does not: operators and the crash tests read both.
        logger.info(
            "opened the %s store %s in %.0f ms",
            config.storage,
            config.data,
            (time.monotonic() - opening) * 1000,
        )
        if config.volatile:
            logger.warning(
                "VOLATILE daemon: the %s store keeps every message, FIFO queue and sync state "
                "in process memory only; nothing survives a restart or a crash",
                config.storage,
            )
        code = run(config, store)
    except ConfigError as error:
        fail(str(error))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(code)
