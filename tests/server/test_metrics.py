"""`--metrics-listen`: the Prometheus metrics of a real daemon after a known workload (issue 21).

Every scrape is parsed with prometheus-client's own parser, and the values are what the workload
implies. The catalogue in `msgbus_server.metrics` is the list the scrapes are held to: nothing
outside it is exported (besides the library's process_* and python_* metrics), and with every
feature in use everything in it is.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb
from msgbus_server.cli import parse_config
from msgbus_server.config import ConfigError
from msgbus_server.metrics import CATALOGUE
from msgbus_server.testing import Daemon, free_port, run_msgbusd, wait_until
from msgbus_testkit.certificates import CertificateAuthority
from msgbus_testkit.metrics import Scrape, fetch, metrics_args, scrape_until, status_json

TARGET = pb.NodeId(tenant_id="t", bl_name="b", device_id="worker")
LIBRARY_PREFIXES = ("process_", "python_")


def family_name(name: str, kind: str) -> str:
    """The family name the Prometheus parser gives a catalogue metric."""
    return name.removesuffix("_total") if kind == "counter" else name


CATALOGUE_FAMILIES = {family_name(spec.name, spec.kind) for spec in CATALOGUE}


def test_metrics_after_a_known_workload_are_what_it_implies(tmp_path: Path) -> None:
    args, port = metrics_args()
    extra = [*args, "--max-disk-bytes", "64MiB", "--retention", "trim.*:max-messages=2"]
    with Daemon.start(tmp_path, extra_args=extra) as daemon:
        stub = daemon.stub()
        for _ in range(20):
            stub.Publish(pb.PublishRequest(topic="events", payload=b"p" * 100))
        entries = [pb.PublishRequest(topic="batch", payload=b"b" * 10) for _ in range(30)]
        stub.PublishBatch(pb.PublishBatchRequest(entries=entries))
        for _ in range(5):
            stub.Publish(pb.PublishRequest(topic="trim.a", payload=b"t"))
        stub.DeleteRange(pb.DeleteRangeRequest(topic="events", from_head_id=1, to_head_id=5))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Publish(pb.PublishRequest(topic="", payload=b"x"))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        for name in ("a", "b", "c"):
            stub.EnqueueFifo(
                pb.EnqueueFifoRequest(
                    queue="jobs", topic="work", payload=name.encode(), target=TARGET
                )
            )
        front = stub.PeekFifo(pb.PeekFifoRequest(queue="jobs")).message
        for _ in range(2):
            assert stub.RejectFifo(pb.RejectFifoRequest(queue="jobs", message_id=front.id)).accepted
        done = stub.EnqueueFifo(
            pb.EnqueueFifoRequest(queue="done", topic="work", payload=b"x", target=TARGET)
        ).message
        assert stub.AckFifo(pb.AckFifoRequest(queue="done", message_id=done.id)).accepted
        fetched = list(stub.Fetch(pb.FetchRequest(topic="events", from_head_id=1, limit=10)))
        assert len(fetched) == 10

        # One Subscribe stream stays open while the daemon is scraped.
        stream = stub.Subscribe(pb.SubscribeRequest(topic="events", from_head_id=1))
        received: list[int] = []

        def read() -> None:
            with contextlib.suppress(grpc.RpcError):  # cancelled by the test at the end
                received.extend(response.message.head_id for response in stream)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_until(lambda: len(received) == 20, message="the subscriber caught up")
        scrape = scrape_until(
            port,
            lambda s: (
                s.value("msgbus_retention_trimmed_messages_total") == 3
                # The store survey is cached for a few seconds: until it shows the trim too.
                and s.value("msgbus_log_held_messages", topic="trim.a") == 2
                and s.value("msgbus_subscribe_behind_seconds") == 0
            ),
            message="retention trimmed trim.a and the subscriber is live",
        )
        heads = list(stub.ListHeads(pb.ListHeadsRequest()).heads)
        stream.cancel()  # type: ignore[no-untyped-call]
        reader.join(10)

    # Publishing: 20 + 30 + 5 messages in 26 calls.
    assert scrape.value("msgbus_published_messages_total") == 55
    assert scrape.value("msgbus_published_bytes_total") == 20 * 100 + 30 * 10 + 5
    assert scrape.value("msgbus_publish_batch_messages_count") == 26
    assert scrape.value("msgbus_publish_batch_messages_sum") == 55
    assert scrape.value("msgbus_publish_batch_messages_bucket", le="1.0") == 25
    assert scrape.value("msgbus_publish_batch_messages_bucket", le="50.0") == 26
    committed = scrape.value("msgbus_transactions_total", result="committed")
    assert scrape.value("msgbus_transactions_total", result="failed") == 0
    assert committed >= 26  # each sequential publish call is a transaction of its own
    commits = scrape.value("msgbus_commit_seconds_count")
    assert commits == committed
    assert scrape.value("msgbus_commit_seconds_bucket", le="+Inf") == commits
    assert scrape.value("msgbus_commit_seconds_bucket", le="5.0") > 0  # buckets filled
    assert scrape.value("msgbus_commit_seconds_sum") > 0
    assert scrape.value("msgbus_transaction_ops_count") == commits
    assert scrape.value("msgbus_transaction_ops_sum") >= 55 + 1 + 7
    assert scrape.value("msgbus_deleted_messages_total") == 5
    # Storage, as ListHeads tells it.
    assert scrape.value("msgbus_logs") == len(heads)
    held = sum(h.head_id - h.first_head_id + 1 for h in heads if h.first_head_id)
    assert scrape.value("msgbus_held_messages") == held
    assert scrape.value("msgbus_held_bytes") == sum(h.bytes for h in heads)
    assert scrape.value("msgbus_log_head_id", topic="events", origin=daemon.node.key) == 20
    assert scrape.value("msgbus_log_first_head_id", topic="trim.a") == 4
    assert scrape.value("msgbus_log_held_messages", topic="trim.a") == 2
    assert scrape.value("msgbus_log_held_bytes", topic="batch") == 300
    assert scrape.value("msgbus_retention_trimmed_bytes_total") == 3
    assert scrape.value("msgbus_disk_budget_bytes") == 64 * 1024 * 1024
    assert scrape.value("msgbus_disk_budget_used_bytes") > 0
    assert scrape.value("msgbus_storage_bytes") > 0
    # Readers and subscribers.
    assert scrape.value("msgbus_delivered_messages_total", method="Fetch") == 10
    assert scrape.value("msgbus_delivered_messages_total", method="Subscribe") == 20
    assert scrape.value("msgbus_subscribe_streams") == 1
    assert scrape.value("msgbus_subscribe_replaying_streams") == 0
    # FIFO: "done" was emptied, so only "jobs" is listed.
    assert scrape.value("msgbus_fifo_enqueued_total") == 4
    assert scrape.value("msgbus_fifo_rejected_total") == 2
    assert scrape.value("msgbus_fifo_acked_total") == 1
    assert scrape.value("msgbus_fifo_queues") == 1
    assert scrape.value("msgbus_fifo_held_messages") == 3
    assert scrape.value("msgbus_fifo_queue_depth_messages", queue="jobs") == 3
    assert scrape.value("msgbus_fifo_queue_attempts", queue="jobs") == 2
    # Process.
    service = "msgbus.v1.MsgbusService"
    assert scrape.value("msgbus_grpc_calls_total", method="Publish", code="OK") == 25
    assert scrape.value("msgbus_grpc_calls_total", method="Publish", code="INVALID_ARGUMENT") == 1
    assert scrape.value("msgbus_grpc_calls_total", service=service, method="PublishBatch") == 1
    assert scrape.value("msgbus_info", node=daemon.node.key, storage="sqlite") == 1
    assert scrape.value("msgbus_serving") == 1
    assert scrape.value("process_resident_memory_bytes") > 0

    # Nothing outside the catalogue; all of it but what needs peers.
    exported = {name for name in scrape.families if not name.startswith(LIBRARY_PREFIXES)}
    assert exported <= CATALOGUE_FAMILIES
    needs_peers = {family_name(s.name, s.kind) for s in CATALOGUE if s.area == "sync"}
    assert CATALOGUE_FAMILIES - needs_peers <= exported


def test_per_log_series_stay_under_the_bound_with_10000_logs(tmp_path: Path) -> None:
    args, port = metrics_args()
    with Daemon.start(tmp_path, extra_args=[*args, "--metrics-max-logs", "25"]) as daemon:
        entries = [pb.PublishRequest(topic=f"device.{n:05d}", payload=b"m") for n in range(10_000)]
        daemon.stub().PublishBatch(pb.PublishBatchRequest(entries=entries), timeout=60)
        # The busiest logs: the ones that moved since the last survey, then the largest.
        daemon.stub().Publish(pb.PublishRequest(topic="big", payload=b"B" * 5000))
        started = time.perf_counter()
        scrape = Scrape.of(port)
        scrape_s = time.perf_counter() - started

    assert scrape.value("msgbus_logs") == 10_001
    assert scrape.value("msgbus_held_messages") == 10_001
    per_log = [s for s in scrape.series() if "topic" in s.labels]
    assert len(per_log) == 4 * 25  # head, first head, messages, bytes of 25 logs
    assert len({s.labels["topic"] for s in per_log}) == 25
    assert scrape.value("msgbus_log_held_bytes", topic="big") == 5000
    total = len(scrape.series())
    assert total < 4 * 25 + 200, total
    print(
        f"10,001 logs: {total} msgbus series, scrape {scrape_s * 1000:.0f} ms, "
        f"survey {scrape.value('msgbus_survey_seconds') * 1000:.0f} ms"
    )


def test_status_json_and_the_page_show_the_node_and_its_logs(tmp_path: Path) -> None:
    args, port = metrics_args()
    with Daemon.start(tmp_path, extra_args=args) as daemon:
        stub = daemon.stub()
        stub.Publish(pb.PublishRequest(topic="orders<&>", payload=b"x"))
        stub.EnqueueFifo(
            pb.EnqueueFifoRequest(queue="jobs", topic="w", payload=b"x", target=TARGET)
        )
        status = wait_until(
            lambda: (s := status_json(port)) and s["storage"]["logs"] == 1 and s,
            message="the survey sees the log",
        )
        page = fetch(port, "/status").decode()
        part = fetch(port, "/status?part=main").decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as redirected:
            assert redirected.geturl().endswith("/status")
        with pytest.raises(urllib.error.HTTPError) as missing:
            fetch(port, "/nothing")
        assert missing.value.code == 404
        missing.value.close()

    assert status["node"] == daemon.node.key
    assert status["serving"] is True
    assert status["storage"]["backend"] == "sqlite"
    assert status["storage"]["file_bytes"] > 0
    assert [log["topic"] for log in status["logs"]] == ["orders<&>"]
    assert status["queues"]["deepest"] == [{"queue": "jobs", "depth": 1, "attempts": 0}]
    assert status["peers"] == []
    assert page.startswith("<!doctype html>")
    assert daemon.node.key in page
    assert "orders&lt;&amp;&gt;" in page  # escaped, never markup
    assert "<script>" in page
    assert "<main>" not in part
    assert 'id="overview"' in part


def test_the_listener_serves_https_with_the_daemons_certificate_and_mtls(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    files = CertificateAuthority("msgbus test CA").write_tls_files(tmp_path / "pki")
    args, port = metrics_args()
    server_tls = files.server_args(require_client_cert=True)
    with Daemon.start(
        tmp_path, extra_args=[*args, *server_tls], credentials=files.credentials(client=True)
    ) as daemon:
        url = f"https://127.0.0.1:{port}/metrics"
        anonymous = ssl.create_default_context(cafile=str(files.ca))
        assert reply_without_a_client_certificate(anonymous, port) == b""
        client = ssl.create_default_context(cafile=str(files.ca))
        client.load_cert_chain(str(files.client_cert), str(files.client_key))
        with urllib.request.urlopen(url, context=client, timeout=10) as response:
            body = response.read().decode()
        assert "msgbus_info" in body
        assert "metrics and status on https://127.0.0.1" in daemon.stderr_text()


def reply_without_a_client_certificate(context: ssl.SSLContext, port: int) -> bytes:
    """What the listener answers a GET over TLS without a client certificate (b"": nothing)."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            return tls.recv(64)
    except (ssl.SSLError, OSError):
        return b""


def test_metrics_listen_follows_the_listen_rules() -> None:
    base = ["--storage", "memory", "--volatile"]
    config = parse_config([*base, "--metrics-listen", "127.0.0.1:9464"])
    assert (config.metrics_host, config.metrics_port, config.metrics_max_logs) == (
        "127.0.0.1",
        9464,
        100,
    )
    assert parse_config(base).metrics_host is None
    with pytest.raises(ConfigError, match=r"--metrics-listen: refusing plaintext HTTP .*--allow"):
        parse_config([*base, "--metrics-listen", "0.0.0.0:9464"])
    # Off loopback it also needs a policy, as --listen does, or the explicit opt-in.
    with pytest.raises(ConfigError, match=r"--metrics-listen: .* without an authorization policy"):
        parse_config([*base, "--metrics-listen", "[::]:9464", "--allow-insecure"])
    config = parse_config(
        [*base, "--metrics-listen", "[::]:9464", "--allow-insecure", "--allow-anyone"]
    )
    assert config.metrics_listen == "[::]:9464"
    with pytest.raises(ConfigError, match=r"--metrics-listen: 'localhost' is not an IP address"):
        parse_config([*base, "--metrics-listen", "localhost:9464"])
    with pytest.raises(ConfigError, match=r"--metrics-listen: .* is the gRPC --listen address"):
        parse_config([*base, "--listen", "127.0.0.1:7000", "--metrics-listen", "127.0.0.1:7000"])
    with pytest.raises(ConfigError, match=r"--metrics-max-logs must be between 0 and 10000"):
        parse_config([*base, "--metrics-max-logs", "10001"])


def test_metrics_listen_comes_from_the_variable_and_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["--storage", "memory", "--volatile"]
    file = tmp_path / "msgbusd.toml"
    file.write_text('metrics-listen = "127.0.0.1:9100"\nmetrics-max-logs = 7\n')
    config = parse_config([*base, "--config", str(file)])
    assert (config.metrics_listen, config.metrics_max_logs) == ("127.0.0.1:9100", 7)
    monkeypatch.setenv("MSGBUS_METRICS_LISTEN", "10.0.0.1:9100")
    with pytest.raises(
        ConfigError, match=r"refusing plaintext HTTP .*\(from MSGBUS_METRICS_LISTEN\)"
    ):
        parse_config(base)


def test_a_taken_metrics_port_is_a_one_line_error(tmp_path: Path) -> None:
    port = free_port()
    with Daemon.start(tmp_path / "first", extra_args=["--metrics-listen", f"127.0.0.1:{port}"]):
        result = run_msgbusd(
            [
                "--data",
                str(tmp_path / "second.sqlite"),
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--metrics-listen",
                f"127.0.0.1:{port}",
            ]
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"msgbusd: error: --metrics-listen: cannot listen on 127.0.0.1:{port}: address in use"
    )
    assert not (tmp_path / "second.sqlite").exists()  # refused before the store was opened
