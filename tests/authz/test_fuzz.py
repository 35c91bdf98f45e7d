"""Random policies and random requests against a real daemon, judged by a small evaluator of
this test's own (written from the README's rules, not from msgbus_server.policy).

Each example writes a policy, sends SIGHUP and waits for the reload, then makes random calls
as random callers: certificates of three identities, the Unix uid, and bearer tokens. No call
may end INTERNAL or UNKNOWN; a call the evaluator denies must be PERMISSION_DENIED; one it
allows must not be; and ListHeads must show exactly the logs the evaluator lets the caller read.
"""

from __future__ import annotations

import fnmatch
import json
import signal
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgbus_proto import pb, rpc
from msgbus_server.testing import Daemon, wait_until
from msgbus_server.tokens import add_token
from msgbus_testkit.authz import Pki

NODE = "acme/hub/h0"
PEER = "globex/hub/h1"
TOPICS = ("acme.t", "acme.x.y", "globex.t", "misc", "d1.cmd")
ORIGINS = ("", NODE, "acme/bl/d1", PEER)
QUEUES = ("acme.q", "globex.q", "q")
ACTIONS = ("publish", "read", "delete", "fifo", "admin", "pull", "push")
LOG_ACTIONS = {"publish", "read", "delete", "pull", "push"}
CALLER_PATTERNS = (
    "*",
    "anonymous",
    "uid:0",
    "uid:1000",
    "gid:0",
    "token:app",
    "token:o*",
    "acme/*/*",
    "acme/bl/d1",
    "*/hub/*",
    "globex/*/*",
)
TOPIC_GLOBS = ("*", "acme.*", "globex.*", "misc", "{device}.*", "{tenant}.*", "*.t")
ORIGIN_GLOBS = ("*", "acme/*/*", "{tenant}/*/*", "*/hub/*", PEER, "{tenant}/{bl}/{device}")
QUEUE_GLOBS = ("*", "acme.*", "{tenant}.q", "q")


@dataclass(frozen=True)
class Who:
    """A caller as the evaluator sees it."""

    name: str
    node: str | None = None
    uid: int | None = None
    gid: int | None = None
    token: str | None = None


CALLERS = (
    Who("acme-d1", node="acme/bl/d1"),
    Who("acme-d2", node="acme/bl/d2"),
    Who("globex-h1", node="globex/hub/h1"),
    Who("root", uid=0, gid=0),
    Who("root-with-app-token", uid=0, gid=0, token="app"),
    Who("acme-d1-with-ops-token", node="acme/bl/d1", token="ops"),
)


@dataclass(frozen=True)
class RuleSpec:
    allow: bool
    actions: tuple[str, ...]
    callers: tuple[str, ...]
    topics: tuple[str, ...] | None
    origins: tuple[str, ...] | None
    queues: tuple[str, ...] | None


@dataclass(frozen=True)
class PolicySpec:
    default_allow: bool
    isolation: str | None
    rules: tuple[RuleSpec, ...] = field(default_factory=tuple)

    def toml(self) -> str:
        lines = ["[policy]", 'token-file = "tokens"']
        lines.append(f'default = "{"allow" if self.default_allow else "deny"}"')
        if self.isolation:
            lines.append(f'tenant-isolation = "{self.isolation}"')
        for rule in self.rules:
            lines += ["", "[[policy.rule]]", f"callers = {json.dumps(list(rule.callers))}"]
            lines.append(f"{'allow' if rule.allow else 'deny'} = {json.dumps(list(rule.actions))}")
            for key in ("topics", "origins", "queues"):
                value = getattr(rule, key)
                if value is not None:
                    lines.append(f"{key} = {json.dumps(list(value))}")
        return "\n".join(lines) + "\n"


def _subset(options: tuple[str, ...]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(options), min_size=1, max_size=3, unique=True).map(tuple)


@st.composite
def rules(draw: st.DrawFn) -> RuleSpec:
    actions = draw(_subset(ACTIONS))
    logs = bool(LOG_ACTIONS & set(actions))
    optional = st.none()
    return RuleSpec(
        allow=draw(st.booleans()),
        actions=actions,
        callers=draw(_subset(CALLER_PATTERNS)),
        topics=draw(optional | _subset(TOPIC_GLOBS)) if logs else None,
        origins=draw(optional | _subset(ORIGIN_GLOBS)) if logs else None,
        queues=draw(optional | _subset(QUEUE_GLOBS)) if "fifo" in actions else None,
    )


policies = st.builds(
    PolicySpec,
    default_allow=st.booleans(),
    isolation=st.sampled_from([None, "origin", "topic"]),
    rules=st.lists(rules(), max_size=4).map(tuple),
)


@dataclass(frozen=True)
class Call:
    rpc: str
    topic: str = ""
    origin: str = ""
    queue: str = ""


calls = st.one_of(
    st.builds(Call, st.just("Publish"), st.sampled_from(TOPICS)),
    st.builds(Call, st.just("DeleteRange"), st.sampled_from(TOPICS)),
    st.builds(
        Call,
        st.sampled_from(["Fetch", "GetHead", "Subscribe"]),
        st.sampled_from(TOPICS),
        st.sampled_from(ORIGINS),
    ),
    st.builds(Call, st.sampled_from(["EnqueueFifo", "PeekFifo"]), queue=st.sampled_from(QUEUES)),
    st.builds(Call, st.sampled_from(["ListHeads", "ListPeerSyncStates", "Health"])),
)


# -- the evaluator ------------------------------------------------------------------------------


def _filled(glob: str, who: Who) -> str | None:
    """The glob with the caller's identity put in; None when it needs one the caller lacks."""
    if "{" not in glob:
        return glob
    if who.node is None:
        return None
    tenant, bl, device = who.node.split("/")
    return glob.replace("{tenant}", tenant).replace("{bl}", bl).replace("{device}", device)


def _any(globs: tuple[str, ...] | None, value: str, who: Who) -> bool:
    if globs is None:
        return True
    for glob in globs:
        filled = _filled(glob, who)
        if filled is not None and fnmatch.fnmatchcase(value, filled):
            return True
    return False


def _is(pattern: str, who: Who) -> bool:
    if pattern == "*":
        return True
    if pattern == "anonymous":
        return who.node is None and who.uid is None and who.token is None
    kind, _, value = pattern.partition(":")
    if kind == "uid":
        return who.uid == int(value)
    if kind == "gid":
        return who.gid == int(value)
    if kind == "token":
        return who.token is not None and fnmatch.fnmatchcase(who.token, value)
    return who.node is not None and fnmatch.fnmatchcase(who.node, pattern)


def allowed(
    policy: PolicySpec,
    who: Who,
    actions: set[str],
    log: tuple[str, str] | None = None,
    queue: str | None = None,
) -> bool:
    """Whether `who` may do one of `actions` on a log (topic, origin key), a queue, or neither."""
    if policy.isolation and who.node is not None:
        tenant = who.node.split("/")[0]
        if queue is not None and not (queue == tenant or queue.startswith(tenant + ".")):
            return False
        if log is not None:
            topic, origin = log
            if policy.isolation == "origin":
                inside = origin.split("/")[0] == tenant
            else:
                inside = topic == tenant or topic.startswith(tenant + ".")
            if not inside:
                return False
    for rule in policy.rules:
        if not actions & set(rule.actions):
            continue
        if not any(_is(pattern, who) for pattern in rule.callers):
            continue
        if log is not None and not (
            _any(rule.topics, log[0], who) and _any(rule.origins, log[1], who)
        ):
            continue
        if queue is not None and not _any(rule.queues, queue, who):
            continue
        return rule.allow
    return policy.default_allow


def expected(policy: PolicySpec, who: Who, call: Call) -> bool | None:
    """The evaluator's verdict on a call; None for calls every caller may make."""
    origin = call.origin or NODE
    if call.rpc in ("Publish", "DeleteRange"):
        action = "publish" if call.rpc == "Publish" else "delete"
        return allowed(policy, who, {action}, (call.topic, NODE))
    if call.rpc == "Subscribe":
        return allowed(policy, who, {"read"}, (call.topic, origin))
    if call.rpc in ("Fetch", "GetHead"):
        return allowed(policy, who, {"read", "pull"}, (call.topic, origin))
    if call.rpc in ("EnqueueFifo", "PeekFifo"):
        return allowed(policy, who, {"fifo"}, queue=call.queue)
    if call.rpc == "ListPeerSyncStates":
        return allowed(policy, who, {"admin"})
    return None


# -- the daemon ---------------------------------------------------------------------------------


@dataclass
class Fuzzed:
    daemon: Daemon
    config: Path
    channels: dict[str, grpc.Channel]
    metadata: dict[str, tuple[tuple[str, str], ...]]


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, socket_dir: Path
) -> Iterator[Fuzzed]:
    root = tmp_path_factory.mktemp("fuzz")
    tokens = {name: add_token(str(root / "tokens"), name) for name in ("app", "ops")}
    config = root / "msgbusd.toml"
    config.write_text('[policy]\ndefault = "allow"\n')
    unix = f"unix://{socket_dir / 'fuzz.sock'}"
    with Daemon.start(root / "peer", node=PEER) as peer:
        peer.stub().Publish(pb.PublishRequest(topic="globex.t", payload=b"from the peer"))
        peer.stub().Publish(pb.PublishRequest(topic="misc", payload=b"from the peer"))
        args = [
            *pki.server_args(),
            "--config",
            str(config),
            "--listen",
            unix,
            "--peer",
            f"{peer.endpoint}={PEER}",
            "--sync-interval-ms",
            "100",
        ]
        probe = pki.client("acme/bl/d1")
        with Daemon.start(root / "node", node=NODE, extra_args=args, credentials=probe) as daemon:
            channels: dict[str, grpc.Channel] = {}
            metadata: dict[str, tuple[tuple[str, str], ...]] = {}
            for who in CALLERS:
                if who.node is not None:
                    target = daemon.endpoint
                    channels[who.name] = grpc.secure_channel(target, pki.client(who.node))
                else:
                    channels[who.name] = grpc.insecure_channel(unix)
                metadata[who.name] = (
                    (("authorization", f"Bearer {tokens[who.token]}"),) if who.token else ()
                )
            stub = rpc.MsgbusServiceStub(channels["root"])
            for topic in TOPICS:
                stub.Publish(pb.PublishRequest(topic=topic, payload=b"seed"))
            wait_until(
                lambda: len(_all_logs(daemon)) >= len(TOPICS) + 2,
                message="the peer's logs pulled",
            )
            yield Fuzzed(daemon, config, channels, metadata)
            for channel in channels.values():
                channel.close()


def _all_logs(daemon: Daemon) -> set[tuple[str, str]]:
    with sqlite3.connect(f"file:{daemon.data_path}?mode=ro", uri=True) as connection:
        rows = connection.execute(
            "SELECT topic, tenant_id, bl_name, device_id FROM logs WHERE head > 0"
        ).fetchall()
    return {(topic, f"{t}/{b}/{d}") for topic, t, b, d in rows}


def _node(key: str) -> pb.NodeId:
    if not key:
        return pb.NodeId()
    tenant, bl, device = key.split("/")
    return pb.NodeId(tenant_id=tenant, bl_name=bl, device_id=device)


def _make(
    stub: rpc.MsgbusServiceStub,
    call: Call,
    meta: tuple[tuple[str, str], ...],
    stream_timeout: float = 0.5,
) -> Any:
    timeout = 10.0
    origin = _node(call.origin) if call.origin else None
    if call.rpc == "Publish":
        publish = pb.PublishRequest(topic=call.topic, payload=b"f")
        return stub.Publish(publish, timeout=timeout, metadata=meta)
    if call.rpc == "DeleteRange":
        delete = pb.DeleteRangeRequest(topic=call.topic, from_head_id=1, to_head_id=1)
        return stub.DeleteRange(delete, timeout=timeout, metadata=meta)
    if call.rpc == "Fetch":
        fetch = pb.FetchRequest(topic=call.topic, origin=origin, from_head_id=1, limit=1)
        return list(stub.Fetch(fetch, timeout=timeout, metadata=meta))
    if call.rpc == "GetHead":
        head = pb.GetHeadRequest(topic=call.topic, origin=origin)
        return stub.GetHead(head, timeout=timeout, metadata=meta)
    if call.rpc == "Subscribe":
        # From a head beyond the log: an allowed stream waits, a refused one ends at once.
        subscribe = pb.SubscribeRequest(topic=call.topic, origin=origin, from_head_id=1_000_000)
        return list(stub.Subscribe(subscribe, timeout=stream_timeout, metadata=meta))
    if call.rpc == "EnqueueFifo":
        enqueue = pb.EnqueueFifoRequest(
            queue=call.queue, topic="jobs", target=_node(NODE), payload=b"job"
        )
        return stub.EnqueueFifo(enqueue, timeout=timeout, metadata=meta)
    if call.rpc == "PeekFifo":
        peek = pb.PeekFifoRequest(queue=call.queue)
        return stub.PeekFifo(peek, timeout=timeout, metadata=meta)
    if call.rpc == "ListHeads":
        return stub.ListHeads(pb.ListHeadsRequest(), timeout=timeout, metadata=meta)
    if call.rpc == "ListPeerSyncStates":
        states = pb.ListPeerSyncStatesRequest()
        return stub.ListPeerSyncStates(states, timeout=timeout, metadata=meta)
    return stub.Health(pb.HealthRequest(), timeout=timeout, metadata=meta)


def _outcome(
    stub: rpc.MsgbusServiceStub,
    call: Call,
    meta: tuple[tuple[str, str], ...],
    stream_timeout: float = 0.5,
) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, _make(stub, call, meta, stream_timeout)
    except grpc.RpcError as error:
        return error.code(), error.details()


def _reload(fuzzed: Fuzzed, text: str) -> None:
    daemon = fuzzed.daemon
    seen = daemon.stderr_text().count("policy reloaded from")
    fuzzed.config.write_text(text)
    daemon.signal(signal.SIGHUP)
    wait_until(
        lambda: daemon.stderr_text().count("policy reloaded from") > seen,
        message="the policy reloaded",
        timeout=20,
        interval=0.01,
    )


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    policy=policies,
    requests=st.lists(st.tuples(st.sampled_from(CALLERS), calls), min_size=1, max_size=15),
)
def test_random_policies_never_allow_what_the_evaluator_denies(
    fuzzed: Fuzzed, policy: PolicySpec, requests: list[tuple[Who, Call]]
) -> None:
    _reload(fuzzed, policy.toml())
    for who, call in requests:
        stub = rpc.MsgbusServiceStub(fuzzed.channels[who.name])
        verdict = expected(policy, who, call)
        code, answer = _outcome(stub, call, fuzzed.metadata[who.name])
        if verdict is False and code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # A busy machine may take longer than the short deadline to refuse a stream:
            # a refusal still comes, a stream that was let through waits out this one too.
            code, answer = _outcome(stub, call, fuzzed.metadata[who.name], stream_timeout=10)
        context = (who, call, policy.toml(), code)
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), context
        if verdict is False:
            assert code == grpc.StatusCode.PERMISSION_DENIED, context
            continue
        # Allowed: OK, or what the call answers when it was allowed but found nothing.
        allowed_codes = (
            grpc.StatusCode.OK,
            grpc.StatusCode.NOT_FOUND,  # an empty queue
            grpc.StatusCode.DEADLINE_EXCEEDED,  # a live stream, waiting
        )
        assert code in allowed_codes, context
        if call.rpc == "ListHeads":
            shown = {(head.topic, _key(head.origin)) for head in answer.heads}
            logs = _all_logs(fuzzed.daemon)
            readable = {log for log in logs if allowed(policy, who, {"read", "pull"}, log)}
            assert shown == readable, context
    assert "Traceback" not in fuzzed.daemon.stderr_text()


def _key(node: pb.NodeId) -> str:
    return f"{node.tenant_id}/{node.bl_name}/{node.device_id}"
