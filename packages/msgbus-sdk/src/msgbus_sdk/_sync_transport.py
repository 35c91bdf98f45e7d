"""What the blocking client needs of grpc, behind the names of ``_async_transport``.

The blocking client and subscription are generated from the asyncio ones by
``tools/unasync.py``, which makes them import this module instead of ``_async_transport``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, TypeAlias

import grpc

from msgbus_proto import pb

Channel: TypeAlias = grpc.Channel
RpcError: TypeAlias = grpc.RpcError
"""What a failed call raises."""

CANCELLATIONS: tuple[type[BaseException], ...] = ()
"""Nothing: a blocking call learns of a closed channel by an RpcError (CANCELLED)."""

SubscribeCall: TypeAlias = Any
"""grpc's blocking stream: an iterator of responses that is also a ``grpc.Call``."""


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, str | int]],
) -> Channel:
    """A channel to ``address``: TLS when ``credentials`` are given, else plaintext."""
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)


def close_channel(channel: Channel) -> None:
    """Close a channel at once; calls in other threads end cancelled."""
    channel.close()


def lock() -> threading.Lock:
    """A lock for the client's own state, shared between threads (one failover at a time)."""
    return threading.Lock()


def read(call: SubscribeCall) -> pb.SubscribeResponse | None:
    """The next response of a Subscribe stream, or ``None`` where the stream ended."""
    response: pb.SubscribeResponse | None = next(call, None)
    return response


def cancelled_by_channel(error: BaseException) -> bool:
    """Always False: a blocking read learns of a closed channel by an RpcError (CANCELLED)."""
    return False


def cancel(call: Any) -> None:
    """Cancel a call that may already be over."""
    call.cancel()
