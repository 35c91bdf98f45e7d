"""How the `msgbus` command shows messages: tables for people, JSON lines for programs."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any, TextIO

from ._convert import node_key
from ._generated.msgbus.v1 import (
    Cursor,
    FifoMessage,
    HealthResponse,
    MessageEnvelope,
    NodeId,
    PeerSyncState,
    ReadyResponse,
    TopicHead,
)

# Characters that would break a table row or a terminal; shown escaped instead.
_ESCAPES = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\x1b"): "\\x1b"}
_TABLE_PAYLOAD_WIDTH = 60


def payload_text(payload: bytes) -> tuple[str, str]:
    """``(text, encoding)``: the payload as UTF-8 when it is valid UTF-8, else base64."""
    try:
        return payload.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"


def payload_cell(payload: bytes, width: int = _TABLE_PAYLOAD_WIDTH) -> str:
    """A payload for a table cell: escaped, truncated, base64 marked with a ``base64:`` prefix."""
    text, encoding = payload_text(payload)
    if encoding == "base64":
        text = f"base64:{text}"
    else:
        text = "".join(
            _ESCAPES.get(ord(c), f"\\x{ord(c):02x}" if ord(c) < 0x20 else c) for c in text
        )
    return text if len(text) <= width else text[: width - 1] + "…"


def timestamp(ms: int) -> str:
    """Milliseconds since the epoch as an ISO-8601 UTC time."""
    if ms <= 0:
        return "-"
    try:
        when = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _node(node: NodeId | None) -> str | None:
    return node_key(node) if node is not None else None


def envelope_json(env: MessageEnvelope) -> dict[str, Any]:
    """A message as a JSON object."""
    text, encoding = payload_text(env.payload)
    return {
        "id": env.id,
        "topic": env.topic,
        "origin": _node(env.origin),
        "head_id": env.head_id,
        "payload": text,
        "payload_encoding": encoding,
        "headers": dict(env.headers),
        "created_at_ms": env.created_at_ms,
        "deleted": env.deleted,
    }


def fifo_json(msg: FifoMessage) -> dict[str, Any]:
    """A FIFO message as a JSON object."""
    text, encoding = payload_text(msg.payload)
    return {
        "id": msg.id,
        "queue": msg.queue,
        "topic": msg.topic,
        "source": _node(msg.source),
        "target": _node(msg.target),
        "payload": text,
        "payload_encoding": encoding,
        "headers": dict(msg.headers),
        "created_at_ms": msg.created_at_ms,
        "sequence": msg.sequence,
        "attempts": msg.attempts,
        "dead_reason": msg.dead_reason,
        "leased_until_ms": msg.leased_until_ms,
    }


def log_count(head: TopicHead) -> int:
    """How many messages a log holds: it is gap-free from its first head to its head."""
    return head.head_id - head.first_head_id + 1 if head.first_head_id > 0 else 0


_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def byte_size(count: int) -> str:
    """A byte count for people: ``512 B``, ``1.5 MiB``."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in _BYTE_UNITS:
        value /= 1024
        # Compared as shown, so that 1048575 bytes reads 1.0 MiB, not 1024.0 KiB.
        if round(value, 1) < 1024 or unit == _BYTE_UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def head_json(head: TopicHead) -> dict[str, Any]:
    """A log head as a JSON object, with raw integers."""
    return {
        "topic": head.topic,
        "origin": _node(head.origin),
        "first_head_id": head.first_head_id,
        "head_id": head.head_id,
        "count": log_count(head),
        "bytes": head.bytes,
    }


HEAD_COLUMNS = ("TOPIC", "ORIGIN", "FIRST", "HEAD", "COUNT", "BYTES")


def head_row(head: TopicHead) -> list[str]:
    """A log head as a table row (see ``HEAD_COLUMNS``); FIRST is ``-`` for an empty log."""
    return [
        head.topic,
        _node(head.origin) or "-",
        str(head.first_head_id) if head.first_head_id > 0 else "-",
        str(head.head_id),
        str(log_count(head)),
        byte_size(head.bytes),
    ]


def sync_direction(state: PeerSyncState) -> str:
    """Which way the data flows: "pull", "push" or "pushed"; "pull" when an original says none."""
    return state.direction or "pull"


def sync_lag(state: PeerSyncState) -> int:
    """Messages still to move: what the receiving side lacks of the sending side's head.

    This daemon receives in "pull" (its head is `local_head`) and "pushed" (a device pushes
    to it); in "push" the upstream receives, at `remote_head`.
    """
    if sync_direction(state) == "push":
        return max(state.local_head - state.remote_head, 0)
    return max(state.remote_head - state.local_head, 0)


def sync_state_json(state: PeerSyncState) -> dict[str, Any]:
    """A peer sync state as a JSON object."""
    return {
        "peer": state.peer,
        "direction": sync_direction(state),
        "lag": sync_lag(state),
        "topic": state.topic,
        "origin": _node(state.origin),
        "local_head": state.local_head,
        "remote_head": state.remote_head,
        "last_synced_head": state.last_synced_head,
        "last_attempt_at_ms": state.last_attempt_at_ms,
        "last_success_at_ms": state.last_success_at_ms,
        "consecutive_failures": state.consecutive_failures,
        "last_error": state.last_error,
    }


def cursor_json(cursor: Cursor) -> dict[str, Any]:
    """A durable cursor as a JSON object, with raw integers."""
    return {
        "name": cursor.name,
        "topic": cursor.topic,
        "origin": _node(cursor.origin),
        "head_id": cursor.head_id,
        "updated_at_ms": cursor.updated_at_ms,
    }


CURSOR_COLUMNS = ("NAME", "TOPIC", "ORIGIN", "HEAD", "UPDATED")


def cursor_row(cursor: Cursor) -> list[str]:
    """A durable cursor as a table row (see ``CURSOR_COLUMNS``)."""
    return [
        cursor.name,
        cursor.topic,
        _node(cursor.origin) or "-",
        str(cursor.head_id),
        timestamp(cursor.updated_at_ms),
    ]


def health_json(health: HealthResponse) -> dict[str, Any]:
    """A Health answer as a JSON object."""
    return {"status": health.status, "node": _node(health.node)}


def ready_json(ready: ReadyResponse) -> dict[str, Any]:
    """A Ready answer as a JSON object."""
    return {
        "ready": ready.ready,
        "status": ready.status,
        "error": ready.error,
        "node": _node(ready.node),
    }


def write_json(out: TextIO, obj: object) -> None:
    """One JSON line."""
    out.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")


ENVELOPE_COLUMNS = ("HEAD_ID", "CREATED", "DELETED", "HEADERS", "PAYLOAD")


def envelope_row(env: MessageEnvelope) -> list[str]:
    """A message as a table row (see ``ENVELOPE_COLUMNS``)."""
    headers = ",".join(f"{k}={v}" for k, v in sorted(env.headers.items())) or "-"
    return [
        str(env.head_id),
        timestamp(env.created_at_ms),
        "yes" if env.deleted else "no",
        payload_cell(headers.encode(), 30),
        payload_cell(env.payload),
    ]


FIFO_COLUMNS = ("SEQUENCE", "ID", "TOPIC", "TARGET", "ATTEMPTS", "PAYLOAD")


def fifo_row(msg: FifoMessage) -> list[str]:
    """A FIFO message as a table row (see ``FIFO_COLUMNS``)."""
    return [
        str(msg.sequence),
        msg.id,
        msg.topic,
        _node(msg.target) or "-",
        str(msg.attempts),
        payload_cell(msg.payload),
    ]


DEAD_LETTER_COLUMNS = ("SEQUENCE", "ID", "TOPIC", "ATTEMPTS", "REASON", "PAYLOAD")


def dead_letter_row(msg: FifoMessage) -> list[str]:
    """A dead letter as a table row (see ``DEAD_LETTER_COLUMNS``)."""
    return [
        str(msg.sequence),
        msg.id,
        msg.topic,
        str(msg.attempts),
        msg.dead_reason or "-",
        payload_cell(msg.payload),
    ]


# Fixed widths for tables that are printed row by row as messages arrive (subscribe).
STREAM_WIDTHS = (8, 24, 7, 16)


def stream_line(cells: Sequence[str], widths: Sequence[int] = STREAM_WIDTHS) -> str:
    """One row of a streamed table: fixed-width columns, the last one unpadded."""
    padded = [cell.ljust(widths[i]) for i, cell in enumerate(cells[:-1])]
    return "  ".join([*padded, cells[-1]]).rstrip() + "\n"


def write_table(out: TextIO, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns aligned to their widest cell; the last column is not padded."""
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [list(columns), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")
