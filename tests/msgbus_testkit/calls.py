"""Calls that must fail, and the ways a daemon may refuse a request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

ALLOWED_REJECTIONS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
"""The only ways a daemon may refuse a request it received (issue 8)."""


def status_of(error: grpc.RpcError) -> grpc.StatusCode:
    """The status code of a failed call."""
    code: grpc.StatusCode = error.code()
    return code


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """Run a call that must fail and return its error (streaming calls are read to the end)."""

    def run() -> None:
        result = call()
        # Server-streaming calls fail when iterated.
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)

    with pytest.raises(grpc.RpcError) as info:
        run()
    error = info.value
    assert isinstance(error, grpc.RpcError)
    return error


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The status code of a call that must fail."""
    return status_of(rpc_error(call))
