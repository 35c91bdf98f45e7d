"""The `msgbus` command: talk to a msgbus daemon from a shell.

Exit status:
    0    success (also: `subscribe` and `top` stopped with Ctrl-C)
    1    the daemon answered with an error (invalid argument, permission denied, ...)
    2    usage error: bad flags or arguments, unreadable files, malformed endpoint
    3    the daemon is unreachable (or did not answer in time)
    4    the daemon answered "no": `ready` not ready, `health` not serving, `fifo peek` on an
         empty queue, `fifo ack`/`fifo reject` not accepted
    130  interrupted with Ctrl-C (other than `subscribe`)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, TextIO

from . import _render as render
from ._async_client import AsyncMsgbusClient
from ._config import DEFAULT_ENDPOINT, DEFAULT_TIMEOUT, TOKEN_ENV
from ._convert import node_key, parse_node_id
from ._errors import (
    ConfigurationError,
    DeadlineExceededError,
    MsgbusError,
    UnavailableError,
)
from ._generated.msgbus.v1 import MessageEnvelope, NodeId
from ._idempotency import is_duplicate
from ._subscription import Trim
from ._sync_client import MsgbusClient
from ._tls import TlsConfig

__all__ = ["EXIT_NO", "EXIT_SERVER_ERROR", "EXIT_UNREACHABLE", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_NO = 4
EXIT_INTERRUPTED = 130
TOP_INTERVAL_S = 2.0
"""Seconds between two refreshes of `msgbus top` unless `--interval` says."""
TOP_ROWS = 15
"""Busiest logs `msgbus top` shows unless `--rows` says."""


class _Exit(Exception):
    """Leave with a status and an optional one-line message on stderr."""

    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Io:
    """Where the command writes; injectable so tests can run `main` in-process."""

    def __init__(self, stdout: TextIO, stderr: TextIO, json: bool, raw: bool) -> None:
        self.out = stdout
        self.err = stderr
        self.json = json
        self.raw = raw

    @property
    def binary(self) -> BinaryIO:
        buffer: BinaryIO = self.out.buffer
        return buffer


# -- connection ---------------------------------------------------------------------------------


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    return TlsConfig.from_files(
        ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name
    )


def _endpoint(args: argparse.Namespace) -> str:
    return str(args.endpoint or os.environ.get("MSGBUS_ENDPOINT") or DEFAULT_ENDPOINT)


def _token(args: argparse.Namespace) -> str | None:
    # A token never holds whitespace: strip what `MSGBUS_TOKEN=$(cat file)` and the like leave.
    token = (args.token or os.environ.get(TOKEN_ENV) or "").strip()
    return token or None


@contextlib.contextmanager
def _client(args: argparse.Namespace, origin: NodeId | None = None) -> Iterator[MsgbusClient]:
    client = MsgbusClient.connect(
        _endpoint(args),
        default_origin=origin,
        tls=_tls(args),
        timeout=args.timeout,
        token=_token(args),
    )
    with client:
        yield client


def _origin(value: str | None) -> NodeId | None:
    return parse_node_id(value) if value else None


def _headers(values: Sequence[str] | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"invalid header {item!r}: expected KEY=VALUE")
        headers[key] = value
    return headers


def _payload(args: argparse.Namespace) -> bytes:
    if args.file is not None and args.payload is not None:
        raise ConfigurationError("give the payload as an argument or with --file, not both")
    if args.file is not None:
        if args.file == "-":
            return sys.stdin.buffer.read()
        try:
            with open(args.file, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise ConfigurationError(f"cannot read {args.file!r}: {exc.strerror}") from exc
    if args.payload is None:
        raise ConfigurationError("a payload is required (argument, or --file PATH / --file -)")
    return str(args.payload).encode("utf-8")


# -- output helpers -----------------------------------------------------------------------------


def _show_envelopes(io: _Io, envelopes: Sequence[MessageEnvelope]) -> None:
    if io.raw:
        for env in envelopes:
            io.binary.write(env.payload)
        io.binary.flush()
    elif io.json:
        for env in envelopes:
            render.write_json(io.out, render.envelope_json(env))
    else:
        render.write_table(
            io.out, render.ENVELOPE_COLUMNS, [render.envelope_row(e) for e in envelopes]
        )


# -- subcommands --------------------------------------------------------------------------------


def _cmd_health(args: argparse.Namespace, io: _Io) -> int:
    with _client(args) as bus:
        health = bus.health()
    if io.json:
        render.write_json(io.out, render.health_json(health))
    else:
        io.out.write(f"{health.status}  node={node_key(health.node)}\n")
    return EXIT_OK if health.status == "SERVING" else EXIT_NO


def _cmd_ready(args: argparse.Namespace, io: _Io) -> int:
    with _client(args) as bus:
        ready = bus.ready()
    if io.json:
        render.write_json(io.out, render.ready_json(ready))
    else:
        line = f"{ready.status}  node={node_key(ready.node)}"
        io.out.write(line + (f"  error={ready.error}" if ready.error else "") + "\n")
    return EXIT_OK if ready.ready else EXIT_NO


def _cmd_publish(args: argparse.Namespace, io: _Io) -> int:
    payload = _payload(args)
    headers = _headers(args.header)
    with _client(args, _origin(args.origin)) as bus:
        env = bus.publish(args.topic, payload, headers, idempotency_key=args.idempotency_key)
    duplicate = is_duplicate(env)
    if io.json:
        render.write_json(io.out, {**render.envelope_json(env), "duplicate": duplicate})
    else:
        # A repeated key stored nothing: the line says so, and names the message stored then.
        verb = "duplicate of" if duplicate else "published"
        io.out.write(f"{verb} topic={env.topic} head_id={env.head_id} id={env.id}\n")
    return EXIT_OK


def _cmd_fetch(args: argparse.Namespace, io: _Io) -> int:
    origin = _origin(args.origin)
    with _client(args) as bus:
        if args.all:
            # Page through the whole range with bounded memory; print page by page.
            batch: list[MessageEnvelope] = []
            header_written = False
            for env in bus.iter_fetch(args.topic, origin, args.from_head_id, args.to_head_id):
                batch.append(env)
                if len(batch) == 1000:
                    _show_page(io, batch, header_written)
                    header_written, batch = True, []
            if batch or not header_written:
                _show_page(io, batch, header_written)
        else:
            _show_envelopes(io, bus.fetch(args.topic, origin, args.from_head_id, args.limit))
    return EXIT_OK


def _show_page(io: _Io, batch: list[MessageEnvelope], header_written: bool) -> None:
    if io.raw or io.json:
        _show_envelopes(io, batch)
        return
    # A long range is printed page by page with fixed-width columns, one header in total.
    if not header_written:
        io.out.write(render.stream_line(render.ENVELOPE_COLUMNS))
    for env in batch:
        io.out.write(render.stream_line(render.envelope_row(env)))


def _cmd_subscribe(args: argparse.Namespace, io: _Io) -> int:
    origin = _origin(args.origin)
    count = 0

    def report_trim(trim: Trim) -> None:
        # On stderr, so that --json and --raw output on stdout stays messages only.
        io.err.write(f"msgbus: {trim}; continuing at {trim.first_head_id}\n")
        io.err.flush()

    with _client(args) as bus:
        if not (io.json or io.raw):
            io.out.write(render.stream_line(render.ENVELOPE_COLUMNS))
            io.out.flush()
        subscription = bus.subscribe(
            args.topic,
            origin,
            args.from_head_id,
            args.replay_limit,
            reconnect=not args.no_reconnect,
            on_trim=report_trim,
        )
        with subscription:
            for env in subscription:
                if io.raw:
                    io.binary.write(env.payload)
                    io.binary.flush()
                elif io.json:
                    render.write_json(io.out, render.envelope_json(env))
                else:
                    io.out.write(render.stream_line(render.envelope_row(env)))
                io.out.flush()
                count += 1
                if args.count is not None and count >= args.count:
                    break
    return EXIT_OK


def _cmd_heads(args: argparse.Namespace, io: _Io) -> int:
    with _client(args) as bus:
        if io.json:
            # One line per head as its page arrives: memory stays at one page however many
            # logs the daemon holds. The table needs every row first, for its column widths.
            for head in bus.iter_heads():
                render.write_json(io.out, render.head_json(head))
            return EXIT_OK
        heads = bus.list_heads()
    render.write_table(io.out, render.HEAD_COLUMNS, [render.head_row(h) for h in heads])
    return EXIT_OK


def _cmd_sync_state(args: argparse.Namespace, io: _Io) -> int:
    with _client(args) as bus:
        states = bus.list_peer_sync_states()
    if io.json:
        for state in states:
            render.write_json(io.out, render.sync_state_json(state))
    else:
        rows = [
            [
                s.peer,
                render.sync_direction(s),
                s.topic or "-",
                node_key(s.origin) or "-",
                str(s.local_head),
                str(s.remote_head),
                str(render.sync_lag(s)),
                str(s.last_synced_head),
                render.timestamp(s.last_success_at_ms),
                str(s.consecutive_failures),
                s.last_error or "-",
            ]
            for s in states
        ]
        columns = (
            "PEER",
            "DIRECTION",
            "TOPIC",
            "ORIGIN",
            "LOCAL",
            "REMOTE",
            "LAG",
            "SYNCED",
            "LAST_SUCCESS",
            "FAILURES",
            "LAST_ERROR",
        )
        render.write_table(io.out, columns, rows)
    return EXIT_OK


def _cmd_cursors(args: argparse.Namespace, io: _Io) -> int:
    with _client(args) as bus:
        if io.json:
            # One line per cursor as its page arrives, like `heads`.
            for cursor in bus.iter_cursors(args.name):
                render.write_json(io.out, render.cursor_json(cursor))
            return EXIT_OK
        cursors = bus.list_cursors(args.name)
    render.write_table(io.out, render.CURSOR_COLUMNS, [render.cursor_row(c) for c in cursors])
    return EXIT_OK


def _cmd_cursors_delete(args: argparse.Namespace, io: _Io) -> int:
    with _client(args) as bus:
        deleted = bus.delete_cursor(args.cursor_name, args.topic, _origin(args.origin))
    if io.json:
        render.write_json(io.out, {"deleted_count": deleted})
    else:
        io.out.write(f"deleted={deleted}\n")
    return EXIT_OK


def _cmd_delete(args: argparse.Namespace, io: _Io) -> int:
    with _client(args) as bus:
        deleted = bus.delete_range(
            args.topic, args.from_head_id, args.to_head_id, _origin(args.origin)
        )
    if io.json:
        render.write_json(io.out, {"deleted_count": deleted})
    else:
        io.out.write(f"deleted={deleted}\n")
    return EXIT_OK


def _cmd_fifo_enqueue(args: argparse.Namespace, io: _Io) -> int:
    payload = _payload(args)
    headers = _headers(args.header)
    target = parse_node_id(args.target)
    with _client(args) as bus:
        msg = bus.enqueue_fifo(args.queue, args.topic, target, payload, headers)
    if io.json:
        render.write_json(io.out, render.fifo_json(msg))
    else:
        io.out.write(f"enqueued queue={msg.queue} sequence={msg.sequence} id={msg.id}\n")
    return EXIT_OK


def _cmd_fifo_peek(args: argparse.Namespace, io: _Io) -> int:
    with _client(args) as bus:
        msg = bus.peek_fifo(args.queue)
    if msg is None:
        raise _Exit(EXIT_NO, f"fifo queue {args.queue!r} is empty")
    if io.raw:
        io.binary.write(msg.payload)
        io.binary.flush()
    elif io.json:
        render.write_json(io.out, render.fifo_json(msg))
    else:
        render.write_table(io.out, render.FIFO_COLUMNS, [render.fifo_row(msg)])
    return EXIT_OK


def _fifo_settle(args: argparse.Namespace, io: _Io, verb: str) -> int:
    with _client(args) as bus:
        settle = bus.ack_fifo if verb == "ack" else bus.reject_fifo
        accepted = settle(args.queue, args.message_id)
    if io.json:
        render.write_json(io.out, {"accepted": accepted})
    else:
        io.out.write(f"accepted={'true' if accepted else 'false'}\n")
    if not accepted:
        io.err.write(f"msgbus: {args.message_id} is not the front of {args.queue!r}\n")
    return EXIT_OK if accepted else EXIT_NO


def _cmd_fifo_ack(args: argparse.Namespace, io: _Io) -> int:
    return _fifo_settle(args, io, "ack")


def _cmd_fifo_reject(args: argparse.Namespace, io: _Io) -> int:
    return _fifo_settle(args, io, "reject")


def _cmd_fifo_dead(args: argparse.Namespace, io: _Io) -> int:
    with _client(args) as bus:
        # JSON lines go out a page at a time; a table holds its rows for the column widths.
        dead = bus.iter_fifo(f"{args.queue}.dead", page_size=1_000)
        if io.json:
            for msg in dead:
                render.write_json(io.out, render.fifo_json(msg))
        else:
            render.write_table(
                io.out, render.DEAD_LETTER_COLUMNS, [render.dead_letter_row(m) for m in dead]
            )
    return EXIT_OK


def _cmd_fifo_redrive(args: argparse.Namespace, io: _Io) -> int:
    with _client(args) as bus:
        moved = bus.redrive_fifo(args.queue, args.max_messages)
    if io.json:
        render.write_json(io.out, {"moved": moved})
    else:
        io.out.write(f"moved={moved}\n")
    return EXIT_OK


# -- bench --------------------------------------------------------------------------------------


class _Progress:
    """A progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, stream: TextIO, label: str, total: int) -> None:
        self._stream = stream
        self._label = label
        self._total = max(total, 1)
        self._enabled = stream.isatty()
        self._last = -1.0

    def update(self, done: int) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if done < self._total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = width * done // self._total
        bar = "#" * filled + "." * (width - filled)
        self._stream.write(f"\r{self._label:<9} [{bar}] {done}/{self._total}")
        if done >= self._total:
            self._stream.write("\n")
        self._stream.flush()


async def _bench(args: argparse.Namespace, io: _Io) -> list[dict[str, object]]:
    topic = args.topic or f"bench.{uuid.uuid4().hex[:8]}"
    payload = os.urandom(args.size // 2).hex().encode()[: args.size].ljust(args.size, b"x")
    results: list[dict[str, object]] = []
    bus = await AsyncMsgbusClient.connect(
        _endpoint(args),
        tls=_tls(args),
        timeout=args.timeout,
        token=_token(args),
        coalesce_publishes=not args.no_coalesce,
    )
    async with bus:
        start_head = (await bus.get_head(topic)).head_id + 1
        # Publish: `concurrency` publishers, as independent tasks of one application. The
        # client coalesces their concurrent publishes into PublishBatch calls (unless
        # --no-coalesce), and the daemon's group commit shares each fsync among them.
        latencies: list[float] = []
        progress = _Progress(io.err, "publish", args.count)
        remaining = iter(range(args.count))

        async def publisher() -> None:
            for _ in remaining:
                t0 = time.perf_counter()
                await bus.publish(topic, payload)
                latencies.append(time.perf_counter() - t0)
                progress.update(len(latencies))

        t0 = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(max(1, args.concurrency))))
        results.append(_rate("publish", args.count, time.perf_counter() - t0, latencies))

        # Subscribe: replay what was just published, as an application catching up would.
        progress = _Progress(io.err, "subscribe", args.count)
        received = 0
        t0 = time.perf_counter()
        async with bus.subscribe(topic, from_head_id=start_head, replay_limit=1000) as sub:
            async for _ in sub:
                received += 1
                progress.update(received)
                if received >= args.count:
                    break
        results.append(_rate("subscribe", received, time.perf_counter() - t0, []))

        progress = _Progress(io.err, "fetch", args.count)
        fetched = 0
        t0 = time.perf_counter()
        async for _ in bus.iter_fetch(topic, from_head_id=start_head, page_size=1000):
            fetched += 1
            progress.update(fetched)
        results.append(_rate("fetch", fetched, time.perf_counter() - t0, []))
    for result in results:
        result["topic"] = topic
        result["payload_bytes"] = args.size
        result["concurrency"] = args.concurrency if result["phase"] == "publish" else 1
        if result["phase"] == "publish":
            result["coalesced"] = bus.coalesces_publishes
    return results


def _rate(phase: str, count: int, seconds: float, latencies: list[float]) -> dict[str, object]:
    result: dict[str, object] = {
        "phase": phase,
        "messages": count,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(count / seconds, 1) if seconds > 0 else 0.0,
    }
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100)
        result["p50_ms"] = round(cuts[49] * 1000, 3)
        result["p99_ms"] = round(cuts[98] * 1000, 3)
    return result


def _cmd_bench(args: argparse.Namespace, io: _Io) -> int:
    if args.count < 1 or args.size < 0 or args.concurrency < 1:
        raise ConfigurationError("--count and --concurrency must be >= 1, --size >= 0")
    results = asyncio.run(_bench(args, io))
    if io.json:
        for result in results:
            render.write_json(io.out, result)
    else:
        rows = [
            [
                str(r["phase"]),
                str(r["messages"]),
                f"{r['seconds']:.3f}",
                f"{r['msgs_per_s']:.0f}",
                f"{r['p50_ms']:.2f}" if "p50_ms" in r else "-",
                f"{r['p99_ms']:.2f}" if "p99_ms" in r else "-",
            ]
            for r in results
        ]
        columns = ("PHASE", "MESSAGES", "SECONDS", "MSGS/S", "P50_MS", "P99_MS")
        render.write_table(io.out, columns, rows)
        io.out.write(
            f"topic={results[0]['topic']} payload={args.size}B "
            f"publish concurrency={args.concurrency} "
            f"coalescing={'on' if results[0].get('coalesced') else 'off'}\n"
        )
    return EXIT_OK


# -- probe (the original SDK's probe example, driven by the same environment variables) --------


def _cmd_top(args: argparse.Namespace, io: _Io) -> int:
    try:
        from . import _top
    except ImportError as exc:
        raise _Exit(
            EXIT_USAGE,
            f"msgbus top needs the 'top' extra ({(exc.name or 'rich').split('.')[0]} is not "
            "installed): pip install 'msgbus-sdk[top]'",
        ) from None
    if not args.interval > 0:
        raise ConfigurationError(f"--interval must be above 0 seconds, got {args.interval:g}")
    if args.rows < 1:
        raise ConfigurationError(f"--rows must be at least 1, got {args.rows}")
    _top.run(
        lambda: MsgbusClient.connect(
            _endpoint(args), tls=_tls(args), timeout=args.timeout, token=_token(args)
        ),
        _endpoint(args),
        out=io.out,
        interval_s=args.interval,
        rows=args.rows,
        once=args.once,
    )
    return EXIT_OK


def _env_int(name: str, default: int) -> int:
    # The original falls back to the default when the value does not parse.
    try:
        return int(os.environ.get(name, ""))
    except ValueError:
        return default


def _cmd_probe(args: argparse.Namespace, io: _Io) -> int:
    env = os.environ
    action = env.get("MSGBUS_ACTION", "list-heads")
    topic = env.get("MSGBUS_TOPIC", "demo.events")
    payload = env.get("MSGBUS_PAYLOAD", "hello msgbus").encode("utf-8")
    origin = NodeId(
        tenant_id=env.get("MSGBUS_ORIGIN_TENANT", "tenant"),
        bl_name=env.get("MSGBUS_ORIGIN_BL", "default"),
        device_id=env.get("MSGBUS_ORIGIN_DEVICE", "device"),
    )
    if action not in {"publish", "fetch", "delete", "list-heads", "list-sync"}:
        raise _Exit(EXIT_USAGE, f"unsupported MSGBUS_ACTION: {action}")
    with _client(args, origin) as bus:
        out = io.out
        if action == "publish":
            env_ = bus.publish(topic, payload)
            out.write(f"published head_id={env_.head_id}\n")
        elif action == "fetch":
            messages = bus.fetch(topic, origin, 1, 100)
            out.write(f"fetched={len(messages)}\n")
            for m in messages:
                text = m.payload.decode("utf-8", errors="replace")
                deleted = "true" if m.deleted else "false"
                out.write(f"message head_id={m.head_id} deleted={deleted} payload={text}\n")
        elif action == "delete":
            from_head = _env_int("MSGBUS_FROM_HEAD", 1)
            to_head = _env_int("MSGBUS_TO_HEAD", from_head)
            out.write(f"deleted={bus.delete_range(topic, from_head, to_head, origin)}\n")
        elif action == "list-heads":
            for h in bus.iter_heads():
                if h.origin is None:
                    continue
                out.write(f"head topic={h.topic} origin={node_key(h.origin)} head_id={h.head_id}\n")
        else:
            for s in bus.list_peer_sync_states():
                out.write(
                    f"sync peer={s.peer} topic={s.topic} origin={node_key(s.origin) or '-'} "
                    f"local_head={s.local_head} remote_head={s.remote_head} "
                    f"last_synced_head={s.last_synced_head} failures={s.consecutive_failures} "
                    f"last_error={s.last_error or '-'}\n"
                )
    return EXIT_OK


# -- argument parsing ---------------------------------------------------------------------------


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    """Options accepted both before and after the subcommand.

    The copy attached to subcommands defaults to SUPPRESS, so a flag given after the
    subcommand overrides the top-level one and an absent flag leaves it alone.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser = argparse.ArgumentParser(add_help=False)
    conn = parser.add_argument_group("connection")
    conn.add_argument(
        "--endpoint",
        metavar="HOST:PORT[,...]",
        default=default(None),
        help=f"daemon endpoint: host:port, http://host:port or https://host:port; several, "
        f"comma-separated, to use the first that answers and fail over to the next "
        f"(env MSGBUS_ENDPOINT, default {DEFAULT_ENDPOINT})",
    )
    conn.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=default(DEFAULT_TIMEOUT),
        help=f"deadline for connecting and for each call (default {DEFAULT_TIMEOUT:g})",
    )
    conn.add_argument(
        "--tls", action="store_true", default=default(False), help="use TLS (system roots)"
    )
    conn.add_argument("--tls-ca", metavar="PEM", default=default(None), help="CA certificate")
    conn.add_argument(
        "--tls-cert", metavar="PEM", default=default(None), help="client certificate (mTLS)"
    )
    conn.add_argument("--tls-key", metavar="PEM", default=default(None), help="client key (mTLS)")
    conn.add_argument(
        "--tls-server-name",
        metavar="NAME",
        default=default(None),
        help="name to verify the daemon's certificate against",
    )
    conn.add_argument(
        "--token",
        metavar="NAME.SECRET",
        default=default(None),
        help=f"bearer token for a daemon whose policy names a token file (env {TOKEN_ENV}, "
        "better for a secret: a flag shows in the process list)",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json", action="store_true", default=default(False), help="JSON lines on stdout"
    )
    out.add_argument(
        "--raw",
        action="store_true",
        default=default(False),
        help="write payload bytes only (fetch, subscribe, fifo peek)",
    )
    return parser


def _build_parser() -> argparse.ArgumentParser:
    common = _common_options(suppress=True)
    parser = argparse.ArgumentParser(
        prog="msgbus",
        description="Talk to a msgbus daemon (msgbusd). Payloads are shown as UTF-8 when "
        "they are valid UTF-8 and as base64 otherwise.",
        epilog="exit status: 0 ok, 1 the daemon answered with an error, 2 usage error, "
        "3 daemon unreachable, 4 the daemon answered no (not ready, empty queue, not "
        "accepted), 130 interrupted. `subscribe` exits 0 on Ctrl-C.",
        parents=[_common_options(suppress=False)],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str,
        handler: Callable[[argparse.Namespace, _Io], int],
        help: str,
        into: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
    ) -> argparse.ArgumentParser:
        p = into.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(handler=handler)
        return p

    def origin_flag(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument(
            "--origin",
            metavar="TENANT/BL/DEVICE",
            help=f"{what} (default: the daemon's own node)",
        )

    def payload_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("payload", nargs="?", help="payload text (UTF-8)")
        p.add_argument("--file", metavar="PATH", help="read the payload from PATH ('-': stdin)")
        p.add_argument(
            "--header", "-H", action="append", metavar="KEY=VALUE", help="a header (repeatable)"
        )

    command("health", _cmd_health, "show the daemon's liveness and node identity")
    command("ready", _cmd_ready, "check that the daemon's store answers (exit 4 if not)")

    p = command("publish", _cmd_publish, "publish one message to a topic of the local node")
    p.add_argument("topic")
    payload_args(p)
    origin_flag(p, "origin to send (must be the daemon's node)")
    p.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="publish exactly once under KEY (at most 128 UTF-8 bytes): a repeat within the "
        "daemon's --dedup-window stores nothing and prints the message stored the first time "
        "as 'duplicate of'; default: a random key, so retries of this command's call store "
        "one message",
    )

    p = command("fetch", _cmd_fetch, "read messages of a log")
    p.add_argument("topic")
    origin_flag(p, "the log's origin")
    p.add_argument("--from", dest="from_head_id", type=int, default=1, metavar="HEAD_ID")
    p.add_argument("--limit", type=int, default=100, help="page size (default 100, max 10000)")
    p.add_argument(
        "--all", action="store_true", help="page through the whole log from --from (see --to)"
    )
    p.add_argument("--to", dest="to_head_id", type=int, metavar="HEAD_ID", help="with --all")

    p = command("subscribe", _cmd_subscribe, "replay a log, then follow it live until Ctrl-C")
    p.add_argument("topic")
    origin_flag(p, "the log's origin")
    p.add_argument("--from", dest="from_head_id", type=int, default=1, metavar="HEAD_ID")
    p.add_argument("--replay-limit", type=int, default=100, help="replay page size")
    p.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    p.add_argument(
        "--no-reconnect", action="store_true", help="exit on the first error instead of resuming"
    )

    command("heads", _cmd_heads, "list the head of every log")
    command("sync-state", _cmd_sync_state, "list the peer sync states")

    p = command("delete", _cmd_delete, "delete a range of head_ids of a local log")
    p.add_argument("topic")
    p.add_argument("from_head_id", type=int, metavar="FROM")
    p.add_argument("to_head_id", type=int, metavar="TO")
    origin_flag(p, "the log's origin (must be the daemon's node)")

    p = command("cursors", _cmd_cursors, "list the durable named cursors (consumer positions)")
    p.add_argument("--name", help="only the cursors of this consumer name")
    cursors_sub = p.add_subparsers(dest="cursors_command", metavar="ACTION")
    p = command(
        "delete",
        _cmd_cursors_delete,
        "delete a consumer's cursor of one log, or all its cursors without --topic",
        cursors_sub,
    )
    p.add_argument("cursor_name", metavar="NAME")
    p.add_argument("--topic", help="the log's topic (default: every cursor of NAME)")
    origin_flag(p, "the log's origin, with --topic")

    fifo = sub.add_parser(
        "fifo", help="local FIFO queues: enqueue, peek, ack, reject, dead letters, redrive"
    )
    fifo_sub = fifo.add_subparsers(dest="fifo_command", metavar="ACTION", required=True)
    p = command("enqueue", _cmd_fifo_enqueue, "append a message to a queue", fifo_sub)
    p.add_argument("queue")
    p.add_argument("topic")
    p.add_argument("target", metavar="TARGET", help="tenant/bl/device the message is for")
    payload_args(p)
    p = command("peek", _cmd_fifo_peek, "show the front of a queue (exit 4 if empty)", fifo_sub)
    p.add_argument("queue")
    p = command("ack", _cmd_fifo_ack, "remove the front message", fifo_sub)
    p.add_argument("queue")
    p.add_argument("message_id")
    p = command("reject", _cmd_fifo_reject, "count a failed attempt on the front", fifo_sub)
    p.add_argument("queue")
    p.add_argument("message_id")
    p = command(
        "dead",
        _cmd_fifo_dead,
        "list the dead letters of QUEUE (QUEUE.dead), why they died",
        fifo_sub,
    )
    p.add_argument("queue")
    p = command("redrive", _cmd_fifo_redrive, "move QUEUE.dead back to QUEUE", fifo_sub)
    p.add_argument("queue")
    p.add_argument(
        "--max-messages", type=int, default=0, help="the most to move (default 0: all of them)"
    )

    p = command("bench", _cmd_bench, "quick publish/subscribe/fetch benchmark against a daemon")
    p.add_argument("--count", type=int, default=10_000, help="messages (default 10000)")
    p.add_argument("--size", type=int, default=256, help="payload bytes (default 256)")
    p.add_argument("--concurrency", type=int, default=64, help="publishers (default 64)")
    p.add_argument("--topic", help="topic to use (default: a fresh bench.<random> topic)")
    p.add_argument(
        "--no-coalesce",
        action="store_true",
        help="one Publish call per message instead of coalescing concurrent publishes",
    )

    p = command(
        "top",
        _cmd_top,
        "a live view of the daemon: state, busiest logs, peers and their lag (needs the "
        "'top' extra: pip install 'msgbus-sdk[top]')",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=TOP_INTERVAL_S,
        metavar="SECONDS",
        help=f"seconds between refreshes (default {TOP_INTERVAL_S:g})",
    )
    p.add_argument(
        "--rows", type=int, default=TOP_ROWS, help=f"busiest logs shown (default {TOP_ROWS})"
    )
    p.add_argument(
        "--once", action="store_true", help="print one screen and exit (for scripts and logs)"
    )

    command(
        "probe",
        _cmd_probe,
        "the original SDK's probe: MSGBUS_ACTION (publish, fetch, delete, list-heads, "
        "list-sync), MSGBUS_TOPIC, MSGBUS_PAYLOAD, MSGBUS_ORIGIN_TENANT/_BL/_DEVICE, "
        "MSGBUS_FROM_HEAD, MSGBUS_TO_HEAD",
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the `msgbus` command; returns the exit status (see the module docstring)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    io = _Io(out, err, json=args.json, raw=args.raw)
    handler: Callable[[argparse.Namespace, _Io], int] = args.handler
    try:
        return handler(args, io)
    except _Exit as exc:
        if exc.message:
            err.write(f"msgbus: {exc.message}\n")
        return exc.status
    except ConfigurationError as exc:
        err.write(f"msgbus: error: {exc.message}\n")
        return EXIT_USAGE
    except (UnavailableError, DeadlineExceededError) as exc:
        err.write(f"msgbus: cannot reach the daemon at {_endpoint(args)}: {exc}\n")
        return EXIT_UNREACHABLE
    except MsgbusError as exc:
        err.write(f"msgbus: error: {exc}\n")
        return EXIT_SERVER_ERROR
    except KeyboardInterrupt:
        # Ctrl-C is how `subscribe` and `top` are meant to end; elsewhere it interrupts.
        return EXIT_OK if args.command in ("subscribe", "top") else EXIT_INTERRUPTED
    except BrokenPipeError:
        # `msgbus fetch ... | head`: the reader left; not an error worth a traceback.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces a closed pipe
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
