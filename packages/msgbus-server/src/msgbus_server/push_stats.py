"""What the Push RPC counts, on each side: streams, batches and messages, refusals.

Plain counters on the event loop thread (the hub's `push_intake` and the device's
`upstream_push` note them), read by the metrics; nothing here is persisted.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PushStats"]


@dataclass(slots=True)
class PushStats:
    """One side's push counters."""

    streams: int = 0
    """Push streams open now (hub: devices connected; device: upstreams it pushes to)."""
    batches_in: int = 0
    """Batches this hub applied."""
    messages_in: int = 0
    """Messages this hub stored from pushes (identical copies not counted)."""
    batches_out: int = 0
    """Batches this device had acknowledged as applied."""
    messages_out: int = 0
    """Messages of those batches."""
    refused: int = 0
    """Logs refused (hub: taken from no pusher; device: refused by the upstream), counted when a
    refusal starts or changes."""
