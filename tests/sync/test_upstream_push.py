"""Fleet sync (issue 17): a device dials its hub with --upstream and syncs both ways over it.

Real msgbusd processes on loopback, plaintext (the hub takes the device's hello, with a
warning). The hub has no --peer for the device and never dials it: it only serves Push.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from msgbus_core import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, free_port, wait_until
from msgbus_testkit.logs import fetch_rows, heads, publish_many
from msgbus_testkit.nodes import node_id
from msgbus_testkit.peers import start_node, sync_states


def upstream_node(
    tmp_path: Path, name: str, hub: str | None, *, spec: str = "", extra: tuple[str, ...] = ()
) -> Daemon:
    """A device daemon named `name` with `--upstream hub[spec]`."""
    args = ["--upstream", f"{hub}{spec}"] if hub else []
    return start_node(tmp_path, name, extra=[*args, *extra])


def log_heads(stub: rpc.MsgbusServiceStub) -> dict[tuple[str, str], int]:
    return heads(stub)


def pushed_states(hub: rpc.MsgbusServiceStub, device: NodeId) -> list[pb.PeerSyncState]:
    return [s for s in sync_states(hub) if s.direction == "pushed" and s.peer == device.key]


def assert_whole_log(stub: rpc.MsgbusServiceStub, topic: str, origin: NodeId, count: int) -> None:
    """The log holds heads 1..count exactly once each, with the published payloads in order."""
    rows = fetch_rows(stub, topic, origin)
    assert [row.head_id for row in rows] == list(range(1, count + 1))


def test_device_and_hub_converge_both_ways_over_the_device_connection(tmp_path: Path) -> None:
    device_id = node_id("device1")
    with start_node(tmp_path, "hub") as hub:
        hub_stub = hub.stub()
        publish_many(hub_stub, "config.site", 5, "cfg")
        with upstream_node(tmp_path, "device1", hub.endpoint) as device:
            device_stub = device.stub()
            publish_many(device_stub, "telemetry.temp", 50, "t")
            wait_until(
                lambda: log_heads(hub_stub).get(("telemetry.temp", device_id.key)) == 50,
                message="device logs on the hub",
            )
            wait_until(
                lambda: log_heads(device_stub).get(("config.site", hub.node.key)) == 5,
                message="hub config on the device (pulled over the upstream channel)",
            )
            # Live: a new publish is pushed without a restart.
            publish_many(device_stub, "telemetry.temp", 10, "u")
            wait_until(
                lambda: log_heads(hub_stub).get(("telemetry.temp", device_id.key)) == 60,
                message="live pushes on the hub",
            )
            assert_whole_log(hub_stub, "telemetry.temp", device_id, 60)
            assert fetch_rows(hub_stub, "telemetry.temp", device_id) == fetch_rows(
                device_stub, "telemetry.temp", device_id
            )
            # Sync state: the hub keys the records by the pusher's identity, the device keeps
            # push and pull records of the upstream apart.
            states = wait_until(
                lambda: (
                    [s for s in pushed_states(hub_stub, device_id) if s.topic]
                    and [
                        s
                        for s in pushed_states(hub_stub, device_id)
                        if s.topic == "telemetry.temp" and s.local_head == 60
                    ]
                ),
                message="the hub's pushed record",
            )
            assert states[0].last_error == ""
            device_states = wait_until(
                lambda: [
                    s
                    for s in sync_states(device_stub)
                    if s.direction == "push" and s.topic == "telemetry.temp" and s.remote_head == 60
                ],
                message="the device's push record",
            )
            assert device_states[0].peer == hub.endpoint
            assert {s.direction for s in sync_states(device_stub)} >= {"push", "pull"}
            # The hub's own logs, pulled from it, are not offered back to it.
            assert [s.last_error for s in sync_states(device_stub) if s.last_error] == []
            # `msgbus sync-state` shows the upstream both ways, with the lag of each log.
            shown = subprocess.run(
                [sys.executable, "-m", "msgbus_sdk", "--endpoint", device.endpoint, "sync-state"],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
            header, *rows = shown.splitlines()
            assert header.split()[:7] == [
                "PEER",
                "DIRECTION",
                "TOPIC",
                "ORIGIN",
                "LOCAL",
                "REMOTE",
                "LAG",
            ]
            pushed_row = next(r.split() for r in rows if " push " in r and "telemetry.temp" in r)
            assert pushed_row[:7] == [
                hub.endpoint,
                "push",
                "telemetry.temp",
                device_id.key,
                "60",
                "60",
                "0",
            ]
        assert "identified by its hello only" in hub.stderr_text()


def test_messages_published_while_the_hub_is_down_all_arrive(tmp_path: Path) -> None:
    device_id = node_id("device1")
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    with upstream_node(tmp_path, "device1", endpoint) as device:
        device_stub = device.stub()
        publish_many(device_stub, "telemetry.offline", 10_000, "o")
        with start_node(tmp_path, "hub", port=port) as hub:
            hub_stub = hub.stub()
            wait_until(
                lambda: log_heads(hub_stub).get(("telemetry.offline", device_id.key)) == 10_000,
                message="10,000 offline messages on the hub",
                timeout=120,
            )
            assert_whole_log(hub_stub, "telemetry.offline", device_id, 10_000)


def test_hub_killed_mid_push_keeps_what_it_acknowledged_and_gets_the_rest(
    tmp_path: Path,
) -> None:
    device_id = node_id("device1")
    total = 10_000
    port = free_port()
    with start_node(tmp_path, "hub", port=port) as hub:
        with upstream_node(tmp_path, "device1", None) as device:
            device_stub = device.stub()
            # 20 MB: several batches of at most 3 MiB each.
            for start in range(0, total, 1000):
                entries = [
                    pb.PublishRequest(topic="bulk", payload=bytes(2000) + str(i).encode())
                    for i in range(start, start + 1000)
                ]
                device_stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=30)
        # The device starts again with the hub as its upstream: the push begins at once.
        with upstream_node(tmp_path, "device1", hub.endpoint) as device:
            device_stub = device.stub()
            acked = wait_until(
                lambda: max(
                    (
                        s.remote_head
                        for s in sync_states(device_stub)
                        if s.direction == "push" and s.topic == "bulk"
                    ),
                    default=0,
                ),
                message="the device's first acknowledged batch on record",
                interval=0.01,
            )
            hub.signal(signal.SIGKILL)
            hub.wait(10)
            hub.restart()
            hub_stub = hub.stub()
            # Everything the device has on record as acknowledged survived the kill.
            assert log_heads(hub_stub).get(("bulk", device_id.key), 0) >= acked
            wait_until(
                lambda: log_heads(hub_stub).get(("bulk", device_id.key)) == total,
                message="the rest after the restart",
                timeout=120,
            )
            assert_whole_log(hub_stub, "bulk", device_id, total)


class CuttableProxy:
    """A TCP relay to `target`, at most `rate` bytes/s each way, that the test can cut: every
    open connection is reset."""

    def __init__(self, target: tuple[str, int], rate: float) -> None:
        self._target = target
        self._rate = rate
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                time.sleep(len(data) / self._rate)  # the link's rate, not a wait for a condition
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()

    def cut(self) -> None:
        """Reset every connection through the proxy (new ones are relayed again)."""
        with self._lock:
            conns, self._open = self._open, []
            self.cuts += 1
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

    def close(self) -> None:
        self._server.close()
        self.cut()


def publish_bulk(stub: rpc.MsgbusServiceStub, topic: str, total: int, size: int = 2000) -> None:
    for start in range(0, total, 1000):
        entries = [
            pb.PublishRequest(topic=topic, payload=bytes(size) + str(i).encode())
            for i in range(start, min(start + 1000, total))
        ]
        stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=30)


def acked_on_device(device_stub: rpc.MsgbusServiceStub, topic: str) -> int:
    return max(
        (
            s.remote_head
            for s in sync_states(device_stub)
            if s.direction == "push" and s.topic == topic
        ),
        default=0,
    )


def test_connection_cut_mid_push_resumes_without_duplicate_or_gap(tmp_path: Path) -> None:
    device_id = node_id("device1")
    total = 10_000
    with start_node(tmp_path, "hub") as hub:
        # 20 MB at 4 MB/s: the push takes about 5 s, so the cut lands in the middle of it.
        proxy = CuttableProxy(("127.0.0.1", hub.port), rate=4_000_000)
        try:
            with upstream_node(tmp_path, "device1", None) as device:
                publish_bulk(device.stub(), "bulk", total)
            with upstream_node(tmp_path, "device1", proxy.endpoint) as device:
                device_stub = device.stub()
                hub_stub = hub.stub()
                acked = wait_until(
                    lambda: acked_on_device(device_stub, "bulk"),
                    message="a first acknowledged batch",
                    interval=0.01,
                )
                proxy.cut()
                assert acked < total, "the push ended before the cut: the test proves nothing"
                wait_until(
                    lambda: log_heads(hub_stub).get(("bulk", device_id.key)) == total,
                    message="the whole log after the cut",
                    timeout=120,
                )
                assert_whole_log(hub_stub, "bulk", device_id, total)
                assert fetch_rows(hub_stub, "bulk", device_id) == fetch_rows(
                    device_stub, "bulk", device_id
                )
                assert "push stopped" in device.stderr_text()
        finally:
            proxy.close()


def test_partial_replication_moves_only_matching_logs_both_ways(tmp_path: Path) -> None:
    device_id = node_id("device1")
    with start_node(tmp_path, "hub") as hub:
        hub_stub = hub.stub()
        # Sorted before the matching ones, so a filter that let them through would move them
        # first (pull and push work through logs in topic order).
        publish_many(hub_stub, "aaa.hub-private", 3, "h")
        publish_many(hub_stub, "config.site", 4, "c")
        with upstream_node(
            tmp_path, "device1", hub.endpoint, spec=";push=telemetry.*;pull=config.*"
        ) as device:
            device_stub = device.stub()
            publish_many(device_stub, "aaa.device-private", 3, "d")
            publish_many(device_stub, "telemetry.temp", 5, "t")
            wait_until(
                lambda: log_heads(hub_stub).get(("telemetry.temp", device_id.key)) == 5,
                message="telemetry on the hub",
            )
            wait_until(
                lambda: log_heads(device_stub).get(("config.site", hub.node.key)) == 4,
                message="config on the device",
            )
            assert ("aaa.device-private", device_id.key) not in log_heads(hub_stub)
            assert ("aaa.hub-private", hub.node.key) not in log_heads(device_stub)


def test_device_against_a_daemon_without_push_pulls_and_says_so_once(tmp_path: Path) -> None:
    with start_node(tmp_path, "hub", extra=["--no-push-service"]) as hub:
        hub_stub = hub.stub()
        publish_many(hub_stub, "config.site", 3, "c")
        with upstream_node(tmp_path, "device1", hub.endpoint) as device:
            device_stub = device.stub()
            publish_many(device_stub, "telemetry.temp", 3, "t")
            wait_until(
                lambda: log_heads(device_stub).get(("config.site", hub.node.key)) == 3,
                message="config pulled from the original-like hub",
            )
            wait_until(
                lambda: "has no Push RPC" in device.stderr_text(), message="the fallback line"
            )
            publish_many(hub_stub, "config.site", 2, "c2")
            wait_until(
                lambda: log_heads(device_stub).get(("config.site", hub.node.key)) == 5,
                message="later config pulled too",
            )
            assert device.stderr_text().count("has no Push RPC") == 1
            assert ("telemetry.temp", node_id("device1").key) not in log_heads(hub_stub)
            state = wait_until(
                lambda: [
                    s
                    for s in sync_states(device_stub)
                    if s.direction == "push" and not s.topic and s.last_error
                ],
                message="the push record naming the fallback",
            )
            assert "no Push RPC" in state[0].last_error


def test_relayed_origins_are_refused_unless_accept_relayed(tmp_path: Path) -> None:
    relay_id, third_id = node_id("relay"), node_id("third")
    port = free_port()
    with start_node(tmp_path, "third") as third:
        publish_many(third.stub(), "sensor.third", 4, "x")
        with start_node(tmp_path, "hub", port=port) as hub:
            hub_stub = hub.stub()
            with upstream_node(
                tmp_path,
                "relay",
                hub.endpoint,
                extra=("--peer", f"{third.endpoint}={third_id.key}"),
            ) as relay:
                relay_stub = relay.stub()
                wait_until(
                    lambda: log_heads(relay_stub).get(("sensor.third", third_id.key)) == 4,
                    message="the relay holding the third node's log",
                )
                publish_many(relay_stub, "sensor.relay", 2, "r")
                wait_until(
                    lambda: log_heads(hub_stub).get(("sensor.relay", relay_id.key)) == 2,
                    message="the relay's own log on the hub",
                )
                refused = wait_until(
                    lambda: [
                        s
                        for s in pushed_states(hub_stub, relay_id)
                        if s.topic == "sensor.third" and s.last_error
                    ],
                    message="the refusal recorded per device on the hub",
                )
                assert "--accept-relayed" in refused[0].last_error
                assert ("sensor.third", third_id.key) not in log_heads(hub_stub)
                assert "not taken" in hub.stderr_text()
        with start_node(tmp_path, "hub", port=port, extra=["--accept-relayed"]) as hub:
            hub_stub = hub.stub()
            with upstream_node(
                tmp_path,
                "relay",
                hub.endpoint,
                extra=("--peer", f"{third.endpoint}={third_id.key}"),
            ):
                wait_until(
                    lambda: log_heads(hub_stub).get(("sensor.third", third_id.key)) == 4,
                    message="the relayed log with --accept-relayed",
                )
            assert_whole_log(hub_stub, "sensor.third", third_id, 4)
