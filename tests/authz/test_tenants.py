"""A hub with three tenants of two devices each, kept apart by one line of policy.

Six device daemons publish; the hub pulls every one of them. Each device then calls the hub
over mTLS with a certificate naming it (`msgbus://tenant/bl/device`): it lists, fetches,
subscribes to and reads the heads of its own tenant's logs only, ListHeads shows it exactly
those, its sync states are its tenant's, and it can neither write nor delete on the hub. An
operator on the hub's Unix socket sees everything.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from msgbus_core.model import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.authz import Pki, audit_lines, first_response

TENANTS = ("acme", "globex", "initech")
DEVICES = tuple(NodeId(tenant, "bl", f"dev{n}") for tenant in TENANTS for n in (1, 2))
HUB = NodeId("ops", "hub", "h1")
TOPICS = ("telemetry", "events")
HUB_POLICY = """
[policy]
tenant-isolation = "origin"

[[policy.rule]]
name = "devices"
callers = ["*/*/*"]
allow = ["read", "pull", "admin"]

[[policy.rule]]
name = "devices supply their own logs"
callers = ["*/*/*"]
allow = ["push"]
origins = ["{tenant}/{bl}/{device}"]

[[policy.rule]]
name = "operators"
callers = ["uid:0"]
allow = ["publish", "read", "delete", "fifo", "admin"]
"""


def _pb(node: NodeId) -> pb.NodeId:
    return pb.NodeId(tenant_id=node.tenant_id, bl_name=node.bl_name, device_id=node.device_id)


def _key(node: pb.NodeId) -> str:
    return f"{node.tenant_id}/{node.bl_name}/{node.device_id}"


def _start_device(directory: Path, node: NodeId) -> Daemon:
    daemon = Daemon.start(directory, node=node.key)
    stub = daemon.stub()
    for topic in TOPICS:
        stub.PublishBatch(
            pb.PublishBatchRequest(
                entries=[pb.PublishRequest(topic=topic, payload=node.key.encode())] * 2
            )
        )
    return daemon


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, socket_dir: Path
) -> Iterator[tuple[Daemon, str]]:
    """The hub, once it holds every device's logs; and its operators' Unix socket."""
    with ExitStack() as stack:
        root = tmp_path_factory.mktemp("tenants")
        with ThreadPoolExecutor(len(DEVICES)) as pool:
            started = list(
                pool.map(
                    lambda node: _start_device(root / node.key.replace("/", "-"), node), DEVICES
                )
            )
        devices = [stack.enter_context(daemon) for daemon in started]
        config = root / "hub.toml"
        config.write_text(HUB_POLICY)
        operators = f"unix://{socket_dir / 'hub.sock'}"
        args = [
            *pki.server_args(),
            "--config",
            str(config),
            "--listen",
            operators,
            "--sync-interval-ms",
            "100",
            "--log-format",
            "json",
            *itertools.chain.from_iterable(
                ("--peer", f"{d.endpoint}={d.node.key}") for d in devices
            ),
        ]
        daemon = stack.enter_context(
            Daemon.start(
                root / "hub",
                node=HUB.key,
                extra_args=args,
                credentials=pki.client("ops/probe/p"),
            )
        )
        with grpc.insecure_channel(operators) as channel:
            stub = rpc.MsgbusServiceStub(channel)
            stub.Publish(pb.PublishRequest(topic="config.fleet", payload=b"hub's own"))

            def everything() -> bool:
                heads = stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads
                held = {(head.topic, _key(head.origin)) for head in heads if head.head_id >= 2}
                return {(t, d.key) for t in TOPICS for d in DEVICES} <= held

            wait_until(everything, message="the hub holding every device's logs", timeout=60)
        yield daemon, operators


def _expect(code: grpc.StatusCode, call: object) -> str:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


def test_each_device_sees_and_touches_only_its_tenant(hub: tuple[Daemon, str], pki: Pki) -> None:
    # One test for the six devices: each test of this module would start a hub of its own on
    # another worker, seven daemons each.
    daemon, operators = hub
    for device in DEVICES:
        _device_sees_only_its_tenant(daemon, device, pki)
    _operator_sees_every_tenant(daemon, operators)


def _device_sees_only_its_tenant(daemon: Daemon, device: NodeId, pki: Pki) -> None:
    own = [d for d in DEVICES if d.tenant_id == device.tenant_id]
    others = [d for d in DEVICES if d.tenant_id != device.tenant_id]
    with grpc.secure_channel(daemon.endpoint, pki.client(device.key)) as channel:
        stub = rpc.MsgbusServiceStub(channel)
        listed = {
            (head.topic, _key(head.origin))
            for head in stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads
        }
        assert listed == {(topic, d.key) for topic in TOPICS for d in own}, device
        # Paged listings filter each page, and paging still reaches every log of the tenant.
        paged: set[tuple[str, str]] = set()
        request = pb.ListHeadsRequest(page_size=1)
        while True:
            page = stub.ListHeads(request, timeout=10)
            paged |= {(head.topic, _key(head.origin)) for head in page.heads}
            if not page.next_page_token:
                break
            request = pb.ListHeadsRequest(page_size=1, page_token=page.next_page_token)
        assert paged == listed

        for origin in own:
            fetched = list(
                stub.Fetch(
                    pb.FetchRequest(topic="telemetry", origin=_pb(origin), from_head_id=1),
                    timeout=10,
                )
            )
            assert [f.message.payload for f in fetched] == [origin.key.encode()] * 2
            head = stub.GetHead(pb.GetHeadRequest(topic="events", origin=_pb(origin)), timeout=10)
            assert head.head_id == 2
            live = stub.Subscribe(
                pb.SubscribeRequest(topic="events", origin=_pb(origin), from_head_id=1),
                timeout=10,
            )
            assert first_response(live).message.origin.device_id == origin.device_id

        for origin in [*others, HUB]:
            fetch = pb.FetchRequest(topic="telemetry", origin=_pb(origin), from_head_id=1)
            denied = _expect(
                grpc.StatusCode.PERMISSION_DENIED,
                lambda fetch=fetch: list(stub.Fetch(fetch, timeout=10)),
            )
            assert f"origin {origin.key} is not in tenant '{device.tenant_id}'" in denied
            assert "decided by tenant-isolation" in denied
        # Fewer of these: every refusal is an audit line, and a burst of 100 is all they get.
        for origin in (others[0], HUB):
            get_head = pb.GetHeadRequest(topic="events", origin=_pb(origin))
            _expect(
                grpc.StatusCode.PERMISSION_DENIED,
                lambda get_head=get_head: stub.GetHead(get_head, timeout=10),
            )
            subscribe = pb.SubscribeRequest(topic="events", origin=_pb(origin), from_head_id=1)
            _expect(
                grpc.StatusCode.PERMISSION_DENIED,
                lambda subscribe=subscribe: first_response(stub.Subscribe(subscribe, timeout=10)),
            )

        # Writing on the hub writes the hub's own logs, which are no tenant's but the hub's.
        for call in (
            lambda: stub.Publish(pb.PublishRequest(topic="telemetry", payload=b"x"), timeout=10),
            lambda: stub.DeleteRange(
                pb.DeleteRangeRequest(topic="config.fleet", from_head_id=1, to_head_id=9),
                timeout=10,
            ),
            lambda: stub.PeekFifo(
                pb.PeekFifoRequest(queue=f"{others[0].tenant_id}.jobs"), timeout=10
            ),
        ):
            _expect(grpc.StatusCode.PERMISSION_DENIED, call)

        states = stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=10).states
        assert states, "the hub holds sync states of its tenant's logs"
        assert {state.origin.tenant_id for state in states} == {device.tenant_id}

    def audited() -> list[dict[str, object]]:
        lines = audit_lines(daemon.stderr_text())
        return [line for line in lines if line.get("identity") == device.key]

    expected = {"Fetch", "GetHead", "Subscribe", "Publish", "DeleteRange", "PeekFifo"}
    wait_until(
        lambda: {line["rpc"] for line in audited()} == expected,
        message=f"an audit line of {device.key} for each RPC it was refused",
        timeout=10,
    )
    assert {str(line["rule"]).split(":")[0] for line in audited()} == {"tenant-isolation"}
    assert sum(1 for line in audited() if line["rpc"] == "Fetch") == len(others) + 1


def _operator_sees_every_tenant(daemon: Daemon, operators: str) -> None:
    with grpc.insecure_channel(operators) as channel:
        stub = rpc.MsgbusServiceStub(channel)
        heads = stub.ListHeads(pb.ListHeadsRequest(), timeout=10).heads
        assert {_key(head.origin) for head in heads} == {d.key for d in DEVICES} | {HUB.key}
        states = stub.ListPeerSyncStates(pb.ListPeerSyncStatesRequest(), timeout=10).states
        assert {state.origin.tenant_id for state in states if state.topic} == set(TENANTS)
    assert "Traceback" not in daemon.stderr_text()


def test_a_pattern_subscription_delivers_only_the_callers_tenant(
    hub: tuple[Daemon, str], pki: Pki
) -> None:
    """topic_pattern cannot be decided up front: each log's messages are decided as they go.

    The initech devices' logs sort last, and the subscription takes its logs' turns in listing
    order, so by the time both of them arrived every other tenant's log had its turn, and was
    left out.
    """
    daemon, operators = hub
    device = DEVICES[-1]
    own = {d.key for d in DEVICES if d.tenant_id == device.tenant_id}
    request = pb.SubscribeRequest(topic_pattern="telemetry", max_messages_per_response=16)
    with grpc.insecure_channel(operators) as channel:
        everything = rpc.MsgbusServiceStub(channel).Subscribe(request, timeout=30)
        origins: set[str] = set()
        for response in everything:
            origins |= {_key(m.origin) for m in response.messages}
            if len(origins) == len(DEVICES):
                break
        everything.cancel()  # type: ignore[no-untyped-call]
    with grpc.secure_channel(daemon.endpoint, pki.client(device.key)) as channel:
        call = rpc.MsgbusServiceStub(channel).Subscribe(request, timeout=30)
        received: list[tuple[str, int]] = []
        for response in call:
            received += [(_key(m.origin), m.head_id) for m in response.messages]
            if len(received) == 2 * len(own):
                break
        call.cancel()  # type: ignore[no-untyped-call]
    assert sorted(received) == sorted((key, head) for key in own for head in (1, 2))
