"""A grpc.aio server interceptor that counts calls by service, method and status code.

Installed only with `--metrics-listen`. Each handler is wrapped once per method (the wrapped
handler is cached), and a call registers a done callback on its context: when the call ends,
however it ends, its code is counted (`metrics.DaemonMetrics.call_ended`). A call the client
cancelled counts as CANCELLED.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from msgbus_server.metrics import DaemonMetrics

__all__ = ["CallCounter"]


class CallCounter(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every call the server handles (see the module docstring)."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self._metrics = metrics
        self._wrapped: dict[str, tuple[Any, Any]] = {}
        """Per method: the handler as found, and its counting wrapper."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """The handler of the call, wrapped to count it when it ends."""
        handler: Any = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: gRPC answers UNIMPLEMENTED
        method_path: str = handler_call_details.method
        cached = self._wrapped.get(method_path)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method_path)
        self._wrapped[method_path] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any, method_path: str) -> Any:
        service, _, method = method_path.lstrip("/").rpartition("/")
        ended = self._metrics.call_ended

        def count(context: Any) -> None:
            def done(_: object) -> None:
                code = context.code()
                if code is None:
                    code = grpc.StatusCode.CANCELLED if context.cancelled() else grpc.StatusCode.OK
                ended(
                    service, method, code.name if isinstance(code, grpc.StatusCode) else str(code)
                )

            context.add_done_callback(done)

        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_counted(handler.unary_unary, count))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_counted(handler.unary_stream, count))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_counted(handler.stream_unary, count))
        return handler._replace(stream_stream=_counted(handler.stream_stream, count))


def _counted(behavior: Any, count: Callable[[Any], None]) -> Any:
    """`behavior` (a handler's function) calling `count(context)` first, of the same kind."""
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            count(context)
            # Closed with the outer stream, so the handler's cleanup (its log watch, its read
            # reservations) runs when the call ends, not when the garbage is collected.
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response

        return streaming

    async def answering(request: Any, context: Any) -> Any:
        count(context)
        return await behavior(request, context)

    return answering
