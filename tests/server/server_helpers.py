"""Helpers shared by the msgbusd end-to-end tests (imported by name; see conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon

NODE = "tenant/default/device"
LOCAL = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="device")
OTHER = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="other")
BACKENDS = ("sqlite", "duckdb")


def start_daemon(tmp_path: Path, backend: str, *args: str, **kwargs: Any) -> Daemon:
    """A fresh daemon of its own for one test."""
    return Daemon.start(tmp_path, storage=backend, node=NODE, extra_args=args, **kwargs)


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `check` until it holds; fail after `timeout` (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    """Run a call that must fail and return its error."""

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
    code: grpc.StatusCode = rpc_error(call).code()
    return code


def publish(stub: rpc.MsgbusServiceStub, topic: str, payload: bytes = b"x", **kw: Any) -> Any:
    """Publish one message and return its envelope."""
    return stub.Publish(pb.PublishRequest(topic=topic, payload=payload, **kw), timeout=30).message


def fetch_all(stub: rpc.MsgbusServiceStub, topic: str, **kw: Any) -> list[Any]:
    """Every message Fetch returns (one page)."""
    return [r.message for r in stub.Fetch(pb.FetchRequest(topic=topic, **kw), timeout=30)]


def topics_in_store(stub: rpc.MsgbusServiceStub) -> set[str]:
    """Topics that have at least one stored message."""
    return {head.topic for head in stub.ListHeads(pb.ListHeadsRequest(), timeout=30).heads}
