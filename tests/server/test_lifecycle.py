"""Startup, graceful shutdown, crash recovery and restart of real daemons."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.logs import fetch_page, publish


def test_sigterm_with_open_subscribers_exits_0_and_keeps_data(
    tmp_path: Path, backend: str, name: Callable[[str], str]
) -> None:
    topic = name("term")
    daemon = Daemon.start(tmp_path, storage=backend)
    try:
        stub = daemon.stub()
        for i in range(20):
            publish(stub, topic, b"%d" % i)
        # Open subscriptions on several channels: live ones (caught up) and an idle one.
        channels = [daemon.channel() for _ in range(4)]
        streams = [
            rpc.MsgbusServiceStub(c).Subscribe(pb.SubscribeRequest(topic=topic), timeout=120)
            for c in channels
        ]
        received: list[list[int]] = [[] for _ in streams]
        endings: list[grpc.StatusCode | None] = [None] * len(streams)

        def drain(index: int) -> None:
            try:
                for response in streams[index]:
                    received[index].append(response.message.head_id)
            except grpc.RpcError as error:
                endings[index] = error.code()

        threads = [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: all(len(r) == 20 for r in received), message="subscribers caught up")

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=5) == 0
        for thread in threads:
            thread.join(30)
        # Subscribers were told to reconnect, not left hanging.
        assert endings == [grpc.StatusCode.UNAVAILABLE] * 4
        assert "Traceback" not in daemon.stderr_text()

        daemon.restart()
        messages = fetch_page(daemon.stub(), topic)
        assert [m.payload for m in messages] == [b"%d" % i for i in range(20)]
        assert publish(daemon.stub(), topic).head_id == 21
    finally:
        daemon.kill()


def test_sigint_also_shuts_down_gracefully(tmp_path: Path, backend: str) -> None:
    daemon = Daemon.start(tmp_path, storage=backend)
    try:
        daemon.signal(signal.SIGINT)
        assert daemon.wait(timeout=5) == 0
        assert "shutdown signal received" in daemon.stderr_text()
    finally:
        daemon.kill()


def test_kill_9_loses_no_acknowledged_message(
    tmp_path: Path, backend: str, name: Callable[[str], str]
) -> None:
    topic = name("crash")
    daemon = Daemon.start(tmp_path, storage=backend)
    acknowledged: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        with grpc.insecure_channel(daemon.endpoint) as channel:
            stub = rpc.MsgbusServiceStub(channel)
            i = 0
            while not stop.is_set():
                try:
                    message = publish(stub, topic, b"%d" % i)
                except grpc.RpcError:
                    return
                acknowledged.append(message.head_id)
                i += 1

    try:
        threads = [threading.Thread(target=writer, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(acknowledged) >= 200, message="some acknowledged publishes")
        daemon.kill()
        stop.set()
        for thread in threads:
            thread.join(30)
        daemon.restart()
        stub = daemon.stub()
        head = stub.GetHead(pb.GetHeadRequest(topic=topic)).head_id
        assert head >= max(acknowledged)
        heads = [m.head_id for m in fetch_page(stub, topic, limit=10_000)]
        assert heads == list(range(1, head + 1))
    finally:
        daemon.kill()


def test_restart_keeps_the_port_and_fifo_state(
    tmp_path: Path, backend: str, name: Callable[[str], str]
) -> None:
    queue = name("q")
    target = pb.NodeId(tenant_id="t", bl_name="b", device_id="d")
    with Daemon.start(tmp_path, storage=backend) as daemon:
        port = daemon.port
        stub = daemon.stub()
        first = stub.EnqueueFifo(pb.EnqueueFifoRequest(queue=queue, topic="j", target=target))
        assert stub.RejectFifo(pb.RejectFifoRequest(queue=queue, message_id=first.message.id))
        daemon.restart()
        assert daemon.port == port
        front = daemon.stub().PeekFifo(pb.PeekFifoRequest(queue=queue)).message
        assert (front.id, front.attempts, front.sequence) == (first.message.id, 1, 1)


def test_json_logs(tmp_path: Path) -> None:
    with Daemon.start(tmp_path, extra_args=["--log-format", "json"]) as daemon:
        daemon.stub().Health(pb.HealthRequest())
        code = daemon.stop()
    assert code == 0
    lines = [json.loads(line) for line in daemon.stderr_text().splitlines() if line.strip()]
    assert any(line["msg"].startswith("listening on") for line in lines)
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)


def test_environment_variables_configure_the_node(tmp_path: Path) -> None:
    from msgbus_server.testing import Daemon

    env = {"MSGBUS_LOG_LEVEL": "warning", "MSGBUS_MAX_PAYLOAD_BYTES": "10"}
    with Daemon.start(tmp_path, storage="sqlite", node="acme/sales/pos-1", env=env) as daemon:
        stub = daemon.stub()
        node = stub.Health(pb.HealthRequest()).node
        assert (node.tenant_id, node.bl_name, node.device_id) == ("acme", "sales", "pos-1")
        with pytest.raises(grpc.RpcError) as info:
            stub.Publish(pb.PublishRequest(topic="t", payload=b"x" * 11))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        daemon.stop()
    # --log-level warning: the info line "listening on" is not printed.
    assert "listening on" not in daemon.stderr_text()
