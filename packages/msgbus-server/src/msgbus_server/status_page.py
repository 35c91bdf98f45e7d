"""The metrics and status listener (`--metrics-listen`): `/metrics`, `/status`, `/status.json`.

A `ThreadingHTTPServer` on its own thread, so a slow scraper never holds up the event loop; each
request takes one `DaemonStatus` snapshot from the loop (`snapshot`, thread-safe, with a
deadline) and renders it:

- `/metrics`: the Prometheus text format (`metrics.DaemonMetrics.exposition`);
- `/status`: one HTML page rendered here, on the server, with no front-end build. A few lines of
  inline script fetch its `<main>` again (`/status?part=main`, rendered by the same code) every
  `REFRESH_MS` and swap it in, so the page stays current without a reload and nothing is
  rendered twice in two languages;
- `/status.json`: the same snapshot as JSON (`DaemonStatus.to_json`).

With the daemon's TLS (`--tls-cert`/`--tls-key`) the listener serves HTTPS with the same
certificate, and with `--tls-client-ca` it requires client certificates, as the gRPC listener
does; the handshake runs on the request's thread.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from msgbus_server.daemon_status import DaemonStatus, PeerStatus
from msgbus_server.disk_budget import format_bytes
from msgbus_server.metrics import DaemonMetrics

__all__ = ["REFRESH_MS", "StatusPage", "render_main", "render_page"]

log = logging.getLogger("msgbus_server.status_page")

REFRESH_MS: Final = 2000
"""How often an open status page fetches its content again."""
SHOWN_ROWS: Final = 20
"""Busiest logs and deepest queues the page shows (`/status.json` and `/metrics` have more)."""
REQUEST_TIMEOUT_S: Final = 10.0
"""How long a client may take to send its request (and, with TLS, to shake hands)."""


class StatusPage:
    """The HTTP listener; `start` binds and serves on a thread, `stop` ends it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: DaemonMetrics,
        snapshot: Callable[[], DaemonStatus],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`snapshot` takes a status snapshot from any thread (raising `TimeoutError` late)."""
        self._address = (host, port)
        self._metrics = metrics
        self._snapshot = snapshot
        self._ssl = ssl_context
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and start serving; returns the port. Raises `OSError` when it cannot bind."""
        server = _Server(self._address, _Handler, page=self)
        self._server = server
        # A short poll interval: `stop` waits for the serving loop to notice it.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="msgbus-status", daemon=True
        )
        self._thread.start()
        port: int = server.server_address[1]
        return port

    def stop(self) -> None:
        """Stop serving and close the socket (requests in progress finish on their threads)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- what the handler asks -------------------------------------------------------------------

    def wrap(self, request: socket.socket) -> socket.socket:
        """The accepted connection, with TLS when the daemon serves TLS."""
        request.settimeout(REQUEST_TIMEOUT_S)
        if self._ssl is None:
            return request
        return self._ssl.wrap_socket(request, server_side=True)

    def answer(self, path: str) -> tuple[HTTPStatus, str, bytes]:
        """The status, content type and body for a GET of `path`."""
        parts = urlsplit(path)
        route = parts.path.rstrip("/") or "/"
        if route == "/":
            return HTTPStatus.FOUND, "text/plain; charset=utf-8", b""  # to /status
        if route not in ("/metrics", "/status", "/status.json"):
            return HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n"
        try:
            if route == "/metrics":
                return HTTPStatus.OK, CONTENT_TYPE_LATEST, self._metrics.exposition()
            status = self._snapshot()
        except TimeoutError:
            return (
                HTTPStatus.SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                b"msgbusd did not answer in time (busy, or shutting down)\n",
            )
        except Exception as error:
            log.exception("metrics listener: GET %s failed (a bug)", route)
            body = f"internal error: {type(error).__name__}: {error}\n".encode()
            return HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", body
        if route == "/status.json":
            body = json.dumps(status.to_json(), indent=1).encode()
            return HTTPStatus.OK, "application/json", body
        if parse_qs(parts.query).get("part") == ["main"]:
            return HTTPStatus.OK, "text/html; charset=utf-8", render_main(status).encode()
        return HTTPStatus.OK, "text/html; charset=utf-8", render_page(status).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # `stop` must not wait for kept-alive connections (a scraper's, an open page's) to go idle.
    block_on_close = False
    # The daemon checks that the port is free before it opens the store, as for --listen.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: Any, *, page: StatusPage) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.page = page
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # On the request's own thread: a slow TLS handshake holds up no one else.
        try:
            wrapped = self.page.wrap(request)
        except (OSError, ssl.SSLError) as error:
            log.debug("metrics listener: connection from %s failed: %s", client_address, error)
            return
        super().finish_request(wrapped, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "msgbusd"

    def do_GET(self) -> None:
        status, content_type, body = self.server.page.answer(self.path)
        self.send_response(status)
        if status is HTTPStatus.FOUND:
            self.send_header("Location", "/status")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics listener: %s %s", self.address_string(), format % args)


# -- the page ------------------------------------------------------------------------------------

_STYLE: Final = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d232b; background: #f4f6f8; }
header { background: #1d2b3a; color: #fff; padding: 14px 24px; display: flex; gap: 24px;
  align-items: baseline; flex-wrap: wrap; }
header h1 { font-size: 18px; margin: 0; }
header .muted { color: #b8c4d0; }
main { padding: 12px 24px 24px; }
section { background: #fff; border: 1px solid #dde3e9; border-radius: 6px; margin: 12px 0;
  padding: 10px 14px; }
h2 { font-size: 15px; margin: 4px 0 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 10px 4px 0; border-bottom: 1px solid #eef1f4;
  vertical-align: top; }
th { font-weight: 600; color: #55606c; font-size: 12px; text-transform: uppercase; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { flex: 1 1 140px; }
.card .v { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .k { color: #55606c; font-size: 12px; text-transform: uppercase; }
.ok { color: #127a3a; font-weight: 600; }
.bad { color: #b3261e; font-weight: 600; }
.err { color: #b3261e; max-width: 520px; overflow-wrap: anywhere; }
.muted { color: #6b7680; }
footer { color: #6b7680; font-size: 12px; padding: 0 24px 16px; }
body[data-stale="true"] footer::after { content: " (not updating: msgbusd does not answer)";
  color: #b3261e; }
"""

_SCRIPT: Final = f"""
(function () {{
  var main = document.querySelector("main");
  function refresh() {{
    fetch("/status?part=main", {{cache: "no-store"}}).then(function (response) {{
      if (!response.ok) throw new Error(response.status);
      return response.text();
    }}).then(function (text) {{
      main.innerHTML = text;
      document.body.dataset.stale = "false";
    }}).catch(function () {{
      document.body.dataset.stale = "true";
    }}).then(function () {{ setTimeout(refresh, {REFRESH_MS}); }});
  }}
  setTimeout(refresh, {REFRESH_MS});
}})();
"""


def render_page(status: DaemonStatus) -> str:
    """The whole status page of a snapshot."""
    node = html.escape(status.node)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>msgbusd {node}</title><style>{_STYLE}</style></head>\n"
        '<body data-stale="false">'
        f"<header><h1>msgbusd {node}</h1>"
        f'<span class="muted">version {html.escape(status.version)}</span>'
        f'<span class="muted">gRPC {html.escape(status.listen)}</span></header>\n'
        f"<main>{render_main(status)}</main>\n"
        f"<footer>Refreshes every {REFRESH_MS // 1000} s. Also: "
        '<a href="/status.json">/status.json</a>, <a href="/metrics">/metrics</a>.</footer>\n'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def render_main(status: DaemonStatus) -> str:
    """The page's content (what the page swaps in when it refreshes)."""
    return "\n".join(
        (
            _overview(status),
            _peers(status),
            _logs(status),
            _queues(status),
            f'<p class="muted" id="updated">As of {_clock(status.now_ms)}; store surveyed '
            f"{_ago(status.now_ms, status.survey.at_ms)} in "
            f"{status.survey.seconds * 1000:.1f} ms.</p>",
        )
    )


def _overview(status: DaemonStatus) -> str:
    survey = status.survey
    if status.serving:
        state = '<span class="ok" id="state">SERVING</span>'
    else:
        state = '<span class="bad" id="state">NOT SERVING</span>'
    reasons = "".join(
        f'<div class="err">{html.escape(name)}: {html.escape(reason)}</div>'
        for name, reason in status.reasons.items()
    )
    size = format_bytes(survey.usage.file_bytes)
    if status.budget_bytes is not None:
        used = format_bytes(status.budget_used_bytes or 0)
        size += (
            f' <span class="muted">({used} of the {format_bytes(status.budget_bytes)} budget, '
            f"discard {html.escape(status.discard or '')})</span>"
        )
    cards = [
        ("state", state + reasons),
        ("up", _duration((status.now_ms - status.started_at_ms) / 1000)),
        ("logs", f"{survey.logs:,}"),
        ("messages held", f"{survey.messages:,}"),
        ("bytes held", format_bytes(survey.bytes)),
        ("subscribers", f"{status.subscribers:,}"),
    ]
    card_html = "".join(
        f'<div class="card"><div class="k">{key}</div><div class="v">{value}</div></div>'
        for key, value in cards
    )
    behind = (
        f"{status.replaying_subscribers} replaying, furthest "
        f"{_duration(status.behind_seconds)} behind"
        if status.replaying_subscribers
        else "all live"
    )
    delivered = ", ".join(f"{method} {count:,}" for method, count in status.delivered.items())
    return (
        f'<section id="overview"><div class="cards">{card_html}</div>'
        '<table style="margin-top:8px">'
        f"<tr><th>node</th><td>{html.escape(status.node)}</td></tr>"
        f"<tr><th>storage</th><td>{html.escape(status.storage)} "
        f'<span class="muted">{html.escape(status.location)}</span></td></tr>'
        f"<tr><th>database size</th><td>{size}</td></tr>"
        f"<tr><th>subscribers</th><td>{status.subscribers} open, {behind}"
        f'<span class="muted">; delivered {delivered or "nothing yet"}</span></td></tr>'
        "</table></section>"
    )


def _peers(status: DaemonStatus) -> str:
    if not status.peers:
        return (
            '<section id="peers"><h2>Peers</h2><p class="muted">No peers configured.</p></section>'
        )
    rows = "".join(_peer_row(status, peer) for peer in status.peers)
    return (
        '<section id="peers"><h2>Peers</h2><table><tr><th>peer</th><th>state</th>'
        '<th class="n">lag</th><th class="n">unsynced</th><th>last success</th>'
        '<th class="n">pulled</th><th class="n">refused</th><th class="n">failing logs</th>'
        f"<th>last error</th></tr>{rows}</table>"
        '<p class="muted">Lag: messages the peer has that this node has not pulled yet. '
        "Unsynced: messages of this node the peer has not listed as held.</p></section>"
    )


def _peer_row(status: DaemonStatus, peer: PeerStatus) -> str:
    endpoint = html.escape(peer.endpoint)
    pinned = f'<div class="muted">{html.escape(peer.pinned)}</div>' if peer.pinned else ""
    if peer.up:
        state = '<span class="ok">in sync</span>' if not peer.lag_messages else "pulling"
    elif peer.passes or peer.failed_passes:
        state = f'<span class="bad">failing ({peer.consecutive_failures}x)</span>'
    else:
        state = '<span class="muted">starting</span>'
    unsynced = "-" if peer.unsynced_messages is None else f"{peer.unsynced_messages:,}"
    error = peer.last_error or peer.log_error
    success = _ago(status.now_ms, peer.last_success_at_ms) if peer.last_success_at_ms else "never"
    return (
        f'<tr data-peer="{endpoint}"><td>{endpoint}{pinned}</td><td>{state}</td>'
        f'<td class="n" data-field="lag">{peer.lag_messages:,}</td>'
        f'<td class="n" data-field="unsynced">{unsynced}</td><td>{success}</td>'
        f'<td class="n">{peer.pulled_messages:,}</td><td class="n">{peer.refused:,}</td>'
        f'<td class="n">{peer.failing_logs:,}</td>'
        f'<td class="err">{html.escape(error) if error else ""}</td></tr>'
    )


def _logs(status: DaemonStatus) -> str:
    survey = status.survey
    shown = survey.busiest[:SHOWN_ROWS]
    if not shown:
        note = (
            f"{_count(survey.logs, 'log')}, none shown (--metrics-max-logs 0)."
            if survey.logs
            else "No logs yet."
        )
        return f'<section id="logs"><h2>Busiest logs</h2><p class="muted">{note}</p></section>'
    rows = "".join(
        f'<tr data-log="{html.escape(log.topic)}"><td>{html.escape(log.topic)}</td>'
        f"<td>{html.escape(log.origin)}</td>"
        f'<td class="n">{log.first_head_id:,}</td><td class="n">{log.head_id:,}</td>'
        f'<td class="n">{log.messages:,}</td><td class="n">{format_bytes(log.bytes)}</td>'
        f'<td class="n">{_rate(log.rate)}</td></tr>'
        for log in shown
    )
    more = survey.logs - len(shown)
    note = f'<p class="muted">{_count(more, "more log")}.</p>' if more > 0 else ""
    return (
        '<section id="logs"><h2>Busiest logs</h2><table><tr><th>topic</th><th>origin</th>'
        '<th class="n">first head</th><th class="n">head</th><th class="n">messages</th>'
        f'<th class="n">bytes</th><th class="n">msg/s</th></tr>{rows}</table>{note}</section>'
    )


def _queues(status: DaemonStatus) -> str:
    survey = status.survey
    shown = survey.deepest[:SHOWN_ROWS]
    if not shown:
        return (
            '<section id="queues"><h2>Queues</h2><p class="muted">No queued messages.</p></section>'
        )
    rows = "".join(
        f'<tr data-queue="{html.escape(queue.queue)}"><td>{html.escape(queue.queue)}</td>'
        f'<td class="n">{queue.depth:,}</td><td class="n">{queue.attempts:,}</td></tr>'
        for queue in shown
    )
    return (
        '<section id="queues"><h2>Queues</h2><table><tr><th>queue</th>'
        f'<th class="n">depth</th><th class="n">redeliveries</th></tr>{rows}</table>'
        f'<p class="muted">In all: {_count(survey.queues, "queue")}, '
        f"{_count(survey.queued_messages, 'message')}.</p></section>"
    )


def _count(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _rate(rate: float | None) -> str:
    if rate is None:
        return '<span class="muted">-</span>'
    return f"{rate:,.1f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _ago(now_ms: int, then_ms: int) -> str:
    return f"{_duration(max(now_ms - then_ms, 0) / 1000)} ago"


def _clock(at_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at_ms / 1000))
