"""Bearer tokens: both clients and the CLI send one on every call, to real daemons with a policy.

The daemons' policy lets the token named `app` publish and read `app.*` and nothing else (default
deny); the token file is made with msgbus_server's own tool, so the tokens are the real thing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from msgbus_sdk import (
    AsyncMsgbusClient,
    ConfigurationError,
    MsgbusClient,
    PermissionDeniedError,
    StatusCode,
    UnauthenticatedError,
)
from msgbus_sdk._config import token_metadata
from msgbus_server.testing import Daemon, wait_until
from msgbus_server.tokens import NAME_PATTERN, add_token

MSGBUS = str(Path(sys.executable).parent / "msgbus")

POLICY = """
[policy]
token-file = "tokens"

[[policy.rule]]
name = "app"
callers = ["token:app"]
allow = ["publish", "read"]
topics = ["app.*"]
"""


@dataclass(frozen=True)
class Setup:
    """Where a policy daemon's config lives, and the tokens its token file accepts."""

    config: Path
    token: str
    """The token named `app`, which the policy allows on `app.*`."""
    other: str
    """A valid token named `other`, which no rule names."""

    @property
    def wrong(self) -> str:
        """`app`'s name with another secret: not valid."""
        return "app." + "A" * 43

    def args(self) -> list[str]:
        return ["--config", str(self.config)]


def make_setup(directory: Path) -> Setup:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "msgbusd.toml"
    config.write_text(POLICY)
    # The file the policy names, relative to the config file, as the daemon reads it.
    made = subprocess.run(
        [sys.executable, "-m", "msgbus_server.tokens", "add", str(directory / "tokens"), "app"],
        capture_output=True,
        text=True,
        check=True,
    )
    other = add_token(str(directory / "tokens"), "other")
    return Setup(config, made.stdout.strip(), other)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    return make_setup(tmp_path_factory.mktemp("policy"))


@pytest.fixture(scope="module")
def guarded(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon with the policy, shared by the tests that do not stop it."""
    with Daemon.start(tmp_path_factory.mktemp("guarded"), extra_args=setup.args()) as daemon:
        yield daemon


def secret_of(token: str) -> str:
    return token.partition(".")[2]


# -- the token's form ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["app", "A-b_9", "x" * 64, "x" * 65, "", "bad name", "dot.ted", "ünï", "a/b"]
)
def test_the_sdk_accepts_the_token_names_msgbusd_accepts(name: str) -> None:
    """The SDK's copy of msgbusd's name rule agrees with it (one rule, checked in two places)."""
    token = f"{name}.s3cr3t"
    try:
        token_metadata(token)
    except ConfigurationError:
        accepted = False
    else:
        accepted = True
    # The daemon splits at the first dot: a name with a dot is the part before it.
    assert accepted == bool(NAME_PATTERN.fullmatch(name.partition(".")[0]))


def test_a_token_msgbusd_makes_travels_as_bearer_metadata(setup: Setup) -> None:
    assert token_metadata(setup.token) == (("authorization", f"Bearer {setup.token}"),)
    assert token_metadata(None) == ()


MALFORMED = [
    "no-dot-TopSecretValue",  # the secret given without its name
    "bad name.TopSecretValue",
    "app.Top Secret Value",
    "app.TopSecretValue\n",
    "app.TopSecretValueé",
    "app.",
    "x" * 65 + ".TopSecretValue",
    "app." + "TopSecretValue" * 80,
]


@pytest.mark.parametrize("token", MALFORMED)
async def test_a_malformed_token_is_a_configuration_error_that_keeps_the_secret(
    token: str,
) -> None:
    # An endpoint nothing listens on: the token is refused before any connection is tried.
    with pytest.raises(ConfigurationError) as sync_error:
        MsgbusClient.connect("127.0.0.1:1", token=token, timeout=5)
    with pytest.raises(ConfigurationError) as async_error:
        await AsyncMsgbusClient.connect("127.0.0.1:1", token=token, timeout=5)
    for error in (sync_error.value, async_error.value):
        assert error.field == "token"
        assert "token must be NAME.SECRET" in str(error)
        secret = "TopSecretValue" if "TopSecretValue" in token else token
        assert secret not in str(error)
        assert secret not in repr(error)


# -- calls with a token -------------------------------------------------------------------------


def test_the_blocking_client_sends_its_token_on_every_call(guarded: Daemon, setup: Setup) -> None:
    with MsgbusClient.connect(guarded.endpoint, token=setup.token) as bus:
        stored = bus.publish("app.sync", b"one")
        assert bus.publish_batch([("app.sync", b"two")])[0].head_id == stored.head_id + 1
        assert [m.payload for m in bus.fetch("app.sync")] == [b"one", b"two"]
        assert bus.get_head("app.sync").head_id == stored.head_id + 1
        # ListHeads is filtered to what the token may read (the other tests' app.* logs).
        topics = [head.topic for head in bus.list_heads()]
        assert "app.sync" in topics
        assert all(topic.startswith("app.") for topic in topics)
        with pytest.raises(PermissionDeniedError) as denied:
            bus.publish("other.sync", b"x")
        assert denied.value.code is StatusCode.PERMISSION_DENIED
        assert "token:app may not publish to topic 'other.sync'" in denied.value.message
        with pytest.raises(PermissionDeniedError):
            bus.enqueue_fifo("jobs", "app.sync", guarded.node.key, b"x")
    # Without the token the same publish is the anonymous caller's, whom no rule allows.
    with MsgbusClient.connect(guarded.endpoint) as anonymous:
        with pytest.raises(PermissionDeniedError) as denied:
            anonymous.publish("app.sync", b"x")
        assert "anonymous may not publish" in denied.value.message
    # A valid token no rule names is allowed nothing.
    with MsgbusClient.connect(guarded.endpoint, token=setup.other) as other:
        with pytest.raises(PermissionDeniedError) as denied:
            other.get_head("app.sync")
        assert "token:other may not read" in denied.value.message


async def test_the_asyncio_client_sends_its_token_on_every_call(
    guarded: Daemon, setup: Setup
) -> None:
    async with await AsyncMsgbusClient.connect(guarded.endpoint, token=setup.token) as bus:
        # Concurrent publishes: coalesced into PublishBatch calls, which carry the token too.
        stored = await asyncio.gather(*(bus.publish("app.async", b"%d" % i) for i in range(20)))
        assert sorted(envelope.head_id for envelope in stored) == list(range(1, 21))
        assert len(await bus.fetch("app.async", limit=100)) == 20
        assert (await bus.get_head("app.async")).head_id == 20
        with pytest.raises(PermissionDeniedError) as denied:
            await bus.delete_range("app.async", 1, 5)
        assert "token:app may not delete" in denied.value.message
        with pytest.raises(PermissionDeniedError):
            await bus.publish("other.async", b"x")


@pytest.mark.parametrize("which", ["wrong secret", "unknown name"])
async def test_a_token_the_daemon_does_not_accept_is_unauthenticated_for_both_clients(
    guarded: Daemon, setup: Setup, which: str
) -> None:
    token = setup.wrong if which == "wrong secret" else "nobody." + secret_of(setup.token)
    # Health is answered to everyone (probes need it), so connecting works; the calls do not.
    with MsgbusClient.connect(guarded.endpoint, token=token) as bus:
        for call in (lambda: bus.publish("app.x", b"x"), lambda: bus.fetch("app.x")):
            with pytest.raises(UnauthenticatedError) as refused:
                call()
            assert refused.value.code is StatusCode.UNAUTHENTICATED
            assert not refused.value.retryable
            assert secret_of(token) not in str(refused.value)
    async with await AsyncMsgbusClient.connect(guarded.endpoint, token=token) as aio:
        with pytest.raises(UnauthenticatedError):
            await aio.publish("app.x", b"x")
        with pytest.raises(UnauthenticatedError):
            await aio.get_head("app.x")
        # A reconnecting subscription does not retry it: the first read raises.
        subscription = aio.subscribe("app.x")
        with pytest.raises(UnauthenticatedError):
            await asyncio.wait_for(anext(subscription), 30)
        await subscription.aclose()


# -- several endpoints --------------------------------------------------------------------------


@pytest.fixture
def pair(setup: Setup, tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    """Two daemons with the same policy and token file: one client's two endpoints."""
    with (
        Daemon.start(tmp_path / "a", extra_args=setup.args()) as first,
        Daemon.start(tmp_path / "b", extra_args=setup.args()) as second,
    ):
        yield first, second


def test_the_token_goes_to_the_endpoint_failed_over_to_and_is_never_logged(
    pair: tuple[Daemon, Daemon], setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = pair
    target = [first.endpoint, second.endpoint]
    caplog.set_level(logging.DEBUG)
    with MsgbusClient.connect(target, token=setup.wrong) as wrong:
        with pytest.raises(UnauthenticatedError):
            wrong.get_head("app.fail")
        assert wrong.endpoint == first.endpoint  # a refused token is no reason to fail over
    with MsgbusClient.connect(target, token=setup.token) as bus:
        assert bus.endpoint == first.endpoint
        bus.publish("app.fail", b"on the first")
        first.stop()
        # A read is retried on the second endpoint, over a channel opened only now: its calls
        # carry the token too, or the policy would refuse them to the anonymous caller.
        assert bus.get_head("app.fail").head_id == 0
        assert bus.endpoint == second.endpoint
        assert bus.publish("app.fail", b"on the second").head_id == 1
    assert "failing over to" in caplog.text
    for token in (setup.token, setup.wrong):
        assert secret_of(token) not in caplog.text


# -- subscriptions ------------------------------------------------------------------------------


async def test_a_subscription_with_a_token_resumes_after_a_daemon_restart(
    setup: Setup, tmp_path: Path
) -> None:
    with Daemon.start(tmp_path / "msgbusd", extra_args=setup.args()) as daemon:
        async with await AsyncMsgbusClient.connect(daemon.endpoint, token=setup.token) as bus:
            for i in range(1, 4):
                await bus.publish("app.live", b"%d" % i)
            received: list[int] = []
            subscription = bus.subscribe("app.live")

            async def consume() -> None:
                async for message in subscription:
                    received.append(message.head_id)
                    if len(received) == 6:
                        return

            consumer = asyncio.create_task(consume())
            await asyncio.to_thread(
                wait_until, lambda: len(received) >= 3, message="the first 3 messages", timeout=30
            )
            await asyncio.to_thread(daemon.stop)
            await asyncio.to_thread(daemon.restart)  # same port, same file, same policy
            # The stream is reopened on a new connection: the daemon lets it read app.live
            # only because the reopened Subscribe carries the token.
            with MsgbusClient.connect(daemon.endpoint, token=setup.token) as writer:
                for i in range(4, 7):
                    assert writer.publish("app.live", b"%d" % i).head_id == i
            await asyncio.wait_for(consumer, 60)
            await subscription.aclose()
        assert received == [1, 2, 3, 4, 5, 6]


def test_a_denied_subscription_raises_and_is_not_retried(guarded: Daemon, setup: Setup) -> None:
    with (
        MsgbusClient.connect(guarded.endpoint, token=setup.token) as bus,
        bus.subscribe("other.live") as subscription,
        pytest.raises(PermissionDeniedError),
    ):
        next(subscription)


# -- the CLI ------------------------------------------------------------------------------------


def run(daemon: Daemon, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    environment.update(MSGBUS_ENDPOINT=daemon.endpoint, **env)
    return subprocess.run(
        [MSGBUS, *args], env=environment, capture_output=True, text=True, timeout=120
    )


def test_the_cli_sends_msgbus_token_and_the_token_flag(guarded: Daemon, setup: Setup) -> None:
    # `MSGBUS_TOKEN=$(cat file)` style: the newline a file ends with does not matter.
    published = run(guarded, "publish", "app.cli", "hello", env={"MSGBUS_TOKEN": setup.token})
    assert published.returncode == 0, published.stderr
    fetched = run(guarded, "fetch", "app.cli", "--json", env={"MSGBUS_TOKEN": setup.token + "\n"})
    assert fetched.returncode == 0, fetched.stderr
    assert [json.loads(line)["payload"] for line in fetched.stdout.splitlines()] == ["hello"]
    flagged = run(guarded, "--token", setup.token, "publish", "app.cli", "again", env={})
    assert flagged.returncode == 0, flagged.stderr

    anonymous = run(guarded, "publish", "app.cli", "x", env={})
    assert anonymous.returncode != 0
    assert "PERMISSION_DENIED" in anonymous.stderr

    wrong = run(guarded, "publish", "app.cli", "x", env={"MSGBUS_TOKEN": setup.wrong})
    assert wrong.returncode != 0
    assert "UNAUTHENTICATED" in wrong.stderr
    assert secret_of(setup.wrong) not in wrong.stderr + wrong.stdout

    malformed = run(guarded, "publish", "app.cli", "x", env={"MSGBUS_TOKEN": "TopSecretValue"})
    assert malformed.returncode == 2
    assert "token must be NAME.SECRET" in malformed.stderr
    assert "TopSecretValue" not in malformed.stderr
