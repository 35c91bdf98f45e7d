"""Hostile PublishStream requests against a real daemon (issue 20): whatever a request holds,
its answer is OK or an allowed refusal in `error_code`, a refused request stores nothing, the
stream goes on to the next request, and bodies that do not decode end the stream with
INVALID_ARGUMENT; the daemon keeps serving throughout."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgbus_proto import SERVICE_NAME, pb, rpc
from msgbus_server.testing import Daemon
from msgbus_testkit.calls import ALLOWED_REJECTIONS

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ALLOWED = {code.value[0] for code in ALLOWED_REJECTIONS}
MARKER = "fuzz.stream.marker"
"""A valid publish after every hostile one: it must be answered, and stored, every time."""

texts = st.text(max_size=40) | st.sampled_from(["", "$msgbus.delete", "a\0b", "é" * 300])
requests = st.builds(
    pb.PublishRequest,
    topic=texts,
    payload=st.binary(max_size=5000),
    headers=st.dictionaries(texts, texts, max_size=4),
    idempotency_key=st.text(max_size=200),
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon.start(
        tmp_path_factory.mktemp("hostile-stream"), extra_args=["--max-payload-bytes", "4096"]
    ) as running:
        yield running
        assert "Traceback" not in running.stderr_text()


def _head(stub: rpc.MsgbusServiceStub, topic: str) -> int:
    return int(stub.GetHead(pb.GetHeadRequest(topic=topic)).head_id)


@FUZZ
@given(single=requests, entries=st.lists(requests, max_size=5))
def test_hostile_requests_are_answered_and_the_stream_goes_on(
    daemon: Daemon, single: pb.PublishRequest, entries: list[pb.PublishRequest]
) -> None:
    stub = daemon.stub()
    marker_head = _head(stub, MARKER)
    sent = [
        pb.PublishStreamRequest(request_id=1, publish=single),
        pb.PublishStreamRequest(request_id=2, entries=entries),
        pb.PublishStreamRequest(request_id=3, publish=pb.PublishRequest(topic=MARKER)),
    ]
    answers = list(stub.PublishStream(iter(sent), timeout=30))
    assert [a.request_id for a in answers] == [1, 2, 3]
    for answer in answers[:2]:
        if answer.error_code:
            assert answer.error_code in ALLOWED, answer
            assert not answer.messages
    assert answers[2].error_code == 0
    assert answers[2].messages[0].head_id == marker_head + 1
    assert daemon.poll() is None


@FUZZ
@given(body=st.binary(max_size=256) | st.sampled_from([b"\xff\xff\xff", b"\x0a\x02\xc3\x28"]))
def test_undecodable_bodies_end_the_stream_with_invalid_argument(
    daemon: Daemon, body: bytes
) -> None:
    try:
        pb.PublishStreamRequest.FromString(body)
    except Exception:
        decodes = False
    else:
        decodes = True
    channel = daemon.channel()
    call = channel.stream_stream(
        f"/{SERVICE_NAME}/PublishStream",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.PublishStreamResponse.FromString,
    )
    if decodes:
        answers = list(call(iter([body]), timeout=30))
        assert len(answers) == 1
        assert answers[0].error_code in ALLOWED | {0}
    else:
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter([body]), timeout=30))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert daemon.poll() is None


def test_the_daemon_still_serves(daemon: Daemon) -> None:
    assert daemon.stub().Health(pb.HealthRequest()).status == "SERVING"
