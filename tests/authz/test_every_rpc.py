"""Every RPC x {allowed, denied} x {certificate, Unix uid, token, anonymous}, on real daemons.

One policy grants a trusted caller of each kind everything; a stranger of the same kind gets
nothing. For every cell the test checks each call's status code, that a refused caller changed
nothing in the database file (every row of every table is compared), and that each refusal left
an audit line naming the RPC, the caller and the rule. Health and Ready are answered to every
caller; ListHeads and ListCursors are not refused but show a stranger nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from msgbus_core.model import NodeId
from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, clean_env, wait_until
from msgbus_server.tokens import add_token
from msgbus_testkit.authz import RPCS, Outcome, Pki, audit_lines, every_rpc, store_rows

TOPIC = "matrix.log"
QUEUE = "matrix.queue"
NODE = NodeId("tenant", "default", "device")
STRANGER_UID = 65534
ALWAYS_ANSWERED = {"Health", "Ready", "ListHeads", "ListCursors"}
KINDS = ("certificate", "unix", "token", "anonymous")


def policy_text(*, anonymous_trusted: bool) -> str:
    trusted = ["acme/bl/trusted", "uid:0", "token:trusted"]
    if anonymous_trusted:
        trusted.append("anonymous")
    return f"""
[policy]
token-file = "tokens"

[[policy.rule]]
name = "trusted callers"
callers = {json.dumps(trusted)}
allow = ["publish", "read", "delete", "fifo", "admin"]
"""


@dataclass
class Served:
    """A daemon of the matrix and how to reach it as the trusted caller."""

    daemon: Daemon
    trusted: grpc.Channel
    trusted_metadata: tuple[tuple[str, str], ...] = ()
    unix_target: str = ""


def _configured(directory: Path, *, anonymous_trusted: bool) -> tuple[Path, dict[str, str]]:
    directory.mkdir(parents=True, exist_ok=True)
    tokens = {name: add_token(str(directory / "tokens"), name) for name in ("trusted", "stranger")}
    config = directory / "msgbusd.toml"
    config.write_text(policy_text(anonymous_trusted=anonymous_trusted))
    return config, tokens


@pytest.fixture(scope="module")
def tokens_and_plain(
    tmp_path_factory: pytest.TempPathFactory, socket_dir: Path
) -> Iterator[tuple[dict[str, str], Served]]:
    """Plaintext loopback TCP and a Unix socket (mode 0666): tokens, uids and anonymous."""
    directory = tmp_path_factory.mktemp("plain")
    config, tokens = _configured(directory, anonymous_trusted=False)
    unix = f"unix://{socket_dir / 'plain.sock'}"
    args = ["--config", str(config), "--listen", unix, "--socket-mode", "0666"]
    with Daemon.start(directory, extra_args=[*args, "--log-format", "json"]) as daemon:
        trusted = grpc.insecure_channel(unix)
        yield tokens, Served(daemon, trusted, unix_target=unix)
        trusted.close()


@pytest.fixture(scope="module")
def anonymous_trusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Plaintext loopback TCP, with a policy that trusts anonymous callers."""
    directory = tmp_path_factory.mktemp("open")
    config, _ = _configured(directory, anonymous_trusted=True)
    args = ["--config", str(config), "--log-format", "json"]
    with Daemon.start(directory, extra_args=args) as daemon:
        yield Served(daemon, daemon.channel())


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Served]:
    """mTLS: callers named by their certificates' SAN URIs."""
    directory = tmp_path_factory.mktemp("mtls")
    config, _ = _configured(directory, anonymous_trusted=False)
    trusted = pki.client("acme/bl/trusted")
    args = [*pki.server_args(), "--config", str(config), "--log-format", "json"]
    with Daemon.start(directory, extra_args=args, credentials=trusted) as daemon:
        yield Served(daemon, daemon.channel())


def _prepare(served: Served) -> str:
    """As the trusted caller: messages in the log, a cursor on it, a message in the queue;
    the front's id."""
    stub = rpc.MsgbusServiceStub(served.trusted)
    meta = served.trusted_metadata
    stub.Publish(pb.PublishRequest(topic=TOPIC, payload=b"setup"), metadata=meta)
    stub.CommitCursor(
        pb.CommitCursorRequest(name="prepared", topic=TOPIC, head_id=1), metadata=meta
    )
    target = pb.NodeId(tenant_id=NODE.tenant_id, bl_name=NODE.bl_name, device_id=NODE.device_id)
    stub.EnqueueFifo(
        pb.EnqueueFifoRequest(queue=QUEUE, topic=TOPIC, target=target, payload=b"job"),
        metadata=meta,
    )
    front: pb.PeekFifoResponse = stub.PeekFifo(pb.PeekFifoRequest(queue=QUEUE), metadata=meta)
    return front.message.id


def _as_other_uid(target: str, front_id: str) -> Outcome:
    """`every_rpc` in a child process that connects as uid and gid 65534."""
    tests = str(Path(__file__).resolve().parents[1])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "msgbus_testkit.authz",
            target,
            str(STRANGER_UID),
            str(STRANGER_UID),
            TOPIC,
            QUEUE,
            front_id,
            NODE.key,
        ],
        env=clean_env({"PYTHONPATH": os.pathsep.join([tests, *sys.path])}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    return Outcome(document["codes"], document["listed"], document["details"], document["cursors"])


def _call(
    kind: str,
    allowed: bool,
    request: pytest.FixtureRequest,
    pki: Pki,
) -> tuple[Served, str]:
    """Run every RPC as the caller of this cell; the daemon and the caller's principal."""
    if kind == "certificate":
        served: Served = request.getfixturevalue("certificates")
        identity = "acme/bl/trusted" if allowed else "acme/bl/stranger"
        front = _prepare(served)
        before = store_rows(served.daemon.data_path)
        with grpc.secure_channel(served.daemon.endpoint, pki.client(identity)) as channel:
            outcome = every_rpc(channel, topic=TOPIC, queue=QUEUE, front_id=front, node=NODE)
        return _checked(served, outcome, before, allowed, identity)
    if kind == "anonymous" and allowed:
        served = request.getfixturevalue("anonymous_trusted")
        front = _prepare(served)
        before = store_rows(served.daemon.data_path)
        with grpc.insecure_channel(served.daemon.endpoint) as channel:
            outcome = every_rpc(channel, topic=TOPIC, queue=QUEUE, front_id=front, node=NODE)
        return _checked(served, outcome, before, allowed, "anonymous")
    tokens, served = request.getfixturevalue("tokens_and_plain")
    front = _prepare(served)
    before = store_rows(served.daemon.data_path)
    if kind == "unix":
        if allowed:
            with grpc.insecure_channel(served.unix_target) as channel:
                outcome = every_rpc(channel, topic=TOPIC, queue=QUEUE, front_id=front, node=NODE)
        else:
            outcome = _as_other_uid(served.unix_target, front)
        principal = "uid:0" if allowed else f"uid:{STRANGER_UID}"
        return _checked(served, outcome, before, allowed, principal)
    if kind == "token":
        name = "trusted" if allowed else "stranger"
        meta = (("authorization", f"Bearer {tokens[name]}"),)
        with grpc.insecure_channel(served.daemon.endpoint) as channel:
            outcome = every_rpc(
                channel, topic=TOPIC, queue=QUEUE, front_id=front, node=NODE, metadata=meta
            )
        return _checked(served, outcome, before, allowed, f"token:{name}")
    with grpc.insecure_channel(served.daemon.endpoint) as channel:
        outcome = every_rpc(channel, topic=TOPIC, queue=QUEUE, front_id=front, node=NODE)
    return _checked(served, outcome, before, allowed, "anonymous")


def _checked(
    served: Served,
    outcome: Outcome,
    before: dict[str, list[tuple[object, ...]]],
    allowed: bool,
    principal: str,
) -> tuple[Served, str]:
    after = store_rows(served.daemon.data_path)
    assert set(outcome.codes) == set(RPCS)
    if allowed:
        assert outcome.codes == dict.fromkeys(RPCS, "OK"), outcome.details
        assert TOPIC in outcome.listed
        assert "matrix" in outcome.cursors
        assert after != before, "the allowed calls stored nothing"
        return served, principal
    for name in ALWAYS_ANSWERED:
        assert outcome.codes[name] == "OK", (name, outcome.details)
    assert outcome.listed == [], "ListHeads showed a stranger logs it may not read"
    assert outcome.cursors == [], "ListCursors showed a stranger cursors of logs it may not read"
    refused = {name: code for name, code in outcome.codes.items() if name not in ALWAYS_ANSWERED}
    assert refused == dict.fromkeys(refused, "PERMISSION_DENIED"), outcome.details
    for name in refused:
        detail = outcome.details[name]
        assert detail.startswith(f"permission denied: {principal} may not "), detail
        assert "decided by the policy default" in detail, detail
        if name == "ListPeerSyncStates":  # about no log or queue
            assert "may not read the peer sync states" in detail, detail
        else:
            assert repr(QUEUE if "Fifo" in name else TOPIC) in detail, detail
    assert after == before, "a refused call changed the store"

    def audited() -> bool:
        lines = audit_lines(served.daemon.stderr_text())
        seen = {line["rpc"] for line in lines if line["caller"] == principal}
        return set(refused) <= seen

    wait_until(audited, message=f"an audit line for each refusal of {principal}", timeout=10)
    for line in audit_lines(served.daemon.stderr_text()):
        if line["caller"] == principal:
            assert (line["level"], line["logger"]) == ("warning", "msgbus_server.audit")
            assert (line["code"], line["rule"]) == ("PERMISSION_DENIED", "the policy default")
            if line["rpc"] != "ListPeerSyncStates":
                assert line.get("topic") == TOPIC or line.get("queue") == QUEUE, line
    return served, principal


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed", "denied"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_rpc(kind: str, allowed: bool, request: pytest.FixtureRequest, pki: Pki) -> None:
    if kind == "unix" and not allowed and os.geteuid() != 0:
        pytest.skip("connecting as another uid needs root")
    served, _ = _call(kind, allowed, request, pki)
    assert "Traceback" not in served.daemon.stderr_text()
