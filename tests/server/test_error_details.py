"""Structured error details: a rejection names its field (and batch entry) in the gRPC status.

Read with `grpc_status` from raw grpcio calls, the way any gRPC client would. The status code and
the plain message text stay those of the original daemon, so clients that ignore the details
see no change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon.start(
        Path(tmp_path_factory.mktemp("msgbusd-details")),
        extra_args=["--max-payload-bytes", "4096"],
    ) as running:
        yield running
        assert "Traceback" not in running.stderr_text()


@pytest.fixture
def stub(daemon: Daemon) -> rpc.MsgbusServiceStub:
    return daemon.stub()


def _rejection(call: Callable[[], Any]) -> grpc.Call:
    """The error a blocking call fails with: a grpc.RpcError that is also a grpc.Call."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert isinstance(error, grpc.Call)
    return error


def _violations(error: grpc.Call) -> list[tuple[str, str]]:
    """The (field, description) pairs of the status's BadRequest detail."""
    status = rpc_status.from_call(error)
    assert isinstance(status, status_pb2.Status), "no google.rpc.Status in the trailers"
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request), detail.type_url
        violations.extend((v.field, v.description) for v in bad_request.field_violations)
    return violations


def _batch(*entries: pb.PublishRequest) -> pb.PublishBatchRequest:
    return pb.PublishBatchRequest(entries=list(entries))


def test_an_invalid_batch_entry_is_named_by_index_and_field(stub: rpc.MsgbusServiceStub) -> None:
    request = _batch(
        pb.PublishRequest(topic="details.ok", payload=b"a"),
        pb.PublishRequest(topic="details.ok", payload=b"b"),
        pb.PublishRequest(topic="details.ok", payload=b"c"),
        pb.PublishRequest(topic="", payload=b"d"),
    )
    error = _rejection(lambda: stub.PublishBatch(request))
    assert error.code() == INVALID
    # The text is the original's, unchanged.
    assert error.details() == "entries[3].topic is empty"
    assert _violations(error) == [("entries[3].topic", "entries[3].topic is empty")]
    assert not stub.GetHead(pb.GetHeadRequest(topic="details.ok")).found


def test_batch_entry_details_name_payload_and_headers_fields(
    stub: rpc.MsgbusServiceStub,
) -> None:
    too_big = _batch(
        pb.PublishRequest(topic="details.size", payload=b"a"),
        pb.PublishRequest(topic="details.size", payload=b"x" * 4097),
    )
    error = _rejection(lambda: stub.PublishBatch(too_big))
    assert error.code() == INVALID
    assert error.details() == "entries[1].payload is 4097 bytes; the limit is 4096 bytes"
    assert _violations(error) == [("entries[1].payload", error.details())]

    bad_header = _batch(pb.PublishRequest(topic="details.size", headers={"": "v"}))
    error = _rejection(lambda: stub.PublishBatch(bad_header))
    assert error.details() == "entries[0].headers key is empty"
    assert _violations(error) == [("entries[0].headers", error.details())]


def test_a_reserved_topic_in_a_batch_is_denied_with_its_entry_named(
    stub: rpc.MsgbusServiceStub,
) -> None:
    request = _batch(
        pb.PublishRequest(topic="details.ok", payload=b"a"),
        pb.PublishRequest(topic="$msgbus.delete", payload=b"b"),
    )
    error = _rejection(lambda: stub.PublishBatch(request))
    assert error.code() == DENIED
    assert (error.details() or "").startswith("entries[1].topic '$msgbus.delete' is reserved")
    assert _violations(error) == [("entries[1].topic", error.details())]


def test_an_oversized_batch_names_the_entries_field(stub: rpc.MsgbusServiceStub) -> None:
    error = _rejection(lambda: stub.PublishBatch(_batch()))
    assert error.code() == INVALID
    assert error.details() == "entries has 0 items; a batch holds 1 to 10000"
    assert _violations(error) == [("entries", error.details())]


def test_a_single_publish_names_its_field(stub: rpc.MsgbusServiceStub) -> None:
    error = _rejection(lambda: stub.Publish(pb.PublishRequest(topic="a\0b")))
    assert error.code() == INVALID
    assert error.details() == "topic contains a NUL byte"
    assert _violations(error) == [("topic", "topic contains a NUL byte")]

    origin = pb.NodeId(tenant_id="tenant", bl_name="", device_id="device")
    error = _rejection(lambda: stub.Publish(pb.PublishRequest(topic="t", origin=origin)))
    assert error.code() == INVALID
    assert error.details() == "origin.bl_name is empty"
    assert _violations(error) == [("origin.bl_name", "origin.bl_name is empty")]


def test_every_invalid_argument_carries_details_even_without_a_field(
    stub: rpc.MsgbusServiceStub,
) -> None:
    request = pb.DeleteRangeRequest(topic="details.range", from_head_id=3, to_head_id=2)
    error = _rejection(lambda: stub.DeleteRange(request))
    assert error.code() == INVALID
    assert error.details() == "from_head_id must be <= to_head_id, got 3 > 2"
    assert _violations(error) == [("", error.details())]


def test_errors_about_no_field_carry_no_details(stub: rpc.MsgbusServiceStub) -> None:
    # An empty queue is NOT_FOUND, exactly as the original daemon answers it, and nothing more.
    error = _rejection(lambda: stub.PeekFifo(pb.PeekFifoRequest(queue="details.empty")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert rpc_status.from_call(error) is None
