"""A subscriber waiting live on a follower gets every message that sync brings, once, in order.

Sync commits each batch (thousands of messages) as one ReplicateOp, and the commit pipeline
notifies the log once per batch, at its last head. A live subscriber must still see every
message of every batch: it wakes and reads the store from its own next head.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

from msgbus_proto import pb
from msgbus_sdk import MsgbusClient
from msgbus_server.testing import wait_until
from msgbus_testkit.peers import start_node

TOPIC = "live.events"
ROUNDS, PER_ROUND = 3, 2_000


def test_a_live_subscriber_on_a_follower_gets_each_synced_batch_whole(tmp_path: Path) -> None:
    with ExitStack() as stack:
        leader = stack.enter_context(start_node(tmp_path, "leader"))
        follower = stack.enter_context(
            start_node(tmp_path, "follower", peers=[(leader.endpoint, leader.node.key)])
        )
        received: list[int] = []
        lock = threading.Lock()
        with MsgbusClient.connect(follower.endpoint) as bus:
            subscription = bus.subscribe(TOPIC, origin=leader.node.key, from_head_id=1)

            def consume() -> None:
                for message in subscription:
                    with lock:
                        received.append(message.head_id)

            consumer = threading.Thread(target=consume, daemon=True)
            consumer.start()
            for round_ in range(1, ROUNDS + 1):
                entries = [pb.PublishRequest(topic=TOPIC, payload=b"p" * 256)] * PER_ROUND
                leader.stub().PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)

                def arrived(count: int = round_ * PER_ROUND) -> bool:
                    with lock:
                        return len(received) >= count

                wait_until(arrived, message=f"round {round_} through the subscription", timeout=60)
            subscription.close()
        assert received == list(range(1, ROUNDS * PER_ROUND + 1))
