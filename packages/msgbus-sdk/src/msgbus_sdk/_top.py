"""`msgbus top`: a view of one daemon that refreshes in place, as `htop` and `nats top` do.

It works over the daemon's gRPC API, so it needs no metrics port: Health and Ready for the node
and its state, ListHeads for the logs (the whole listing once, then only the logs that changed
since its cursor, so an idle daemon of a million logs costs one small call per refresh), and
ListPeerSyncStates for the peers. A log's rate is how far its head moved since the previous
refresh; the busiest logs are the fastest, then the largest. A peer's lag is what its recorded
sync states say: the heads the peer listed above the local ones, summed over the logs that have
a state (a log pulled from the peer, or failing with it).

The terminal is drawn with `rich` (the SDK's `top` extra): `cli` imports this module only for
`msgbus top`, and says which extra to install when `rich` is missing.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._convert import node_key
from ._errors import CursorExpiredError, DeadlineExceededError, UnavailableError
from ._generated.msgbus.v1 import TopicHead
from ._sync_client import MsgbusClient

__all__ = ["Frame", "TopSampler", "render", "run"]

_LogKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class LogRow:
    """One of the busiest logs."""

    topic: str
    origin: str
    first_head_id: int
    head_id: int
    messages: int
    bytes: int
    rate: float | None
    """Messages per second since the previous refresh (None on the first)."""


@dataclass(frozen=True, slots=True)
class PeerRow:
    """One peer, from its recorded sync states."""

    peer: str
    consecutive_failures: int
    last_error: str
    last_success_at_ms: int
    """When its recorded state last changed with a success (states are written on change)."""
    lag: int
    failing_logs: int
    logs: int
    """Logs with a state of their own (pulled from this peer, or failing with it)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """What one refresh found."""

    endpoint: str
    at_ms: int
    node: str = ""
    status: str = ""
    ready: bool = False
    ready_error: str = ""
    logs: int = 0
    messages: int = 0
    bytes: int = 0
    busiest: tuple[LogRow, ...] = ()
    peers: tuple[PeerRow, ...] = ()
    error: str = ""
    """Why the daemon could not be asked ("" when it answered)."""


@dataclass(slots=True)
class _Extent:
    head_id: int
    first_head_id: int
    bytes: int

    @property
    def messages(self) -> int:
        return self.head_id - self.first_head_id + 1 if self.first_head_id else 0


@dataclass(slots=True)
class TopSampler:
    """Asks the daemon for one `Frame` at a time, remembering the heads between refreshes."""

    client: MsgbusClient
    endpoint: str
    rows: int
    """How many of the busiest logs a frame holds."""
    _heads: dict[_LogKey, _Extent] = field(default_factory=dict)
    _rates: dict[_LogKey, float] = field(default_factory=dict)
    _cursor: str | None = None
    _listed_at: float = 0.0
    _rated: bool = False
    """The rates compare two listings (not so on the first refresh)."""

    def sample(self) -> Frame:
        """Ask the daemon now. Raises the client's errors when it cannot be reached."""
        health = self.client.health()
        ready = self.client.ready()
        self._update_heads()
        peers = self._peers()
        busiest = heapq.nlargest(
            self.rows,
            self._heads.items(),
            key=lambda item: (self._rates.get(item[0], 0.0), item[1].bytes, item[1].head_id),
        )
        return Frame(
            endpoint=self.endpoint,
            at_ms=time.time_ns() // 1_000_000,
            node=node_key(health.node) if health.node is not None else "",
            status=health.status,
            ready=ready.ready,
            ready_error=ready.error,
            logs=len(self._heads),
            messages=sum(extent.messages for extent in self._heads.values()),
            bytes=sum(extent.bytes for extent in self._heads.values()),
            busiest=tuple(
                LogRow(
                    key[0],
                    key[1],
                    extent.first_head_id,
                    extent.head_id,
                    extent.messages,
                    extent.bytes,
                    self._rates.get(key, 0.0) if self._rated else None,
                )
                for key, extent in busiest
            ),
            peers=peers,
        )

    def _update_heads(self) -> None:
        now = time.monotonic()
        previous = self._listed_at
        try:
            listing = self.client.list_heads_changed(self._cursor)
        except CursorExpiredError:
            # The daemon restarted: list everything again.
            self._cursor = None
            listing = self.client.list_heads_changed(None)
        self._rates = {}
        if listing.full:
            known, self._heads = self._heads, {}
        else:
            known = self._heads
        elapsed = now - previous if previous else 0.0
        for head in listing.heads:
            key = _key(head)
            extent = _Extent(head.head_id, head.first_head_id, head.bytes)
            # A log first listed now moved from nothing.
            before = known[key].head_id if key in known else 0
            if elapsed > 0 and head.head_id > before:
                self._rates[key] = (head.head_id - before) / elapsed
            self._heads[key] = extent
        self._cursor = listing.cursor
        self._listed_at = now
        self._rated = elapsed > 0

    def _peers(self) -> tuple[PeerRow, ...]:
        rows: dict[str, dict[str, int | str]] = {}
        for state in self.client.iter_peer_sync_states():
            row = rows.setdefault(
                state.peer,
                {"failures": 0, "error": "", "success": 0, "lag": 0, "failing": 0, "logs": 0},
            )
            if not state.topic:
                row["failures"] = state.consecutive_failures
                row["error"] = state.last_error
                row["success"] = state.last_success_at_ms
                continue
            row["logs"] = int(row["logs"]) + 1
            row["lag"] = int(row["lag"]) + max(state.remote_head - state.local_head, 0)
            if state.last_error:
                row["failing"] = int(row["failing"]) + 1
        return tuple(
            PeerRow(
                peer,
                int(row["failures"]),
                str(row["error"]),
                int(row["success"]),
                int(row["lag"]),
                int(row["failing"]),
                int(row["logs"]),
            )
            for peer, row in sorted(rows.items())
        )


def _key(head: TopicHead) -> _LogKey:
    return (head.topic, node_key(head.origin) if head.origin is not None else "")


# -- drawing --------------------------------------------------------------------------------------


def render(frame: Frame, interval_s: float | None = None) -> RenderableType:
    """One screen of `msgbus top`."""
    title = Text()
    title.append("msgbus top", style="bold")
    title.append(f"  {frame.endpoint}")
    if frame.node:
        title.append(f"  node {frame.node}")
    state = Text()
    if frame.error:
        state.append(f"cannot reach the daemon: {frame.error}", style="bold red")
    else:
        ok = frame.status == "SERVING"
        state.append(frame.status or "?", style="bold green" if ok else "bold red")
        state.append("  ")
        if frame.ready:
            state.append("READY", style="green")
        else:
            state.append(f"NOT READY {frame.ready_error}".rstrip(), style="red")
        state.append(
            f"  logs {frame.logs:,}  messages {frame.messages:,}  bytes {_size(frame.bytes)}"
        )
    clock = time.strftime("%H:%M:%S", time.localtime(frame.at_ms / 1000))
    footer = f"as of {clock}"
    if interval_s is not None:
        footer += f", every {interval_s:g} s; Ctrl-C quits"
    return Group(title, state, _logs_table(frame), _peers_table(frame), Text(footer, style="dim"))


def _logs_table(frame: Frame) -> Table:
    table = Table(title="Busiest logs", title_justify="left", expand=True)
    table.add_column("TOPIC", overflow="fold")
    table.add_column("ORIGIN", overflow="fold")
    for name in ("FIRST", "HEAD", "MESSAGES", "BYTES", "MSG/S"):
        table.add_column(name, justify="right")
    for row in frame.busiest:
        rate = "-" if row.rate is None else f"{row.rate:,.1f}"
        table.add_row(
            row.topic,
            row.origin,
            f"{row.first_head_id:,}",
            f"{row.head_id:,}",
            f"{row.messages:,}",
            _size(row.bytes),
            rate,
        )
    if not frame.busiest:
        table.add_row("(no logs)", "", "", "", "", "", "")
    return table


def _peers_table(frame: Frame) -> Table:
    table = Table(title="Peers", title_justify="left", expand=True)
    table.add_column("PEER", overflow="fold")
    table.add_column("STATE")
    for name in ("LAG", "FAILING LOGS"):
        table.add_column(name, justify="right")
    table.add_column("LAST CHANGE")
    table.add_column("LAST ERROR", overflow="fold")
    for peer in frame.peers:
        if peer.consecutive_failures:
            state = Text(f"failing ({peer.consecutive_failures}x)", style="red")
        elif peer.lag:
            state = Text("pulling", style="yellow")
        else:
            state = Text("in sync", style="green")
        error = peer.last_error or ("a log fails" if peer.failing_logs else "")
        table.add_row(
            peer.peer,
            state,
            f"{peer.lag:,}",
            f"{peer.failing_logs:,}",
            _ago(frame.at_ms, peer.last_success_at_ms),
            error,
        )
    if not frame.peers:
        table.add_row("(no peer sync states)", "", "", "", "", "")
    return table


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _ago(now_ms: int, then_ms: int) -> str:
    if then_ms <= 0:
        return "never"
    seconds = max(now_ms - then_ms, 0) / 1000
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


# -- the loop -------------------------------------------------------------------------------------


def run(
    connect: Callable[[], MsgbusClient],
    endpoint: str,
    *,
    out: TextIO,
    interval_s: float,
    rows: int,
    once: bool = False,
) -> None:
    """Show the daemon until Ctrl-C (`KeyboardInterrupt` reaches the caller), or once.

    With `once`, one frame is printed and the client's errors reach the caller, as they do when
    the daemon cannot be reached at the start. A daemon that stops answering later is shown as
    such, and asked again at each refresh.
    """
    console = Console(file=out)
    with connect() as client:
        sampler = TopSampler(client, endpoint, rows)
        if once:
            console.print(render(sampler.sample()))
            return
        frame = _sample(sampler, None)
        with Live(
            render(frame, interval_s), console=console, screen=True, auto_refresh=False
        ) as live:
            while True:
                time.sleep(interval_s)
                frame = _sample(sampler, frame)
                live.update(render(frame, interval_s), refresh=True)


def _sample(sampler: TopSampler, last: Frame | None) -> Frame:
    """A new frame, or the last one marked with why the daemon did not answer."""
    try:
        return sampler.sample()
    except (UnavailableError, DeadlineExceededError) as error:
        now = time.time_ns() // 1_000_000
        if last is None:
            return Frame(endpoint=sampler.endpoint, at_ms=now, error=str(error))
        return Frame(
            endpoint=last.endpoint,
            at_ms=now,
            node=last.node,
            logs=last.logs,
            messages=last.messages,
            bytes=last.bytes,
            busiest=last.busiest,
            peers=last.peers,
            error=str(error),
        )
