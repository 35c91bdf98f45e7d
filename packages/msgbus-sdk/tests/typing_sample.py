"""A sample application that uses every public method; `mypy --strict` must accept it.

Checked by test_typing.py (and by scripts/typecheck.sh in CI). It is also runnable against a
daemon: `python typing_sample.py 127.0.0.1:50051`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from msgbus_sdk import (
    AsyncMsgbusClient,
    AsyncSubscription,
    FifoMessage,
    GetHeadResponse,
    HealthResponse,
    MessageEnvelope,
    MsgbusClient,
    MsgbusError,
    NodeId,
    NotFoundError,
    PeerSyncState,
    PublishEntry,
    ReadyResponse,
    ReconnectPolicy,
    StatusCode,
    Subscription,
    TlsConfig,
    TopicHead,
    UnavailableError,
    node_key,
)


async def use_async(endpoint: str) -> int:
    tls: TlsConfig | None = None
    async with await AsyncMsgbusClient.connect(
        endpoint, tls=tls, timeout=5.0, coalesce_publishes=True
    ) as bus:
        health: HealthResponse = await bus.health()
        ready: ReadyResponse = await bus.ready()
        node: NodeId | None = bus.node
        sent: MessageEnvelope = await bus.publish("typing.demo", b"x", {"k": "v"})
        batch: list[MessageEnvelope] = await bus.publish_batch(
            [PublishEntry("typing.demo", b"a", {"k": "v"}), ("typing.other", "b")]
        )
        coalescing: bool = bus.coalesces_publishes
        page: list[MessageEnvelope] = await bus.fetch("typing.demo", node, sent.head_id, 10)
        total = 0
        async for message in bus.iter_fetch("typing.demo", page_size=100):
            total += len(message.payload)
        policy = ReconnectPolicy(initial_delay=0.1, max_delay=2.0, max_attempts=5)
        subscription: AsyncSubscription = bus.subscribe(
            "typing.demo", from_head_id=sent.head_id, replay_limit=10, reconnect=policy
        )
        async with subscription:
            async for live in subscription:
                assert live.head_id == sent.head_id
                break
        head: GetHeadResponse = await bus.get_head("typing.demo")
        heads: list[TopicHead] = await bus.list_heads()
        states: list[PeerSyncState] = await bus.list_peer_sync_states()
        deleted: int = await bus.delete_range("typing.demo", sent.head_id, sent.head_id)
        target = node or "tenant/default/device"
        job: FifoMessage = await bus.enqueue_fifo("typing.q", "typing.demo", target, "job")
        front: FifoMessage | None = await bus.peek_fifo("typing.q")
        if front is not None:
            rejected: bool = await bus.reject_fifo("typing.q", front.id)
            acked: bool = await bus.ack_fifo("typing.q", job.id)
            assert rejected
            assert acked
        print(health.status, ready.ready, len(page), total, head.head_id, len(heads))
        print(len(states), deleted, node_key(node), len(batch), coalescing)
        return total


def use_sync(endpoint: str) -> int:
    try:
        bus = MsgbusClient.connect(endpoint, default_origin=None)
    except UnavailableError as error:
        code: StatusCode | None = error.code
        print(f"unreachable ({code}): {error.message}")
        return 3
    with bus:
        health: HealthResponse = bus.health()
        ready: ReadyResponse = bus.ready()
        sent: MessageEnvelope = bus.publish("typing.demo", "text payload")
        batch: list[MessageEnvelope] = bus.publish_batch([("typing.demo", b"one", None)])
        page: list[MessageEnvelope] = bus.fetch("typing.demo", limit=1)
        count = sum(1 for _ in bus.iter_fetch("typing.demo", None, 1, sent.head_id))
        subscription: Subscription = bus.subscribe("typing.demo", from_head_id=sent.head_id)
        with subscription:
            first: MessageEnvelope = next(iter(subscription))
        head: GetHeadResponse = bus.get_head("typing.demo", bus.node)
        heads: list[TopicHead] = bus.list_heads()
        states: list[PeerSyncState] = bus.list_peer_sync_states()
        try:
            deleted: int = bus.delete_range("typing.demo", 1, 0)
        except MsgbusError as error:
            deleted = -1
            print(type(error).__name__, error.code, error.message)
        node = bus.node or NodeId(tenant_id="tenant", bl_name="default", device_id="device")
        job: FifoMessage = bus.enqueue_fifo("typing.q", "typing.demo", node, b"job", {"a": "b"})
        front: FifoMessage | None = bus.peek_fifo("typing.q")
        acked: bool = bus.ack_fifo("typing.q", job.id)
        rejected: bool = bus.reject_fifo("typing.q", job.id)
        print(health.status, ready.ready, len(page), count, first.head_id, head.found)
        print(len(heads), len(states), deleted, front is not None, acked, rejected, len(batch))
        return count


def main() -> None:
    endpoint = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    with contextlib.suppress(NotFoundError):
        asyncio.run(use_async(endpoint))
    use_sync(endpoint)


if __name__ == "__main__":
    main()
