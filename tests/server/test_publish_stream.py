"""PublishStream against real daemons: answers in request order once durable, refusals answered
per request with the stream going on, the in-flight bound, undecodable requests, shutdown."""

from __future__ import annotations

import queue
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.publish_stream import MAX_IN_FLIGHT_BYTES, MAX_IN_FLIGHT_REQUESTS
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.metrics import metrics_args, scrape_until

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]


def _publish(request_id: int, topic: str, payload: bytes = b"x") -> pb.PublishStreamRequest:
    return pb.PublishStreamRequest(
        request_id=request_id, publish=pb.PublishRequest(topic=topic, payload=payload)
    )


def _head(stub: rpc.MsgbusServiceStub, topic: str) -> int:
    return int(stub.GetHead(pb.GetHeadRequest(topic=topic)).head_id)


class _Stream:
    """A PublishStream whose requests the test sends one by one (a queue feeds gRPC)."""

    _END = object()

    def __init__(self, stub: rpc.MsgbusServiceStub, timeout: float | None = None) -> None:
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        requests = cast("Iterator[pb.PublishStreamRequest]", iter(self._requests.get, self._END))
        self.call = stub.PublishStream(requests, timeout=timeout)

    def send(self, request: pb.PublishStreamRequest) -> None:
        self._requests.put(request)

    def close(self) -> None:
        self._requests.put(self._END)

    def next(self) -> pb.PublishStreamResponse:
        response: pb.PublishStreamResponse = next(iter(self.call))
        return response


def test_requests_are_answered_in_order_and_refusals_keep_the_stream(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("stream")
    batch = [pb.PublishRequest(topic=topic, payload=b"b1"), pb.PublishRequest(topic=topic)]
    requests = [
        _publish(7, topic, b"first"),
        _publish(8, ""),
        pb.PublishStreamRequest(request_id=9, entries=batch),
        _publish(10, "$msgbus.delete"),
        pb.PublishStreamRequest(
            request_id=11, entries=[pb.PublishRequest(topic=topic), pb.PublishRequest(topic="")]
        ),
        _publish(12, topic, b"x" * 4097),
        _publish(13, topic, b"last"),
    ]
    responses = list(stub.PublishStream(iter(requests)))
    assert [r.request_id for r in responses] == [7, 8, 9, 10, 11, 12, 13]
    first, empty, batched, reserved, bad_batch, too_big, last = responses
    assert (first.error_code, [m.head_id for m in first.messages]) == (0, [1])
    assert first.messages[0].payload == b"first"
    assert (empty.error_code, empty.error_message) == (INVALID_ARGUMENT, "topic is empty")
    assert not empty.messages
    assert [m.head_id for m in batched.messages] == [2, 3]
    assert reserved.error_code == PERMISSION_DENIED
    assert bad_batch.error_code == INVALID_ARGUMENT
    assert bad_batch.error_message == "entries[1].topic is empty"
    assert too_big.error_code == INVALID_ARGUMENT
    assert "4096" in too_big.error_message
    assert [m.head_id for m in last.messages] == [4]
    assert not any(r.duplicates for r in responses)
    # Nothing of a refused request was stored: the log holds exactly the four accepted ones.
    assert _head(stub, topic) == 4
    fetched = stub.Fetch(pb.FetchRequest(topic=topic, limit=10))
    assert [m.message.payload for m in fetched] == [b"first", b"b1", b"", b"last"]


def test_requests_sent_one_at_a_time_are_each_answered(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    """Lock step: the handler waits with nothing to answer before every request, and is woken
    by a commit (which resolves its wait directly), by a refusal, and by the end of the stream."""
    topic = name("lockstep")
    stream = _Stream(stub, timeout=30)  # a handler left waiting fails the call, not the run
    stream.send(_publish(1, topic, b"one"))
    first = stream.next()
    assert (first.request_id, first.error_code, first.messages[0].head_id) == (1, 0, 1)
    stream.send(_publish(2, ""))
    refused = stream.next()
    assert (refused.request_id, refused.error_code) == (2, INVALID_ARGUMENT)
    assert not refused.messages
    stream.send(pb.PublishStreamRequest(request_id=3, entries=[pb.PublishRequest(topic=topic)] * 2))
    batched = stream.next()
    assert (batched.request_id, [m.head_id for m in batched.messages]) == (3, [2, 3])
    stream.send(_publish(4, topic, b"four"))
    assert stream.next().messages[0].payload == b"four"
    stream.close()
    assert list(stream.call) == []  # the stream ends cleanly once the client ends its side
    assert stream.call.code() is grpc.StatusCode.OK
    assert _head(stub, topic) == 4


def test_an_empty_batch_is_refused_like_publish_batch(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("empty")
    too_many = [pb.PublishRequest(topic=topic)] * 10_001
    requests = [pb.PublishStreamRequest(request_id=1, entries=too_many), _publish(2, topic)]
    big, ok = stub.PublishStream(iter(requests))
    assert big.error_code == INVALID_ARGUMENT
    assert big.error_message == "entries has 10001 items; a batch holds 1 to 10000"
    assert [m.head_id for m in ok.messages] == [1]


def test_thousands_in_flight_are_answered_in_order(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("many")
    count = 3 * MAX_IN_FLIGHT_REQUESTS
    responses = stub.PublishStream(_publish(i, topic, str(i).encode()) for i in range(count))
    heads = [(r.request_id, r.messages[0].head_id, r.messages[0].payload) for r in responses]
    assert heads == [(i, i + 1, str(i).encode()) for i in range(count)]


def test_a_client_that_does_not_read_stops_the_stream_at_its_bound(
    stub: rpc.MsgbusServiceStub, name: Callable[[str], str]
) -> None:
    topic = name("bound")
    # Batches of 100 entries of 4,000 bytes: each request and each answer is about 400 KB, so
    # the 48 MB sent are far more than the bound and what the transport buffers of answers.
    entries = [pb.PublishRequest(topic=topic, payload=b"p" * 4000)] * 100
    count = 120
    assert count * 400_000 > 4 * MAX_IN_FLIGHT_BYTES
    stream = _Stream(stub)
    for i in range(count):
        stream.send(pb.PublishStreamRequest(request_id=i, entries=entries))
    # Not reading: the daemon commits what fits its bound (plus what the transport buffers
    # of the answers), then stops reading.
    heads: list[int] = []

    def settled() -> bool:
        heads.append(_head(stub, topic))
        return len(heads) >= 20 and heads[-1] == heads[-20] > 0

    wait_until(settled, timeout=60, interval=0.05, message="the stream to stop at its bound")
    assert heads[-1] < count * 100 / 2
    stream.close()
    answered = [stream.next().request_id for _ in range(count)]
    assert answered == list(range(count))
    assert _head(stub, topic) == count * 100


def test_a_request_that_does_not_decode_ends_the_stream_with_invalid_argument(
    shared_daemon: Daemon, name: Callable[[str], str]
) -> None:
    topic = name("garbage")
    good = _publish(1, topic).SerializeToString()
    call = shared_daemon.channel().stream_stream(
        "/msgbus.v1.MsgbusService/PublishStream",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.PublishStreamResponse.FromString,
    )
    responses = call(iter([good, b"\xff\xff\xff"]))
    with pytest.raises(grpc.RpcError) as info:
        list(responses)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid PublishStreamRequest" in str(info.value.details())
    # The request read before it was committed (its answer went with the call).
    wait_until(lambda: _head(shared_daemon.stub(), topic) == 1, message="the first commit")


def test_shutdown_answers_what_was_read_then_ends_with_unavailable(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        stream = _Stream(daemon.stub())
        stream.send(_publish(1, "shutdown.events"))
        assert stream.next().messages[0].head_id == 1
        daemon.signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as info:
            stream.next()
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in str(info.value.details())
        assert daemon.wait(15) == 0
        stream.close()


def test_stream_publishes_are_counted_like_publishes(tmp_path: Path) -> None:
    args, port = metrics_args()
    with Daemon.start(tmp_path, extra_args=args) as daemon:
        requests = [_publish(i, "counted.events") for i in range(5)]
        requests.append(
            pb.PublishStreamRequest(
                request_id=5, entries=[pb.PublishRequest(topic="counted.events")] * 3
            )
        )
        assert len(list(daemon.stub().PublishStream(iter(requests)))) == 6
        scrape = scrape_until(
            port,
            lambda s: s.maybe("msgbus_published_messages_total") == 8,
            message="the stream's publishes counted",
        )
    assert scrape.value("msgbus_publish_batch_messages_count") == 6
    assert scrape.value("msgbus_publish_batch_messages_sum") == 8
