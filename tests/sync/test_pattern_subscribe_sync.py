"""A hub application reads `telemetry` of 50 devices through one pattern subscription.

Fifty origin daemons publish; a hub daemon pulls them all (--peer). Ten of the devices publish
nothing until the subscription runs, so their logs appear at the hub during it. Halfway the
hub daemon is killed and restarted: the SDK's subscription reconnects and resumes each log
exactly after its last delivered head. Every message arrives exactly once, in per-log order.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from msgbus_proto import pb
from msgbus_sdk import MsgbusClient, ReconnectPolicy
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.peers import start_node

ORIGINS = 50
LATE = 10
"""Devices whose telemetry log appears only once the subscription runs."""
BEFORE, DURING, AFTER = 20, 10, 10
"""Messages per device: before the subscription, while it runs, after the hub restarted."""
FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.5, max_attempts=None)


def _publish(device: Daemon, count: int) -> None:
    entries = [
        pb.PublishRequest(topic="telemetry", payload=f"{device.node.device_id}".encode())
    ] * count
    device.stub().PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)


def test_fifty_origins_arriving_by_sync_exactly_once_across_a_hub_restart(
    tmp_path: Path,
) -> None:
    with ExitStack() as stack, ThreadPoolExecutor(4) as pool:
        names = [f"dev{index:02d}" for index in range(ORIGINS)]
        devices = [
            stack.enter_context(daemon)
            for daemon in pool.map(lambda name: start_node(tmp_path, name), names)
        ]
        early, late = devices[:-LATE], devices[-LATE:]
        list(pool.map(lambda device: _publish(device, BEFORE), early))
        hub = stack.enter_context(
            start_node(tmp_path, "hub", peers=[(d.endpoint, d.node.key) for d in devices])
        )
        received: dict[str, list[int]] = defaultdict(list)
        lock = threading.Lock()
        expected = {d.node.key: BEFORE + DURING + AFTER for d in early}
        expected |= {d.node.key: DURING + AFTER for d in late}

        def count() -> int:
            with lock:
                return sum(len(heads) for heads in received.values())

        with MsgbusClient.connect(hub.endpoint) as bus:
            subscription = bus.subscribe_pattern("telemetry", reconnect=FAST)

            def consume() -> None:
                for message in subscription:
                    origin = message.origin
                    assert origin is not None
                    with lock:
                        key = f"{origin.tenant_id}/{origin.bl_name}/{origin.device_id}"
                        received[key].append(message.head_id)

            consumer = threading.Thread(target=consume, daemon=True)
            consumer.start()
            wait_until(
                lambda: count() >= len(early) * BEFORE // 2,
                message="half of the backlog through the subscription",
                timeout=120,
            )
            list(pool.map(lambda device: _publish(device, DURING), devices))
            hub.kill()
            hub.restart()
            list(pool.map(lambda device: _publish(device, AFTER), devices))
            wait_until(
                lambda: count() >= sum(expected.values()),
                message="every device's messages through the subscription",
                timeout=180,
            )
            subscription.close()
            consumer.join(30)
        with lock:
            assert {key: len(heads) for key, heads in received.items()} == expected
            for key, heads in received.items():
                assert heads == list(range(1, expected[key] + 1)), key
