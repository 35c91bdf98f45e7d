"""The README's two example configurations (a shared device, a hub) start a daemon as written.

The only changes are where the daemon listens and keeps its data (a free loopback port, a short
socket path, a temporary database: the suite runs many daemons at once), given as flags, which
win over the file. The files the examples name (the token file, the hub's certificates) are made
here, next to the configuration, as the examples' relative paths expect.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon
from msgbus_server.tokens import add_token
from msgbus_testkit.certificates import CertificateAuthority

README = Path(__file__).resolve().parents[2] / "README.md"


def example_configs() -> list[str]:
    """The ```toml blocks with a [policy] table in the README's Authorization section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Authorization\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.DOTALL)
    return [block for block in blocks if "[policy]" in block]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mb-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(
    config: str,
    directory: Path,
    socket: Path,
    node: str,
    credentials: grpc.ChannelCredentials | None = None,
) -> Daemon:
    (directory / "msgbusd.toml").write_text(config)
    args = ["--config", str(directory / "msgbusd.toml"), "--listen", f"unix://{socket}"]
    return Daemon.start(directory, node=node, extra_args=args, credentials=credentials)


def _code(call: object) -> str:
    assert callable(call)
    try:
        call()
    except grpc.RpcError as error:
        return error.code().name
    return "OK"


def test_the_readme_has_a_device_and_a_hub_policy() -> None:
    configs = example_configs()
    assert len(configs) == 2
    assert 'device-id = "till-1"' in configs[0]
    assert 'tenant-isolation = "origin"' in configs[1]


def test_the_device_policy_runs(tmp_path: Path, short_dir: Path) -> None:
    device = example_configs()[0]
    kiosk = add_token(str(tmp_path / "tokens"), "kiosk")
    with _start(device, tmp_path, short_dir / "device.sock", node="acme/pos/till-1") as daemon:
        assert "authorization: policy from" in daemon.stderr_text()
        stub = daemon.stub()
        token = (("authorization", f"Bearer {kiosk}"),)
        sales = pb.FetchRequest(topic="sales.today", from_head_id=1)
        assert _code(lambda: list(stub.Fetch(sales, timeout=10, metadata=token))) == "OK"
        assert _code(lambda: list(stub.Fetch(sales, timeout=10))) == "PERMISSION_DENIED"
        status = pb.FetchRequest(topic="status.printer", from_head_id=1)
        assert _code(lambda: list(stub.Fetch(status, timeout=10))) == "OK"
        publish = pb.PublishRequest(topic="sales.today", payload=b"x")
        assert _code(lambda: stub.Publish(publish, timeout=10, metadata=token)) == (
            "PERMISSION_DENIED"
        )
        with grpc.insecure_channel(f"unix://{short_dir / 'device.sock'}") as channel:
            # This test runs as a uid the example does not name (root): denied by default.
            local = rpc.MsgbusServiceStub(channel)
            assert _code(lambda: local.Publish(publish, timeout=10)) == "PERMISSION_DENIED"


def test_the_hub_policy_runs(tmp_path: Path, short_dir: Path) -> None:
    hub = example_configs()[1]
    tls = tmp_path / "tls"
    tls.mkdir()
    ca = CertificateAuthority("devices CA")
    (tls / "devices-ca.pem").write_bytes(ca.cert_pem)
    ca.issue_server("hub").write(tls, "hub")
    # The files are named .pem and .key, as the example names them.
    till = ca.issue_client("till-1", uris=["msgbus://acme/pos/till-1"])
    credentials = grpc.ssl_channel_credentials(ca.cert_pem, till.key_pem, till.cert_pem)
    socket = short_dir / "hub.sock"
    with _start(hub, tmp_path, socket, node="ops/hub/hub-1", credentials=credentials) as daemon:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            operator = rpc.MsgbusServiceStub(channel)
            operator.Publish(pb.PublishRequest(topic="config.fleet", payload=b"x"), timeout=10)
        device = daemon.stub()
        heads = device.ListHeads(pb.ListHeadsRequest(), timeout=10).heads
        assert list(heads) == [], "a device saw the hub's own logs"
        hubs = pb.FetchRequest(topic="config.fleet", from_head_id=1)
        assert _code(lambda: list(device.Fetch(hubs, timeout=10))) == "PERMISSION_DENIED"
        own = pb.FetchRequest(
            topic="telemetry",
            origin=pb.NodeId(tenant_id="acme", bl_name="pos", device_id="till-2"),
            from_head_id=1,
        )
        assert _code(lambda: list(device.Fetch(own, timeout=10))) == "OK"
        commands = pb.PeekFifoRequest(queue="acme.commands.till-1")
        assert _code(lambda: device.PeekFifo(commands, timeout=10)) == "NOT_FOUND"
        theirs = pb.PeekFifoRequest(queue="acme.commands.till-2")
        assert _code(lambda: device.PeekFifo(theirs, timeout=10)) == "PERMISSION_DENIED"
