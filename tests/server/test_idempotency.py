"""Exactly-once publish over real gRPC against real msgbusd processes (issue 19).

A repeated idempotency key answers the envelope stored the first time with `duplicate` set and
stores nothing, on Publish and PublishBatch, across restarts; bad keys are refused naming the
field and the limit; the dedup worker forgets keys past --dedup-window and beyond
--dedup-max-keys (the table stays bounded under many keys); the duplicates are counted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.cli import parse_config
from msgbus_server.config import ConfigError
from msgbus_server.testing import Daemon, run_msgbusd, wait_until
from msgbus_testkit.metrics import Scrape, metrics_args


def _publish(
    stub: rpc.MsgbusServiceStub, topic: str, key: str, payload: bytes = b"p"
) -> pb.PublishResponse:
    request = pb.PublishRequest(topic=topic, payload=payload, idempotency_key=key)
    response: pb.PublishResponse = stub.Publish(request)
    return response


def _head(stub: rpc.MsgbusServiceStub, topic: str) -> int:
    return int(stub.GetHead(pb.GetHeadRequest(topic=topic)).head_id)


def _refused(call: Callable[[Any], object], request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request)
    return raised.value


@pytest.mark.parametrize("storage", ["sqlite", "duckdb"])
def test_a_repeated_key_answers_the_first_envelope_and_survives_a_restart(
    tmp_path: Path, storage: str
) -> None:
    with Daemon.start(tmp_path, storage=storage) as daemon:
        stub = daemon.stub()
        first = _publish(stub, "orders", "order-1", b"first")
        assert not first.duplicate
        again = _publish(stub, "orders", "order-1", b"a different payload")
        assert again.duplicate
        assert again.message == first.message
        # The key is per topic; a publish without a key is never a duplicate.
        assert not _publish(stub, "audit", "order-1").duplicate
        assert not _publish(stub, "orders", "").duplicate
        assert _head(stub, "orders") == 2
        daemon.restart()
        stub = daemon.stub()
        after = _publish(stub, "orders", "order-1", b"after the restart")
        assert after.duplicate
        assert after.message == first.message
        assert _head(stub, "orders") == 2


def test_batch_entries_answer_duplicates_per_entry(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        stored = _publish(stub, "jobs", "a").message
        entries = [
            pb.PublishRequest(topic="jobs", payload=b"1", idempotency_key="a"),
            pb.PublishRequest(topic="jobs", payload=b"2", idempotency_key="b"),
            pb.PublishRequest(topic="jobs", payload=b"3", idempotency_key="b"),
            pb.PublishRequest(topic="jobs", payload=b"4"),
        ]
        response = stub.PublishBatch(pb.PublishBatchRequest(entries=entries))
        assert list(response.duplicates) == [True, False, True, False]
        assert response.messages[0] == stored
        assert response.messages[2] == response.messages[1]
        assert [m.head_id for m in response.messages] == [1, 2, 2, 3]
        # A batch without keys answers no flags, as for original clients.
        plain = stub.PublishBatch(
            pb.PublishBatchRequest(entries=[pb.PublishRequest(topic="jobs", payload=b"5")])
        )
        assert list(plain.duplicates) == []
        assert _head(stub, "jobs") == 4


def test_bad_keys_are_refused_naming_the_field_and_the_limit(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        stub = daemon.stub()
        long_key = "é" * 64 + "x"  # 129 UTF-8 bytes
        error = _refused(stub.Publish, pb.PublishRequest(topic="t", idempotency_key=long_key))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "idempotency_key is 129 bytes; the limit is 128 UTF-8 bytes" in str(error.details())
        error = _refused(stub.Publish, pb.PublishRequest(topic="t", idempotency_key="a\nb"))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "idempotency_key contains the control character U+000A" in str(error.details())
        entries = [
            pb.PublishRequest(topic="t", idempotency_key="fine"),
            pb.PublishRequest(topic="t", idempotency_key="k" * 129),
        ]
        error = _refused(stub.PublishBatch, pb.PublishBatchRequest(entries=entries))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert str(error.details()).startswith("entries[1].idempotency_key is 129 bytes")
        # Nothing was stored, and the key of the refused batch's valid entry is not taken.
        assert _head(stub, "t") == 0
        assert not _publish(stub, "t", "fine").duplicate
        assert "Traceback" not in daemon.stderr_text()


def test_a_key_is_forgotten_after_the_dedup_window(tmp_path: Path) -> None:
    with Daemon.start(tmp_path, extra_args=["--dedup-window", "1s"]) as daemon:
        stub = daemon.stub()
        first = _publish(stub, "events", "k").message
        assert _publish(stub, "events", "k").duplicate
        # Polled: each repeat inside the window stores nothing; the first one after it does.
        wait_until(
            lambda: not _publish(stub, "events", "k").duplicate,
            message="the key forgotten after the window",
            timeout=15,
        )
        assert _head(stub, "events") == first.head_id + 1


def _stored_keys(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM publish_keys").fetchone()[0])
    finally:
        con.close()


def test_the_key_table_stays_bounded_by_dedup_max_keys(tmp_path: Path) -> None:
    cap, published = 500, 20_000
    args, port = metrics_args()
    with Daemon.start(tmp_path, extra_args=["--dedup-max-keys", str(cap), *args]) as daemon:
        stub = daemon.stub()
        for start in range(0, published, 5_000):
            entries = [
                pb.PublishRequest(topic="bulk", payload=b"x", idempotency_key=f"key-{n:06}")
                for n in range(start, start + 5_000)
            ]
            stub.PublishBatch(pb.PublishBatchRequest(entries=entries))
        wait_until(
            lambda: _stored_keys(daemon.data_path) <= cap,
            message=f"at most {cap} keys stored",
            timeout=30,
        )
        assert _stored_keys(daemon.data_path) == cap
        # The newest keys are kept, the oldest forgotten.
        assert _publish(stub, "bulk", f"key-{published - 1:06}").duplicate
        assert not _publish(stub, "bulk", "key-000000").duplicate
        assert Scrape.of(port).value("msgbus_publish_duplicates_total") == 1
        assert _head(stub, "bulk") == published + 1


def test_dedup_flags_and_their_errors(tmp_path: Path) -> None:
    base = ["--data", str(tmp_path / "d.sqlite")]
    config = parse_config(base)
    assert config.dedup_window_ms == 24 * 3600 * 1000
    assert config.dedup_max_keys == 1_000_000
    config = parse_config([*base, "--dedup-window", "90s", "--dedup-max-keys", "10"])
    assert (config.dedup_window_ms, config.dedup_max_keys) == (90_000, 10)
    toml = tmp_path / "msgbusd.toml"
    toml.write_text('dedup-window = "7d"\ndedup-max-keys = 42\n')
    config = parse_config([*base, "--config", str(toml)])
    assert (config.dedup_window_ms, config.dedup_max_keys) == (7 * 86_400_000, 42)
    with pytest.raises(ConfigError, match="--dedup-window"):
        parse_config([*base, "--dedup-window", "12"])
    with pytest.raises(ConfigError, match="--dedup-max-keys must be between 1 and"):
        parse_config([*base, "--dedup-max-keys", "0"])
    result = run_msgbusd([*base, "--dedup-window", "soon"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--dedup-window" in lines[0]
