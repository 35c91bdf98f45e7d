"""What the blocking client needs of grpc, behind the names of ``_async_transport``.

The blocking client and subscription are generated from the asyncio ones by
``tools/unasync.py``, which makes them import this module instead of ``_async_transport``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias

import grpc

from msgbus_proto import pb

Channel: TypeAlias = grpc.Channel
RpcError: TypeAlias = grpc.RpcError
"""What a failed call raises."""
GrpcStatus: TypeAlias = grpc.StatusCode
"""gRPC's status codes (the SDK's own ``StatusCode`` names them in its errors)."""

CANCELLATIONS: tuple[type[BaseException], ...] = ()
"""Nothing: a blocking call learns of a closed channel by an RpcError (CANCELLED)."""

SubscribeCall: TypeAlias = Any
"""grpc's blocking stream: an iterator of responses that is also a ``grpc.Call``."""


class _CallDetails(NamedTuple):
    """A call's details with other metadata: grpc.ClientCallDetails declares the fields."""

    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str | bytes]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _Metadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the client's own metadata (its bearer token) to every call's, of every kind."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(  # type: ignore[return-value]
            details.method,
            details.timeout,
            (*(details.metadata or ()), *self._metadata),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


def open_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, str | int]],
    metadata: Sequence[tuple[str, str]] = (),
) -> Channel:
    """A channel to ``address``: TLS when ``credentials`` are given, else plaintext.

    Every call on the channel, of every kind, carries ``metadata`` (the bearer token): an
    interceptor adds it, so no call the client makes can go without it.
    """
    if credentials is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        channel = grpc.secure_channel(address, credentials, options=options)
    return grpc.intercept_channel(channel, _Metadata(metadata)) if metadata else channel


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
