"""SIGHUP reads the policy again: a broken file keeps the old policy (and says why), a good one
decides the very next call."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, free_port, wait_until
from msgbus_server.tokens import add_token

RELOADED = "policy reloaded from"
FAILED = "policy reload failed; the previous policy stays in force"


def publishing(topics: str, *, callers: str = '"anonymous"', extra: str = "") -> str:
    return f"""
listen = "127.0.0.1:50051"   # the flags win; the file's other keys are not reloaded
[policy]
{extra}
[[policy.rule]]
name = "writers"
callers = [{callers}]
allow = ["publish"]
topics = [{topics}]
"""


def code_of(
    stub: rpc.MsgbusServiceStub, topic: str, metadata: tuple[tuple[str, str], ...] = ()
) -> str:
    try:
        stub.Publish(pb.PublishRequest(topic=topic, payload=b"x"), timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        return error.code().name
    return "OK"


def hangup(daemon: Daemon, needle: str) -> str:
    """SIGHUP, then wait for one more log line holding `needle`; that line."""
    seen = daemon.stderr_text().count(needle)
    daemon.signal(signal.SIGHUP)
    wait_until(
        lambda: daemon.stderr_text().count(needle) > seen,
        message=f"a log line with {needle!r} after SIGHUP",
        timeout=20,
    )
    return [line for line in daemon.stderr_text().splitlines() if needle in line][-1]


def test_a_broken_file_keeps_the_old_policy_and_a_good_one_applies_at_once(
    tmp_path: Path,
) -> None:
    config = tmp_path / "msgbusd.toml"
    config.write_text(publishing('"a.*"'))
    with Daemon.start(tmp_path / "daemon", extra_args=["--config", str(config)]) as daemon:
        stub = daemon.stub()
        assert (code_of(stub, "a.x"), code_of(stub, "b.x")) == ("OK", "PERMISSION_DENIED")

        config.write_text(publishing('"b.*"').replace('allow = ["publish"]', 'allow = ["pubish"]'))
        line = hangup(daemon, FAILED)
        assert "policy.rule[0].allow[0]: unknown action 'pubish'" in line
        assert (code_of(stub, "a.x"), code_of(stub, "b.x")) == ("OK", "PERMISSION_DENIED")

        config.write_text("[policy\n")
        assert "invalid TOML" in hangup(daemon, FAILED)
        assert (code_of(stub, "a.x"), code_of(stub, "b.x")) == ("OK", "PERMISSION_DENIED")

        config.write_text(publishing('"b.*"'))
        assert "1 rule(s), default deny" in hangup(daemon, RELOADED)
        # The next call, on the same connection, meets the new rules.
        assert (code_of(stub, "a.x"), code_of(stub, "b.x")) == ("PERMISSION_DENIED", "OK")

        # The token file is read again with the policy: a token made meanwhile works.
        token = add_token(str(tmp_path / "tokens"), "late")
        config.write_text(
            publishing('"c.*"', callers='"token:late"', extra='token-file = "tokens"')
        )
        hangup(daemon, RELOADED)
        bearer = (("authorization", f"Bearer {token}"),)
        assert code_of(stub, "c.x", bearer) == "OK"
        assert code_of(stub, "c.x") == "PERMISSION_DENIED"
        assert code_of(stub, "c.x", (("authorization", "Bearer late.wrong"),)) == "UNAUTHENTICATED"
        assert daemon.poll() is None
        assert "Traceback" not in daemon.stderr_text()


def test_sighup_without_a_policy_source_changes_nothing(tmp_path: Path) -> None:
    with Daemon.start(tmp_path) as daemon:
        line = hangup(daemon, "there is no policy to reload")
        assert "WARNING" in line
        assert code_of(daemon.stub(), "anything") == "OK"
        assert daemon.poll() is None


def test_a_reload_cannot_take_the_policy_away_from_a_non_loopback_listener(
    tmp_path: Path,
) -> None:
    config = tmp_path / "msgbusd.toml"
    config.write_text(publishing('"a.*"'))
    port = free_port()
    extra = ["--listen", f"0.0.0.0:{port}", "--allow-insecure", "--config", str(config)]
    with Daemon.start(tmp_path / "daemon", port=port, extra_args=extra) as daemon:
        config.write_text('listen = "0.0.0.0:1"\n')
        assert "a listener other than loopback needs one" in hangup(daemon, FAILED)
        assert code_of(daemon.stub(), "b.x") == "PERMISSION_DENIED"


@pytest.mark.parametrize("form", ["inline", "file"])
def test_the_policy_may_live_in_its_own_file(tmp_path: Path, form: str) -> None:
    rules = tmp_path / "policy.toml"
    rules.write_text(publishing('"a.*"'))
    if form == "inline":
        config = tmp_path / "msgbusd.toml"
        config.write_text('policy = "policy.toml"\n')
        extra = ["--config", str(config)]
    else:
        extra = ["--policy", str(rules)]
    with Daemon.start(tmp_path / "daemon", extra_args=extra) as daemon:
        stub = daemon.stub()
        assert code_of(stub, "b.x") == "PERMISSION_DENIED"
        rules.write_text(publishing('"b.*"'))
        hangup(daemon, RELOADED)
        assert code_of(stub, "b.x") == "OK"
