"""Pure unit tests: no daemon needed."""

from __future__ import annotations

import base64
import io
import os
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

import msgbus_sdk
from msgbus_proto import pb
from msgbus_sdk import (
    ConfigurationError,
    ConflictError,
    InvalidArgumentError,
    MessageEnvelope,
    MsgbusError,
    NodeId,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ReconnectPolicy,
    StatusCode,
    TlsConfig,
    UnavailableError,
    parse_node_id,
    parse_target,
)
from msgbus_sdk import _convert as convert
from msgbus_sdk import _render as render
from msgbus_sdk._errors import translate_rpc_error
from msgbus_sdk._idempotency import new_key
from msgbus_sdk._subscription import Cursor, _GapError
from msgbus_sdk.cli import main


@pytest.mark.parametrize(
    ("target", "address", "tls"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051", False),
        ("localhost", "localhost:50051", False),
        ("http://127.0.0.1:7000", "127.0.0.1:7000", False),
        ("http://127.0.0.1:7000/", "127.0.0.1:7000", False),
        ("HTTPS://bus.example:8443", "bus.example:8443", True),
        ("https://bus.example", "bus.example:443", True),
        ("http://bus.example", "bus.example:80", False),
        ("[::1]:50051", "[::1]:50051", False),
        ("  127.0.0.1:1  ", "127.0.0.1:1", False),
    ],
)
def test_parse_target_accepts_the_original_sdks_forms(target: str, address: str, tls: bool) -> None:
    parsed = parse_target(target)
    assert parsed.address == address
    assert parsed.tls is tls


@pytest.mark.parametrize(
    "target", ["", "ftp://x:1", "http://x:1/path", "x:99999", "x:0", "a b:1", "x:port"]
)
def test_parse_target_rejects_malformed_targets(target: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid endpoint"):
        parse_target(target)


def test_configuration_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid endpoint"):
        parse_target("nope://x")


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.FAILED_PRECONDITION, ConflictError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, msgbus_sdk.ResourceExhaustedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, msgbus_sdk.DeadlineExceededError),
        (grpc.StatusCode.INTERNAL, msgbus_sdk.InternalError),
        (grpc.StatusCode.DATA_LOSS, msgbus_sdk.InternalError),
        (grpc.StatusCode.UNIMPLEMENTED, msgbus_sdk.UnimplementedError),
        (grpc.StatusCode.UNAUTHENTICATED, msgbus_sdk.UnauthenticatedError),
        (grpc.StatusCode.ABORTED, msgbus_sdk.AbortedError),
        (grpc.StatusCode.CANCELLED, msgbus_sdk.CancelledError),
        (grpc.StatusCode.ALREADY_EXISTS, msgbus_sdk.AlreadyExistsError),
        (grpc.StatusCode.UNKNOWN, msgbus_sdk.UnknownError),
        (grpc.StatusCode.OUT_OF_RANGE, msgbus_sdk.UnknownError),
    ],
)
def test_every_grpc_status_maps_to_a_named_error(
    code: grpc.StatusCode, cls: type[MsgbusError]
) -> None:
    class FakeRpcError(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return code

        def details(self) -> str:
            return "the server's words"

    error = translate_rpc_error(FakeRpcError())
    assert type(error) is cls
    assert error.message == "the server's words"
    assert error.code == StatusCode(code.name)
    assert "the server's words" in str(error)
    assert isinstance(error, MsgbusError)


def test_only_transient_errors_are_retryable() -> None:
    retryable = {
        cls.__name__
        for cls in vars(msgbus_sdk).values()
        if isinstance(cls, type) and issubclass(cls, MsgbusError) and cls.retryable
    }
    assert retryable == {
        "TransientError",
        "UnavailableError",
        "DeadlineExceededError",
        "AbortedError",
        "CancelledError",
    }


def test_a_transport_error_without_status_is_unknown() -> None:
    error = translate_rpc_error(grpc.RpcError("boom"))
    assert isinstance(error, msgbus_sdk.UnknownError)


def test_payload_is_utf8_when_valid_and_base64_otherwise() -> None:
    assert render.payload_text("héllo".encode()) == ("héllo", "utf8")
    raw = b"\xff\x00\xfe"
    assert render.payload_text(raw) == (base64.b64encode(raw).decode(), "base64")
    assert render.payload_cell(raw) == "base64:" + base64.b64encode(raw).decode()
    assert render.payload_cell(b"a\nb\tc\x01") == "a\\nb\\tc\\x01"
    assert render.payload_cell(b"x" * 100, width=10) == "x" * 9 + "…"


def test_envelope_json_names_every_field() -> None:
    env = MessageEnvelope(
        id="i",
        topic="t",
        origin=NodeId(tenant_id="a", bl_name="b", device_id="c"),
        head_id=7,
        payload=b"\x80",
        headers={"k": "v"},
        created_at_ms=1,
        deleted=False,
    )
    assert render.envelope_json(env) == {
        "id": "i",
        "topic": "t",
        "origin": "a/b/c",
        "head_id": 7,
        "payload": "gA==",
        "payload_encoding": "base64",
        "headers": {"k": "v"},
        "created_at_ms": 1,
        "deleted": False,
    }


def test_timestamps_are_iso_utc() -> None:
    assert render.timestamp(0) == "-"
    assert render.timestamp(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"


def test_node_ids_parse_from_keys() -> None:
    assert parse_node_id("t/b/d") == NodeId(tenant_id="t", bl_name="b", device_id="d")
    for bad in ("t/b", "t/b/d/e", "t//d", " /b/d"):
        with pytest.raises(ConfigurationError):
            parse_node_id(bad)


def _pb_env(head_id: int) -> pb.MessageEnvelope:
    return pb.MessageEnvelope(
        id=f"id-{head_id}",
        topic="t",
        origin=pb.NodeId(tenant_id="a", bl_name="b", device_id="c"),
        head_id=head_id,
        payload=b"p",
        headers={"h": "v"},
        created_at_ms=5,
        deleted=head_id == 2,
    )


def test_conversion_builds_dataclasses_equal_to_betterproto_parsing() -> None:
    wire = _pb_env(2)
    converted = convert.envelope(wire)
    parsed = MessageEnvelope.parse(wire.SerializeToString())
    assert converted == parsed
    assert converted.origin == NodeId(tenant_id="a", bl_name="b", device_id="c")


def test_absent_node_ids_stay_absent() -> None:
    head = convert.topic_head(pb.TopicHead(topic="t", head_id=1))
    assert head.origin is None
    assert convert.envelope(pb.MessageEnvelope(head_id=1)).origin is None


def test_packed_and_single_responses_convert_the_same() -> None:
    single = pb.SubscribeResponse(message=_pb_env(1))
    packed = pb.SubscribeResponse(messages=[_pb_env(1), _pb_env(2), _pb_env(3)])
    assert [e.head_id for e in convert.subscribe_envelopes(single)] == [1]
    assert [e.head_id for e in convert.subscribe_envelopes(packed)] == [1, 2, 3]
    assert [
        e.head_id for e in convert.fetch_envelopes(pb.FetchResponse(messages=[_pb_env(4)]))
    ] == [4]
    assert convert.fetch_envelopes(pb.FetchResponse()) == []
    with pytest.raises(ProtocolError):
        convert.subscribe_envelopes(pb.SubscribeResponse())


def test_cursor_drops_duplicates_and_refuses_gaps() -> None:
    cursor = Cursor(from_head_id=0)
    assert cursor.next_head_id == 1
    envs = [convert.envelope(_pb_env(h)) for h in (1, 2, 1, 2, 3)]
    cursor.take(envs)
    delivered = []
    while (env := cursor.deliver()) is not None:
        delivered.append(env.head_id)
    assert delivered == [1, 2, 3]
    assert cursor.next_head_id == 4
    with pytest.raises(_GapError, match="expected head_id 4"):
        cursor.take([convert.envelope(_pb_env(6))])
    assert cursor.next_head_id == 4


def test_tls_config_needs_cert_and_key_together(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(ConfigurationError, match="both"):
        TlsConfig(client_cert=b"x")
    with pytest.raises(ConfigurationError, match="cannot read CA certificate"):
        TlsConfig.from_files(ca="/nonexistent/ca.pem")
    config = TlsConfig(server_name="bus.local")
    assert ("grpc.ssl_target_name_override", "bus.local") in config.channel_options()
    assert TlsConfig().channel_options() == []


def test_reconnect_policy_validates_and_builds_tenacity_strategies() -> None:
    with pytest.raises(ConfigurationError):
        ReconnectPolicy(max_attempts=0)
    with pytest.raises(ConfigurationError):
        ReconnectPolicy(initial_delay=-1)
    assert ReconnectPolicy().max_attempts is None
    assert ReconnectPolicy(max_attempts=3).stop_strategy() is not None


def test_request_builders_reject_out_of_range_numbers() -> None:
    from msgbus_sdk import _requests as requests

    with pytest.raises(ConfigurationError, match="from_head_id"):
        requests.fetch("t", None, -1, 10)
    with pytest.raises(ConfigurationError, match="limit"):
        requests.fetch("t", None, 1, 1 << 32)
    with pytest.raises(ConfigurationError, match="page_size"):
        requests.page_size(0)
    req = requests.publish("t", "text", {"a": "b"}, "x/y/z")
    assert req.payload == b"text"
    assert req.origin.device_id == "z"
    assert not requests.publish("t", b"", None, None).HasField("origin")


def _run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_cli_usage_errors_exit_2_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli("no-such-command")[0] == 2
    assert _run_cli("publish")[0] == 2
    status, _, err = _run_cli("--endpoint", "ftp://x:1", "health")
    assert status == 2
    assert (
        err
        == "msgbus: error: invalid endpoint 'ftp://x:1': scheme must be http or https, not 'ftp'\n"
    )
    status, _, err = _run_cli("publish", "t", "x", "--header", "novalue")
    assert status == 2
    assert "KEY=VALUE" in err
    status, _, err = _run_cli("fifo", "enqueue", "q", "t", "not-a-node", "x")
    assert status == 2
    assert "tenant_id/bl_name/device_id" in err
    status, _, err = _run_cli("--tls-ca", "/nonexistent.pem", "health")
    assert (status, "cannot read CA certificate" in err) == (2, True)
    capsys.readouterr()  # argparse's own usage text


def test_cli_probe_rejects_unknown_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSGBUS_ACTION", "explode")
    assert _run_cli("probe") == (2, "", "msgbus: unsupported MSGBUS_ACTION: explode\n")


def test_cli_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli("--help")[0] == 0
    text = capsys.readouterr().out
    for name in (
        "health",
        "ready",
        "publish",
        "fetch",
        "subscribe",
        "heads",
        "sync-state",
        "delete",
        "fifo",
        "bench",
        "probe",
    ):
        assert f"    {name}" in text


def test_public_names_are_exported() -> None:
    for name in msgbus_sdk.__all__:
        assert hasattr(msgbus_sdk, name), name
    for name in ("AsyncMsgbusClient", "MsgbusClient", "MessageEnvelope", "FifoMessage"):
        assert getattr(msgbus_sdk, name).__doc__


def test_idempotency_keys_never_share_random_bits_across_threads_or_a_fork() -> None:
    # The random parts are sliced from a pool: every slice must go out once, in every thread,
    # and a forked child must not hand out again what its parent had left in the pool.
    new_key()  # fills the pool the child inherits
    with ThreadPoolExecutor(8) as pool:
        keys = [
            k
            for batch in pool.map(lambda _: [new_key() for _ in range(500)], range(8))
            for k in batch
        ]
    assert all(len(key) == 32 and int(key, 16) >= 0 for key in keys)
    randoms = {key[12:] for key in keys}
    assert len(randoms) == len(keys)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        os.write(write, "".join(new_key()[12:] for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    from_child = {text[i : i + 20] for i in range(0, len(text), 20)}
    assert len(from_child) == 100
    from_parent = {new_key()[12:] for _ in range(100)}
    assert not from_child & from_parent
