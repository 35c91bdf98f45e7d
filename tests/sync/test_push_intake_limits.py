"""The hub's Push service against bad input (issue 17): a clear error naming the field and the
limit, nothing stored, the daemon keeps serving; and `--upstream` configuration errors are one
line and exit 2. Real msgbusd processes, raw grpc stubs."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb
from msgbus_server.testing import Daemon, run_msgbusd
from msgbus_testkit.logs import heads

DEVICE = pb.NodeId(tenant_id="tenant", bl_name="default", device_id="pusher")


def hello() -> pb.PushRequest:
    return pb.PushRequest(hello=pb.PushHello(node=DEVICE))


def push(daemon: Daemon, requests: list[pb.PushRequest]) -> list[pb.PushResponse]:
    return list(daemon.stub().Push(iter(requests), timeout=30))


def envelope(head: int, payload: bytes) -> pb.MessageEnvelope:
    return pb.MessageEnvelope(
        id=f"00000000-0000-4000-8000-{head:012d}",
        topic="limits",
        origin=DEVICE,
        head_id=head,
        payload=payload,
        created_at_ms=1,
    )


def test_bad_push_streams_are_refused_by_name_and_store_nothing(tmp_path: Path) -> None:
    with Daemon.start(tmp_path, node="tenant/default/hub") as hub:
        # A stream that does not start with a hello.
        with pytest.raises(grpc.RpcError) as no_hello:
            push(hub, [pb.PushRequest(offer=pb.PushOffer())])
        assert no_hello.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "hello" in (no_hello.value.details() or "")
        # A hello without a node.
        with pytest.raises(grpc.RpcError) as no_node:
            push(hub, [pb.PushRequest(hello=pb.PushHello())])
        assert no_node.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "hello.node" in (no_node.value.details() or "")
        # An offer above 1,000 heads.
        offer = pb.PushOffer(
            heads=[pb.TopicHead(topic=f"t{i}", origin=DEVICE, head_id=1) for i in range(1001)]
        )
        with pytest.raises(grpc.RpcError) as big_offer:
            push(hub, [hello(), pb.PushRequest(offer=offer)])
        assert big_offer.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "offer.heads" in (big_offer.value.details() or "")
        assert "1000" in (big_offer.value.details() or "").replace(",", "")
        # A batch above the welcome's 3 MiB (several messages): refused in its ack, the stream
        # goes on and a good batch after it is taken.
        big = [envelope(head, bytes(1024 * 1024)) for head in range(1, 5)]
        responses = push(
            hub,
            [
                hello(),
                pb.PushRequest(
                    batch=pb.PushBatch(batch_id=1, topic="limits", origin=DEVICE, messages=big)
                ),
                pb.PushRequest(
                    batch=pb.PushBatch(
                        batch_id=2, topic="limits", origin=DEVICE, messages=[envelope(1, b"ok")]
                    )
                ),
            ],
        )
        welcome, refused, taken = responses
        limit = welcome.welcome.max_batch_bytes
        assert limit == 3 * 1024 * 1024
        assert refused.ack.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert str(limit) in refused.ack.error_message
        assert "batch.messages" in refused.ack.error_message
        assert (taken.ack.error_code, taken.ack.head_id) == (0, 1)
        assert heads(hub.stub())[("limits", "tenant/default/pusher")] == 1
        assert hub.stub().Health(pb.HealthRequest(), timeout=10).status == "SERVING"
        assert "Traceback" not in hub.stderr_text()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:1;sideways=a.*", "peer option 'sideways=a.*' is not push=GLOBS or pull=GLOBS"),
        ("127.0.0.1:1;pull=a.*||b", "empty topic glob"),
        ("nohost", "not of the form host:port"),
    ],
)
def test_bad_upstream_is_one_line_and_exit_2(value: str, expected: str) -> None:
    result = run_msgbusd(["--upstream", value])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("msgbusd: error: --upstream: ")
    assert expected in lines[0]
