"""Pattern Subscribe (topic_pattern): many logs merged in one stream, each in its own order.

Real daemons, real gRPC. The origins of these logs are the daemon's own (several topics); the
many-origin case through sync is tests/sync/test_pattern_subscribe_sync.py.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until

Log = tuple[str, str]


def _log(envelope: pb.MessageEnvelope) -> Log:
    origin = envelope.origin
    return envelope.topic, f"{origin.tenant_id}/{origin.bl_name}/{origin.device_id}"


async def _collect(
    stub: rpc.MsgbusServiceAsyncStub, request: pb.SubscribeRequest, count: int
) -> list[list[pb.MessageEnvelope]]:
    """The responses' messages (one list per response) until `count` messages arrived."""
    responses: list[list[pb.MessageEnvelope]] = []
    total = 0
    call = stub.Subscribe(request)
    try:
        async for response in call:
            batch = [response.message] if response.HasField("message") else list(response.messages)
            responses.append(batch)
            total += len(batch)
            if total >= count:
                break
    finally:
        call.cancel()
    return responses


def _per_log(responses: list[list[pb.MessageEnvelope]]) -> dict[Log, list[int]]:
    heads: dict[Log, list[int]] = defaultdict(list)
    for batch in responses:
        assert len({_log(m) for m in batch}) == 1, "a response carries messages of one log"
        for message in batch:
            heads[_log(message)].append(message.head_id)
    return heads


def _publish(stub: rpc.MsgbusServiceStub, topic: str, count: int) -> None:
    entries = [pb.PublishRequest(topic=topic, payload=b"%d" % i) for i in range(1, count + 1)]
    stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)


def _code(error: grpc.RpcError) -> grpc.StatusCode:
    code: grpc.StatusCode = error.code()
    return code


async def test_merges_matching_logs_in_order_and_picks_up_new_ones(
    tmp_path: Path, backend: str, name: Callable[[str], str]
) -> None:
    root = name("tele")
    with Daemon.start(tmp_path, storage=backend) as daemon:
        stub = daemon.stub()
        for index, count in enumerate((30, 1, 250)):
            _publish(stub, f"{root}.dev{index}", count)
        _publish(stub, f"{root}.dev0.deeper", 5)  # `*` crosses dots: root.* matches it
        _publish(stub, f"other-{root}.dev0", 5)
        async with daemon.aio_channel() as channel:
            astub = rpc.MsgbusServiceStub(channel)
            request = pb.SubscribeRequest(
                topic_pattern=f"{root}.*", replay_limit=16, max_messages_per_response=8
            )
            reader = asyncio.create_task(_collect(astub, request, 30 + 1 + 250 + 5 + 40 + 7))
            # A log that appears during the subscription, and more on an existing one.
            for i in range(40):
                await astub.Publish(pb.PublishRequest(topic=f"{root}.new", payload=b"%d" % i))
            for i in range(7):
                await astub.Publish(pb.PublishRequest(topic=f"{root}.dev1", payload=b"%d" % i))
            responses = await asyncio.wait_for(reader, 120)
    heads = _per_log(responses)
    origin = daemon.node.key
    assert heads == {
        (f"{root}.dev0", origin): list(range(1, 31)),
        (f"{root}.dev0.deeper", origin): list(range(1, 6)),
        (f"{root}.dev1", origin): list(range(1, 9)),
        (f"{root}.dev2", origin): list(range(1, 251)),
        (f"{root}.new", origin): list(range(1, 41)),
    }


async def test_a_busy_log_does_not_starve_the_others(
    tmp_path: Path, name: Callable[[str], str]
) -> None:
    root = name("fair")
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        _publish(stub, f"{root}.busy", 5_000)
        _publish(stub, f"{root}.quiet", 3)
        async with daemon.aio_channel() as channel:
            astub = rpc.MsgbusServiceStub(channel)
            request = pb.SubscribeRequest(topic_pattern=f"{root}.*", replay_limit=10)
            responses = await _collect(astub, request, 5_003)
    order = [_log(batch[0])[0] for batch in responses]
    # Round-robin by chunk: the quiet log's messages come within its first turns, not after
    # the busy log's 5,000.
    assert order.index(f"{root}.quiet") < 50
    assert _per_log(responses)[(f"{root}.busy", daemon.node.key)] == list(range(1, 5_001))


async def test_resume_after_resumes_each_log_exactly_after_its_head(
    tmp_path: Path, name: Callable[[str], str]
) -> None:
    root = name("resume")
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        for suffix in ("a", "b", "c"):
            _publish(stub, f"{root}.{suffix}", 20)
        node = pb.NodeId(
            tenant_id=daemon.node.tenant_id,
            bl_name=daemon.node.bl_name,
            device_id=daemon.node.device_id,
        )
        request = pb.SubscribeRequest(
            topic_pattern=f"{root}.*",
            from_head_id=5,
            resume_after=[
                pb.TopicHead(topic=f"{root}.a", origin=node, head_id=17),
                pb.TopicHead(topic=f"{root}.b", origin=node, head_id=20),
            ],
        )
        async with daemon.aio_channel() as channel:
            astub = rpc.MsgbusServiceStub(channel)
            reader = asyncio.create_task(_collect(astub, request, 3 + 16 + 1))
            await asyncio.sleep(0)
            await astub.Publish(pb.PublishRequest(topic=f"{root}.b", payload=b"21"))
            responses = await asyncio.wait_for(reader, 60)
    origin = daemon.node.key
    assert _per_log(responses) == {
        (f"{root}.a", origin): [18, 19, 20],
        (f"{root}.c", origin): list(range(5, 21)),
        (f"{root}.b", origin): [21],
    }


async def test_origin_pattern_and_tombstones(tmp_path: Path, name: Callable[[str], str]) -> None:
    root = name("trim")
    with Daemon.start(tmp_path, node="acme/hub/one") as daemon:
        stub = daemon.stub()
        _publish(stub, f"{root}.x", 10)
        stub.DeleteRange(pb.DeleteRangeRequest(topic=f"{root}.x", from_head_id=4, to_head_id=4))
        async with daemon.aio_channel() as channel:
            astub = rpc.MsgbusServiceStub(channel)
            matching = pb.SubscribeRequest(topic_pattern=f"{root}.*", origin_pattern="acme/*/*")
            responses = await _collect(astub, matching, 10)
            # A tombstone travels as for single-log Subscribe: head 4 is there, deleted.
            heads = _per_log(responses)[(f"{root}.x", "acme/hub/one")]
            assert heads == list(range(1, 11))
            other = pb.SubscribeRequest(topic_pattern=f"{root}.*", origin_pattern="other/*/*")
            call = astub.Subscribe(other)
            await astub.Publish(pb.PublishRequest(topic=f"{root}.x", payload=b"11"))
            with pytest.raises(asyncio.TimeoutError):
                # Nothing matches another tenant's origins: the stream stays silent.
                await asyncio.wait_for(call.read(), 1.0)
            call.cancel()


async def test_star_crosses_a_dot_in_a_subscription_as_in_a_retention_rule(
    tmp_path: Path, name: Callable[[str], str]
) -> None:
    """One glob rule: `ROOT.*` keeps and follows the same logs, however deep their topics."""
    root = name("glob")
    retention = ["--retention", f"{root}.*:max-messages=3"]
    with Daemon.start(tmp_path, extra_args=retention) as daemon:
        stub = daemon.stub()
        for topic in (f"{root}.a", f"{root}.a.b.c", f"{root}x.a"):
            _publish(stub, topic, 10)

        def first_head(topic: str) -> int:
            head = stub.GetHead(pb.GetHeadRequest(topic=topic), timeout=10)
            return int(head.first_head_id)

        # The retention rule trims both topics under ROOT. (one of them three levels down),
        # not ROOTx.a.
        wait_until(
            lambda: first_head(f"{root}.a") == 8 and first_head(f"{root}.a.b.c") == 8,
            message="retention trimming the logs its glob matches",
        )
        assert first_head(f"{root}x.a") == 1
        async with daemon.aio_channel() as channel:
            astub = rpc.MsgbusServiceStub(channel)
            request = pb.SubscribeRequest(topic_pattern=f"{root}.*")
            responses = await asyncio.wait_for(_collect(astub, request, 6), 60)
            # Nothing else arrives: ROOTx.a is not followed.
            extra = astub.Subscribe(request)
            await astub.Publish(pb.PublishRequest(topic=f"{root}x.a", payload=b"late"))
            await astub.Publish(pb.PublishRequest(topic=f"{root}.a.b.c", payload=b"late"))
            seen: list[str] = []

            async def until_the_late_message() -> None:
                async for response in extra:
                    seen.append(response.message.topic)
                    if (seen[-1], response.message.head_id) == (f"{root}.a.b.c", 11):
                        return

            try:
                await asyncio.wait_for(until_the_late_message(), 60)
            finally:
                extra.cancel()
    origin = daemon.node.key
    assert _per_log(responses) == {
        (f"{root}.a", origin): [8, 9, 10],
        (f"{root}.a.b.c", origin): [8, 9, 10],
    }
    assert f"{root}x.a" not in seen


_ORIGIN = pb.NodeId(tenant_id="a", bl_name="b", device_id="c")


@pytest.mark.parametrize(
    ("subscribe", "field"),
    [
        (pb.SubscribeRequest(topic="t", topic_pattern="t.*"), "topic"),
        (pb.SubscribeRequest(topic_pattern="t.*", origin=_ORIGIN), "origin"),
        (pb.SubscribeRequest(topic_pattern="   "), "topic_pattern"),
        (pb.SubscribeRequest(topic_pattern="t.[x"), "topic_pattern"),
        (pb.SubscribeRequest(topic_pattern="t.\x01x"), "topic_pattern"),
        (pb.SubscribeRequest(topic_pattern="t." + "x" * 254), "topic_pattern"),
        (pb.SubscribeRequest(topic_pattern="t.*", origin_pattern="a/[b/c"), "origin_pattern"),
        (pb.SubscribeRequest(topic="t", origin_pattern="a/*/*"), "origin_pattern"),
        (
            pb.SubscribeRequest(topic="t", resume_after=[pb.TopicHead(topic="t", head_id=1)]),
            "resume_after",
        ),
        (
            pb.SubscribeRequest(
                topic_pattern="t.*", resume_after=[pb.TopicHead(topic="t", head_id=1)]
            ),
            "resume_after[0].origin",
        ),
    ],
)
def test_invalid_requests_name_the_field(
    shared_daemon: Daemon, subscribe: pb.SubscribeRequest, field: str
) -> None:
    stub = shared_daemon.stub()
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stub.Subscribe(subscribe, timeout=10)))
    assert _code(caught.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(caught.value.details())
    assert stub.Health(pb.HealthRequest(), timeout=10).status


def test_too_many_resume_entries_are_refused(shared_daemon: Daemon) -> None:
    node = pb.NodeId(tenant_id="a", bl_name="b", device_id="c")
    entries = [pb.TopicHead(topic=f"t{i}", origin=node, head_id=1) for i in range(100_001)]
    request = pb.SubscribeRequest(topic_pattern="t*", resume_after=entries)
    stub = shared_daemon.stub()
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stub.Subscribe(request, timeout=30)))
    assert _code(caught.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert "resume_after has 100001 entries; the limit is 100000" in str(caught.value.details())
    # The limit itself is accepted.
    call = stub.Subscribe(
        pb.SubscribeRequest(topic_pattern="t*", resume_after=entries[:100_000]), timeout=5
    )
    with pytest.raises(grpc.RpcError) as waited:
        next(iter(call))
    assert _code(waited.value) is grpc.StatusCode.DEADLINE_EXCEEDED


def test_memory_stays_bounded_with_1000_logs_matched(
    tmp_path: Path, name: Callable[[str], str]
) -> None:
    """1,000 logs of 100 KiB each (100 MiB); subscribers that never read cost a bounded RSS."""
    root = name("many")
    payload = b"p" * 2048
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        for start in range(0, 1_000, 10):
            # 500 entries per batch: the response echoes every envelope, payloads included.
            entries = [
                pb.PublishRequest(topic=f"{root}.log{n:04d}", payload=payload)
                for n in range(start, start + 10)
                for _ in range(50)
            ]
            stub.PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=120)
        baseline = daemon.rss_kib()
        request = pb.SubscribeRequest(topic_pattern=f"{root}.*", max_messages_per_response=64)
        idle = [stub.Subscribe(request) for _ in range(8)]
        try:
            # Each idle stream got going (its first response is in flight) and stalls there.
            for call in idle:
                next(iter(call))
            reader = stub.Subscribe(request, timeout=300)
            seen: dict[str, int] = {}
            total = 0
            for response in reader:
                for message in response.messages:
                    last = seen.get(message.topic, 0)
                    assert message.head_id == last + 1
                    seen[message.topic] = message.head_id
                total += len(response.messages)
                if total >= 50_000:
                    break
            reader.cancel()  # type: ignore[no-untyped-call]
            assert len(seen) == 1_000
            assert set(seen.values()) == {50}
            grown = daemon.rss_kib() - baseline
            print(f"RSS grew {grown} KiB over a baseline of {baseline} KiB")
            # 100 MiB matched by 9 subscriptions; a per-log buffer would hold far more.
            assert grown < 64 * 1024
        finally:
            for call in idle:
                call.cancel()  # type: ignore[no-untyped-call]
        assert stub.Health(pb.HealthRequest(), timeout=10).status
