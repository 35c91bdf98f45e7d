"""What the asyncio client needs of grpc.aio, behind the names the blocking side also has.

The client and its subscriptions are written once, for asyncio (``_async_client.py`` and
``_async_subscription.py``); ``tools/unasync.py`` derives their blocking twins, which import
``_sync_transport`` instead of this module. Only what really differs between grpc.aio and
grpc's blocking API lives here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import grpc
import grpc.aio

from msgbus_proto import pb

Channel: TypeAlias = grpc.aio.Channel
RpcError: TypeAlias = grpc.aio.AioRpcError
"""What a failed call raises."""
GrpcStatus: TypeAlias = grpc.StatusCode
"""gRPC's status codes (the SDK's own ``StatusCode`` names them in its errors)."""

CANCELLATIONS: tuple[type[BaseException], ...] = (asyncio.CancelledError,)
"""What a call raises when its channel is closed under it (see :func:`cancelled_by_channel`)."""

if TYPE_CHECKING:
    SubscribeCall: TypeAlias = grpc.aio.UnaryStreamCall[pb.SubscribeRequest, pb.SubscribeResponse]

# grpc.aio's end-of-stream sentinel; grpc-stubs does not declare it.
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class _Metadata:
    """Adds the client's own metadata (its bearer token) to a call's."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        merged = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return cast("grpc.aio.ClientCallDetails", details._replace(metadata=merged))  # type: ignore[attr-defined]


# grpc.aio files an interceptor under one kind of call only, so each kind has its own class.
# (The interceptor classes are generic in grpc-stubs only, hence the ignores.)
class _UnaryUnary(_Metadata, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStream(_Metadata, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnary(_Metadata, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStream(_Metadata, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


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
    kinds = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    # grpc-stubs leave the interceptors' type open ("must cast or ignore").
    interceptors = (
        cast("Sequence[grpc.aio.ClientInterceptor]", [kind(metadata) for kind in kinds])
        if metadata
        else None
    )
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)


async def close_channel(channel: Channel) -> None:
    """Close a channel at once; its calls end cancelled."""
    await channel.close(grace=None)


def lock() -> asyncio.Lock:
    """A lock for the client's own state, held across awaits (one failover at a time)."""
    return asyncio.Lock()


async def read(call: SubscribeCall) -> pb.SubscribeResponse | None:
    """The next response of a Subscribe stream, or ``None`` where the stream ended."""
    response = await call.read()
    return None if response is _EOF else cast("pb.SubscribeResponse", response)


def cancelled_by_channel(error: BaseException) -> bool:
    """Whether a read failed with ``error`` because its channel was closed.

    Closing a grpc.aio channel cancels its calls with :class:`asyncio.CancelledError`. A
    cancellation of the consuming task itself looks the same but is not this, and propagates.
    """
    if not isinstance(error, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    return task is None or not task.cancelling()


def cancel(call: grpc.aio.Call) -> None:
    """Cancel a call that may already be over."""
    call.cancel()
