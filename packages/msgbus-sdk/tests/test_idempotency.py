"""Exactly-once publish in the SDK, both clients and the CLI, against real daemons (issue 19).

Every publish carries a key of the client's unless told otherwise (the daemon's publish_keys
table shows it), a repeated key returns the first message with `is_duplicate`, batch entries
carry their own keys, and a keyed publish is retried through a daemon restart.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from msgbus_sdk import (
    AsyncMsgbusClient,
    ConfigurationError,
    InvalidArgumentError,
    MsgbusClient,
    PublishEntry,
    UnavailableError,
    is_duplicate,
)
from msgbus_server.testing import Daemon

MSGBUS = str(Path(sys.executable).parent / "msgbus")


def _keys(daemon: Daemon) -> int:
    con = sqlite3.connect(f"file:{daemon.data_path}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM publish_keys").fetchone()[0])
    finally:
        con.close()


def test_every_publish_carries_a_key_unless_the_client_opts_out(
    fresh_daemon: Daemon, topic: str
) -> None:
    with MsgbusClient.connect(fresh_daemon.endpoint) as bus:
        sent = bus.publish(topic, b"a")
        assert not is_duplicate(sent)
        bus.publish_batch([(topic, b"b"), (topic, b"c")])
        assert _keys(fresh_daemon) == 3
    with MsgbusClient.connect(fresh_daemon.endpoint, auto_idempotency=False) as bus:
        bus.publish(topic, b"d")
        bus.publish_batch([(topic, b"e")])
        assert _keys(fresh_daemon) == 3
        # A key the caller names is sent whatever the client option says.
        bus.publish(topic, b"f", idempotency_key="named")
        assert _keys(fresh_daemon) == 4
        assert bus.get_head(topic).head_id == 6


def test_a_repeated_key_returns_the_first_message_flagged(daemon: Daemon, topic: str) -> None:
    with MsgbusClient.connect(daemon.endpoint) as bus:
        first = bus.publish(topic, b"first", idempotency_key="order-7")
        again = bus.publish(topic, b"second", idempotency_key="order-7")
        assert is_duplicate(again)
        assert not is_duplicate(first)
        assert again == first
        batch = bus.publish_batch(
            [
                PublishEntry(topic, b"x", idempotency_key="order-7"),
                PublishEntry(topic, b"y", idempotency_key="order-8"),
                PublishEntry(topic, b"z", idempotency_key="order-8"),
                (topic, b"auto"),
            ]
        )
        assert [is_duplicate(m) for m in batch] == [True, False, True, False]
        assert batch[0] == first
        assert [m.head_id for m in batch] == [1, 2, 2, 3]
        with pytest.raises(InvalidArgumentError) as refused:
            bus.publish(topic, b"x", idempotency_key="k" * 129)
        assert refused.value.field == "idempotency_key"
        assert bus.get_head(topic).head_id == 3


async def test_the_asyncio_client_dedups_coalesced_publishes(daemon: Daemon, topic: str) -> None:
    async with await AsyncMsgbusClient.connect(daemon.endpoint, publish_stream=False) as bus:
        # Concurrent publishes travel in one coalesced batch, each with its own flag.
        sent = await asyncio.gather(
            *(bus.publish(topic, b"m", idempotency_key=f"k{n % 3}") for n in range(9))
        )
        assert sum(not is_duplicate(m) for m in sent) == 3
        assert {m.head_id for m in sent} == {1, 2, 3}
        assert (await bus.get_head(topic)).head_id == 3


def test_a_keyed_publish_is_retried_through_a_daemon_restart(
    fresh_daemon: Daemon, topic: str
) -> None:
    with MsgbusClient.connect(fresh_daemon.endpoint, timeout=5) as bus:
        bus.publish(topic, b"before")
        fresh_daemon.stop()
        outcome: list[object] = []

        def publish() -> None:
            try:
                outcome.append(bus.publish(topic, b"during", idempotency_key="through"))
            except BaseException as error:  # reported to the test thread below
                outcome.append(error)

        publisher = threading.Thread(target=publish)
        publisher.start()
        fresh_daemon.restart()
        publisher.join(60)
        assert not publisher.is_alive()
        [sent] = outcome
        assert not isinstance(sent, BaseException), sent
        assert bus.get_head(topic).head_id == 2
        assert is_duplicate(bus.publish(topic, b"again", idempotency_key="through"))


def test_without_a_key_a_publish_is_not_retried(fresh_daemon: Daemon, topic: str) -> None:
    with MsgbusClient.connect(fresh_daemon.endpoint, timeout=2, auto_idempotency=False) as bus:
        fresh_daemon.stop()
        with pytest.raises(UnavailableError):
            bus.publish(topic, b"lost")


def test_a_negative_retry_deadline_is_a_configuration_error(daemon: Daemon) -> None:
    with pytest.raises(ConfigurationError, match="publish_retry_deadline"):
        MsgbusClient.connect(daemon.endpoint, publish_retry_deadline=-1)


def test_the_cli_publishes_once_under_a_key(daemon: Daemon, topic: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    environment["MSGBUS_ENDPOINT"] = daemon.endpoint
    outputs = []
    for payload in ("one", "two"):
        result = subprocess.run(
            [MSGBUS, "publish", topic, payload, "--idempotency-key", "cli-1"],
            env=environment,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        outputs.append(result.stdout.decode())
    assert outputs[0].startswith(f"published topic={topic} head_id=1 ")
    assert outputs[1].startswith(f"duplicate of topic={topic} head_id=1 ")
    assert outputs[0].split("id=")[-1] == outputs[1].split("id=")[-1]
