"""PublishStream under a policy: each request is decided by the rules of Publish and
PublishBatch, a denied one is answered PERMISSION_DENIED (audited) and the stream goes on, and
the SDK's publishes over the stream raise the same PermissionDeniedError as unary calls."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_sdk import MsgbusClient, PermissionDeniedError
from msgbus_server.testing import Daemon

PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]


def _policy(tmp_path: Path) -> Path:
    config = tmp_path / "msgbusd.toml"
    config.write_text(
        f'[policy]\n[[policy.rule]]\nname = "mine"\ncallers = ["uid:{os.geteuid()}"]\n'
        'allow = ["publish", "read"]\ntopics = ["mine.*"]\n'
    )
    return config


def test_each_stream_request_is_authorized_and_a_denial_keeps_the_stream(
    tmp_path: Path, socket_dir: Path
) -> None:
    path = socket_dir / "stream.sock"
    extra = ["--listen", f"unix://{path}", "--config", str(_policy(tmp_path))]
    with Daemon.start(tmp_path, extra_args=extra) as daemon:
        channel = grpc.insecure_channel(f"unix://{path}")
        stub = rpc.MsgbusServiceStub(channel)
        requests = [
            pb.PublishStreamRequest(
                request_id=1, publish=pb.PublishRequest(topic="mine.a", payload=b"1")
            ),
            pb.PublishStreamRequest(
                request_id=2, publish=pb.PublishRequest(topic="theirs.a", payload=b"no")
            ),
            pb.PublishStreamRequest(
                request_id=3,
                entries=[pb.PublishRequest(topic="mine.a"), pb.PublishRequest(topic="theirs.b")],
            ),
            pb.PublishStreamRequest(
                request_id=4, publish=pb.PublishRequest(topic="mine.a", payload=b"2")
            ),
        ]
        first, denied, denied_batch, last = stub.PublishStream(iter(requests))
        head = stub.GetHead(pb.GetHeadRequest(topic="mine.a")).head_id
        channel.close()
        stderr = daemon.stderr_text()
    assert [m.head_id for m in first.messages] == [1]
    assert denied.error_code == PERMISSION_DENIED
    assert f"uid:{os.geteuid()} may not publish to topic 'theirs.a'" in denied.error_message
    assert not denied.messages
    assert denied_batch.error_code == PERMISSION_DENIED
    assert "publish to topic 'theirs.b' (entries[1])" in denied_batch.error_message
    assert [m.head_id for m in last.messages] == [2]
    assert head == 2  # nothing of the denied requests was stored
    assert "denied PublishStream (PERMISSION_DENIED)" in stderr


def test_the_sdk_publishing_on_the_stream_gets_the_unary_denial(
    tmp_path: Path, socket_dir: Path
) -> None:
    path = socket_dir / "sdk-stream.sock"
    extra = ["--listen", f"unix://{path}", "--config", str(_policy(tmp_path))]
    with Daemon.start(tmp_path, extra_args=extra), MsgbusClient.connect(f"unix://{path}") as bus:
        assert bus.publish("mine.events", b"ok").head_id == 1
        assert bus.publishes_over_stream
        with pytest.raises(PermissionDeniedError) as info:
            bus.publish("theirs.events", b"no")
        assert info.value.field == "topic"
        assert bus.publish("mine.events", b"again").head_id == 2
