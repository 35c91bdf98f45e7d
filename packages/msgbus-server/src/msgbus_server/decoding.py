"""Request bodies that do not decode are the client's fault: INVALID_ARGUMENT, never UNKNOWN.

grpcio decodes a request before the handler runs; when protobuf refuses the bytes (corrupt wire
format, a string field that is not UTF-8) it answers UNKNOWN and logs a traceback as if the daemon
had a bug. So the msgbus service is registered with handlers that take the raw bytes and decode
them themselves, answering INVALID_ARGUMENT with the message type and protobuf's reason.

The same handlers pass each decoded request to the authorization guard (`Guard`) before the
service sees it, so a refused call never reaches a handler and a refused stream sends nothing.
A bidirectional stream passes the guard once, with no request, when it opens (who is calling);
its handler checks each request it reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from msgbus_proto import SERVICE_NAME, rpc

Guard = Callable[
    [str, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Callable[[Any], Any] | None]
]
"""Checks a decoded request before its handler runs (`authz.Authorizer.admit`): it aborts a
refused call, and may return a function that rewrites the response of a unary call, or each
response of a stream (None drops it)."""


class _Collector:
    """Stands in for a server to collect the generated method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.handlers.update(handlers)


async def _decode(
    decode: Callable[[bytes], Any], raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
) -> Any:
    try:
        return decode(raw)
    except Exception as error:
        request_type = getattr(decode, "__self__", None)
        name = getattr(request_type, "__name__", "request")
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"request body is not a valid {name}: {error}"
        )


def _decoding(handler: Any, method: str, guard: Guard | None) -> Any:
    decode = handler.request_deserializer
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request = await _decode(decode, raw, context)
            if guard is None:
                return await unary(request, context)
            rewrite = await guard(method, request, context)
            response = await unary(request, context)
            return response if rewrite is None else rewrite(response)

        return handler._replace(request_deserializer=None, unary_unary=unary_unary)
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def unary_stream(
            raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            request = await _decode(decode, raw, context)
            rewrite = None
            if guard is not None:
                rewrite = await guard(method, request, context)  # before anything is sent
            if rewrite is None:
                async for response in stream(request, context):
                    yield response
                return
            async for response in stream(request, context):
                kept = rewrite(response)
                if kept is not None:
                    yield kept

        return handler._replace(request_deserializer=None, unary_stream=unary_stream)
    if handler.stream_stream is not None:
        bidirectional = handler.stream_stream

        async def stream_stream(
            raws: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if guard is not None:
                # Who is calling, before anything is read; the handler checks each request.
                await guard(method, None, context)

            async def requests() -> AsyncIterator[Any]:
                async for raw in raws:
                    yield await _decode(decode, raw, context)

            async for response in bidirectional(requests(), context):
                yield response

        return handler._replace(request_deserializer=None, stream_stream=stream_stream)
    return handler  # msgbus.v1 has no client-streaming RPCs


def add_msgbus_service(
    servicer: rpc.MsgbusServiceServicer, server: grpc.aio.Server, guard: Guard | None = None
) -> None:
    """Register `servicer` on `server` like the generated function, decoding requests itself.

    With a `guard`, every decoded request passes it before its handler runs.
    """
    collector = _Collector()
    rpc.add_MsgbusServiceServicer_to_server(servicer, cast(Any, collector))
    handlers = {
        name: _decoding(handler, name, guard) for name, handler in collector.handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    # Registered methods skip the generic lookup per call (grpcio >= 1.62; not in grpc-stubs).
    cast(Any, server).add_registered_method_handlers(SERVICE_NAME, handlers)
