"""Clients of several endpoints: connect to the first that answers, fail over when it is gone.

Real daemons throughout. A and B are two nodes that sync each other's logs, so a log's head_id
names the same message on both: a read or a subscription that moves from A to B goes on where
it was. A dead endpoint is a free loopback port nobody listens on.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_sdk import (
    AsyncMsgbusClient,
    ConfigurationError,
    MessageEnvelope,
    MsgbusClient,
    ReconnectPolicy,
    TlsConfig,
    UnavailableError,
    node_key,
)
from msgbus_sdk._config import channel_options
from msgbus_sdk._errors import never_sent
from msgbus_sdk.cli import main
from msgbus_server.testing import Daemon, free_port, free_ports, wait_until
from msgbus_testkit.certificates import CertificateAuthority
from msgbus_testkit.netns import DelayCutProxy

FAST = ReconnectPolicy(initial_delay=0.05, max_delay=0.5)
NODE_A = "tenant/default/a"
NODE_B = "tenant/default/b"


def dead_endpoint() -> str:
    """A loopback endpoint nobody listens on: connections to it are refused."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """Daemons A and B, of two nodes, each pulling the other's logs every 100 ms."""
    port_a, port_b = free_ports(2)

    def sync_from(port: int, node: str) -> list[str]:
        return ["--peer", f"127.0.0.1:{port}={node}", "--sync-interval-ms", "100"]

    with (
        Daemon.start(
            tmp_path / "a", node=NODE_A, port=port_a, extra_args=sync_from(port_b, NODE_B)
        ) as a,
        Daemon.start(
            tmp_path / "b", node=NODE_B, port=port_b, extra_args=sync_from(port_a, NODE_A)
        ) as b,
    ):
        yield a, b


def heads(daemon: Daemon, topic: str, origin: str) -> list[int]:
    """The head_ids one daemon holds of a log, asked on a connection of its own."""
    with MsgbusClient.connect(daemon.endpoint) as bus:
        return [message.head_id for message in bus.fetch(topic, origin, limit=1000)]


def wait_for_heads(daemon: Daemon, topic: str, origin: str, expected: list[int]) -> None:
    wait_until(
        lambda: heads(daemon, topic, origin) == expected,
        message=f"{daemon.node.key} to hold heads {expected} of {topic} from {origin}",
        timeout=30,
    )


# -- connect ---------------------------------------------------------------------------------


def test_connect_uses_the_first_endpoint_that_answers(daemon: Daemon) -> None:
    dead = dead_endpoint()
    target = f"{dead} , {daemon.endpoint}"
    with MsgbusClient.connect(target) as bus:
        assert bus.endpoint == daemon.endpoint
        assert bus.endpoints == (dead, daemon.endpoint)
        assert bus.target == target
        assert node_key(bus.node) == "tenant/default/device"
        assert bus.publish("failover.connect", b"x").head_id >= 1
    # In order: the first of two live endpoints wins.
    with MsgbusClient.connect([daemon.endpoint, dead]) as bus:
        assert bus.endpoint == daemon.endpoint
        assert bus.target == f"{daemon.endpoint},{dead}"


async def test_async_connect_takes_a_sequence_of_endpoints(daemon: Daemon) -> None:
    dead = dead_endpoint()
    async with await AsyncMsgbusClient.connect((dead, f"http://{daemon.endpoint}")) as bus:
        assert bus.endpoint == f"http://{daemon.endpoint}"
        assert bus.endpoints == (dead, f"http://{daemon.endpoint}")
        assert (await bus.health()).status == "SERVING"


async def test_when_no_endpoint_answers_the_error_names_each_and_why() -> None:
    first, second = dead_endpoint(), dead_endpoint()
    with pytest.raises(UnavailableError) as blocking:
        MsgbusClient.connect([first, second])
    with pytest.raises(UnavailableError) as asyncio_:
        await AsyncMsgbusClient.connect([first, second])
    for raised in (blocking, asyncio_):
        message = raised.value.message
        assert message.startswith(f"no endpoint answers: {first}: UNAVAILABLE: ")
        assert f"; {second}: UNAVAILABLE: " in message
        assert message.count("Connection refused") == 2


def test_a_single_endpoint_fails_with_grpcs_own_error_as_before() -> None:
    with pytest.raises(UnavailableError) as raised:
        MsgbusClient.connect(dead_endpoint())
    assert raised.value.message.startswith("failed to connect to all addresses")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ([], "no endpoint given: the target must name at least one endpoint"),
        (
            "127.0.0.1:1,,127.0.0.1:2",
            "invalid endpoint '': expected host:port "
            "(endpoint 2 of 3 in '127.0.0.1:1,,127.0.0.1:2')",
        ),
        ("127.0.0.1:1,", "invalid endpoint '': expected host:port (endpoint 2 of 2 in"),
        (
            ["127.0.0.1:1", "ftp://hub:1"],
            "invalid endpoint 'ftp://hub:1': scheme must be http or https, not 'ftp' "
            "(endpoint 2 of 2 in ['127.0.0.1:1', 'ftp://hub:1'])",
        ),
        ("hub:70000,127.0.0.1:1", "invalid endpoint 'hub:70000': port must be 1-65535 (endpoint 1"),
        (["127.0.0.1:1", b"hub:1"], "invalid endpoint b'hub:1': expected a string (endpoint 2"),
        ("http://hub:1/path", "invalid endpoint 'http://hub:1/path': a path is not allowed"),
    ],
)
async def test_a_bad_endpoint_list_is_a_configuration_error_naming_the_endpoint(
    target: Sequence[str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        MsgbusClient.connect(target)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        await AsyncMsgbusClient.connect(target)


def test_https_on_one_endpoint_means_tls_on_every_endpoint(daemon: Daemon) -> None:
    # The plaintext daemon cannot complete a TLS handshake, so TLS did apply to it.
    dead = f"https://{dead_endpoint()}"
    with pytest.raises(UnavailableError) as raised:
        MsgbusClient.connect([dead, daemon.endpoint], timeout=5)
    assert f"; {daemon.endpoint}: UNAVAILABLE: " in raised.value.message
    with MsgbusClient.connect([dead.removeprefix("https://"), daemon.endpoint]) as bus:
        assert bus.endpoint == daemon.endpoint


def test_tls_settings_apply_to_every_endpoint(tmp_path: Path) -> None:
    pki = CertificateAuthority().write_tls_files(tmp_path, server_hosts=["127.0.0.1"])
    with Daemon.start(
        tmp_path / "tls", extra_args=pki.server_args(), credentials=pki.credentials(client=False)
    ) as secure:
        tls = TlsConfig.from_files(ca=pki.ca)
        with MsgbusClient.connect([dead_endpoint(), secure.endpoint], tls=tls) as bus:
            assert bus.endpoint == secure.endpoint
            assert bus.health().status == "SERVING"


def test_the_cli_takes_comma_separated_endpoints(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()

    endpoints = f"{dead_endpoint()},{daemon.endpoint}"
    assert run("--endpoint", endpoints, "health") == (
        0,
        "SERVING  node=tenant/default/device\n",
        "",
    )
    monkeypatch.setenv("MSGBUS_ENDPOINT", endpoints)
    assert run("health")[0] == 0
    status, _, err = run("--endpoint", "127.0.0.1:1,,127.0.0.1:2", "health")
    assert (status, "(endpoint 2 of 3 in '127.0.0.1:1,,127.0.0.1:2')" in err) == (2, True)
    both_dead = f"{dead_endpoint()},{dead_endpoint()}"
    status, _, err = run("--endpoint", both_dead, "health")
    assert status == 3
    assert f"cannot reach the daemon at {both_dead}: UNAVAILABLE: no endpoint answers: " in err


# -- which calls may be sent again ------------------------------------------------------------


def test_only_a_call_that_could_not_connect_counts_as_never_sent(fresh_daemon: Daemon) -> None:
    options = channel_options(None, 5.0)
    with (
        grpc.insecure_channel(dead_endpoint(), options=options) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        rpc.MsgbusServiceStub(channel).Publish(pb.PublishRequest(topic="t"), timeout=10)
    assert never_sent(refused.value)
    with grpc.insecure_channel(fresh_daemon.endpoint, options=options) as channel:
        stub = rpc.MsgbusServiceStub(channel)
        stub.Publish(pb.PublishRequest(topic="t", payload=b"1"), timeout=10)
        stream = iter(stub.Subscribe(pb.SubscribeRequest(topic="t", from_head_id=1)))
        assert next(stream).message.head_id == 1
        fresh_daemon.kill()  # the stream breaks mid-call: UNAVAILABLE, but it was sent
        with pytest.raises(grpc.RpcError) as broken:
            next(stream)
    assert broken.value.code() is grpc.StatusCode.UNAVAILABLE
    assert not never_sent(broken.value)


def test_a_publish_whose_outcome_is_unknown_is_not_sent_again(tmp_path: Path, topic: str) -> None:
    with (
        Daemon.start(tmp_path / "a", node=NODE_A) as a,
        Daemon.start(tmp_path / "b", node=NODE_B) as b,
        # Every chunk crosses the link 0.75 s late: the publish's answer is still on its way
        # back when A has stored it, and the link is cut then.
        DelayCutProxy(a.endpoint, delay_s=0.75) as link,
        MsgbusClient.connect([link.endpoint, b.endpoint]) as bus,
        MsgbusClient.connect(a.endpoint) as on_a,
        MsgbusClient.connect(b.endpoint) as on_b,
    ):
        assert bus.endpoint == link.endpoint
        outcome: list[MessageEnvelope | BaseException] = []

        def publish() -> None:
            try:
                outcome.append(bus.publish(topic, b"once"))
            except BaseException as error:  # reported to the test thread below
                outcome.append(error)

        publisher = threading.Thread(target=publish)
        publisher.start()
        wait_until(lambda: on_a.get_head(topic).found, message="A storing the publish")
        link.cut()
        publisher.join(30)
        assert not publisher.is_alive()
        assert len(outcome) == 1
        assert isinstance(outcome[0], UnavailableError), outcome
        # Stored once, by A; not sent again to B, and the next call goes to B.
        assert bus.endpoint == b.endpoint
        assert on_a.get_head(topic).head_id == 1
        assert not on_b.get_head(topic).found
        assert bus.publish(topic, b"next").origin == on_b.node


def test_a_publish_that_could_not_connect_goes_to_the_next_endpoint(
    tmp_path: Path, topic: str
) -> None:
    with (
        Daemon.start(tmp_path / "a", node=NODE_A) as a,
        Daemon.start(tmp_path / "b", node=NODE_B) as b,
        MsgbusClient.connect([a.endpoint, b.endpoint]) as bus,
    ):
        # The client's channel to A (private): once it has seen A's connection close, the next
        # call must connect anew, is refused, and so never leaves the client.
        states: list[grpc.ChannelConnectivity] = []
        bus._channels[0].subscribe(states.append)  # type: ignore[union-attr]
        a.kill()
        wait_until(
            lambda: states and states[-1] is not grpc.ChannelConnectivity.READY,
            message="the client's channel to noticing that A is gone",
        )
        sent = bus.publish(topic, b"sent once")
        assert bus.endpoint == b.endpoint
        assert node_key(sent.origin) == NODE_B
        assert heads(b, topic, NODE_B) == [1]


# -- failing over ----------------------------------------------------------------------------


def test_the_blocking_client_fails_over_when_its_daemon_is_killed(
    pair: tuple[Daemon, Daemon], topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    dead = dead_endpoint()
    with MsgbusClient.connect([a.endpoint, dead, b.endpoint]) as bus:
        assert bus.endpoint == a.endpoint
        for i in range(1, 4):
            assert bus.publish(topic, str(i)).head_id == i  # A's own log
        wait_for_heads(b, topic, NODE_A, [1, 2, 3])
        a.kill()
        with caplog.at_level(logging.WARNING, logger="msgbus_sdk"):
            # A read is sent again: to B, the next endpoint that answers its health check.
            assert bus.get_head(topic, NODE_A).head_id == 3
        assert bus.endpoint == b.endpoint
        assert node_key(bus.node) == NODE_B
        assert [m.head_id for m in bus.fetch(topic, NODE_A)] == [1, 2, 3]
        assert [m.head_id for m in bus.iter_fetch(topic, NODE_A, page_size=2)] == [1, 2, 3]
        assert bus.publish(topic, b"on b").origin == bus.node  # B's own log now
    failovers = [r.getMessage() for r in caplog.records if "failing over" in r.getMessage()]
    assert len(failovers) == 1
    assert failovers[0].startswith(f"endpoint {a.endpoint} is unavailable (UNAVAILABLE: ")
    assert failovers[0].endswith(f"; failing over to {b.endpoint}")


@pytest.mark.parametrize("how", ["kill", "stop"])
async def test_the_asyncio_client_fails_over_when_its_daemon_goes_away(
    pair: tuple[Daemon, Daemon], topic: str, how: str
) -> None:
    a, b = pair
    async with await AsyncMsgbusClient.connect(f"{a.endpoint},{b.endpoint}") as bus:
        for i in range(1, 4):
            await bus.publish(topic, str(i))
        await asyncio.to_thread(wait_for_heads, b, topic, NODE_A, [1, 2, 3])
        await asyncio.to_thread(a.kill if how == "kill" else a.stop)
        messages = await bus.fetch(topic, NODE_A)
        assert [m.head_id for m in messages] == [1, 2, 3]
        assert bus.endpoint == b.endpoint
        assert (await bus.publish(topic, b"on b")).origin == bus.node
        # Concurrent publishes all land on B, once each.
        sent = await asyncio.gather(*(bus.publish(topic, str(i)) for i in range(5)))
        assert sorted(m.head_id for m in sent) == [2, 3, 4, 5, 6]
    assert heads(b, topic, NODE_B) == [1, 2, 3, 4, 5, 6]


async def test_an_async_subscription_resumes_on_the_next_endpoint_without_gap_or_duplicate(
    pair: tuple[Daemon, Daemon], topic: str
) -> None:
    a, b = pair
    with MsgbusClient.connect(b.endpoint) as writer:  # B's own log, which A pulls
        for i in range(1, 6):
            writer.publish(topic, str(i))
        async with await AsyncMsgbusClient.connect([a.endpoint, b.endpoint]) as bus:
            assert bus.endpoint == a.endpoint
            subscription = bus.subscribe(topic, NODE_B, replay_limit=2, reconnect=FAST)
            received = [(await asyncio.wait_for(anext(subscription), 30)) for _ in range(5)]
            await asyncio.to_thread(a.kill)
            # Published after A died: only B can deliver them.
            for i in range(6, 11):
                writer.publish(topic, str(i))
            received += [(await asyncio.wait_for(anext(subscription), 30)) for _ in range(5)]
            await subscription.aclose()
            assert bus.endpoint == b.endpoint
    assert [m.head_id for m in received] == list(range(1, 11))
    assert [m.payload for m in received] == [str(i).encode() for i in range(1, 11)]
    assert subscription.next_head_id == 11


def test_a_blocking_subscription_resumes_on_the_next_endpoint_without_gap_or_duplicate(
    pair: tuple[Daemon, Daemon], topic: str
) -> None:
    a, b = pair
    received: list[int] = []
    errors: list[BaseException] = []
    with (
        MsgbusClient.connect(b.endpoint) as writer,
        MsgbusClient.connect([a.endpoint, b.endpoint]) as bus,
    ):
        for i in range(1, 4):
            writer.publish(topic, str(i))
        subscription = bus.subscribe(topic, NODE_B, reconnect=FAST)

        def consume() -> None:
            try:
                for message in subscription:
                    received.append(message.head_id)
                    if message.head_id == 8:
                        return
            except BaseException as error:  # reported to the test thread below
                errors.append(error)

        consumer = threading.Thread(target=consume)
        consumer.start()
        wait_until(lambda: len(received) == 3, message="the first 3 heads through A", timeout=30)
        assert bus.endpoint == a.endpoint
        a.kill()
        for i in range(4, 9):
            writer.publish(topic, str(i))
        consumer.join(60)
        subscription.close()
        assert bus.endpoint == b.endpoint
    assert not consumer.is_alive()
    assert errors == []
    assert received == list(range(1, 9))
