"""Fleet sync (issue 17): a device dials its hub with --upstream and syncs both ways over it.

Real msgbusd processes on loopback, plaintext (the hub takes the device's hello, with a
warning). The hub has no --peer for the device and never dials it: it only serves Push.
"""

from __future__ import annotations

import signal
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
                lambda: [s for s in pushed_states(hub_stub, device_id) if s.topic]
                and [
                    s
                    for s in pushed_states(hub_stub, device_id)
                    if s.topic == "telemetry.temp" and s.local_head == 60
                ],
                message="the hub's pushed record",
            )
            assert states[0].last_error == ""
            device_states = wait_until(
                lambda: [
                    s
                    for s in sync_states(device_stub)
                    if s.direction == "push" and s.topic == "telemetry.temp"
                    and s.remote_head == 60
                ],
                message="the device's push record",
            )
            assert device_states[0].peer == hub.endpoint
            assert {s.direction for s in sync_states(device_stub)} >= {"push", "pull"}
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
