"""The policy: parsing (one line naming the key) and decisions, without a daemon."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest

from msgbus_core.model import NodeId
from msgbus_server.authz import PUSH, READ, READ_OR_PULL
from msgbus_server.config import ConfigError
from msgbus_server.identity import Caller, UnixCredentials
from msgbus_server.policy import (
    DEFAULT_RULE,
    TENANT_ISOLATION,
    LogRef,
    Policy,
    PolicySource,
    QueueRef,
    policy_from_table,
)
from msgbus_server.tokens import add_token

HUB = NodeId("ops", "hub", "h1")
ACME_1 = Caller(node=NodeId("acme", "bl", "dev1"))
ACME_2 = Caller(node=NodeId("acme", "bl", "dev2"))
GLOBEX = Caller(node=NodeId("globex", "bl", "dev1"))
ROOT = Caller(unix=UnixCredentials(pid=1, uid=0, gid=0))
ANONYMOUS = Caller()
PUBLISH = frozenset({"publish"})


def parsed(text: str, tmp_path: Path | None = None) -> Policy:
    document = tomllib.loads(textwrap.dedent(text))
    return policy_from_table(document["policy"], tmp_path or Path("."), "test.toml")


def refused(text: str, tmp_path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parsed(text, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    return message


def log(topic: str, origin: NodeId = HUB) -> LogRef:
    return LogRef(topic, origin)


def test_the_first_matching_rule_decides_and_the_default_decides_the_rest() -> None:
    policy = parsed(
        """
        [policy]
        [[policy.rule]]
        name = "no secrets"
        callers = ["*"]
        deny = ["read"]
        topics = ["secret.*"]
        [[policy.rule]]
        callers = ["acme/*/*"]
        allow = ["read", "publish"]
        """
    )
    denied = policy.decide(ACME_1, READ, log("secret.plans"))
    assert (denied.allowed, denied.rule) == (False, "policy.rule[0] 'no secrets'")
    allowed = policy.decide(ACME_1, READ, log("telemetry"))
    assert (allowed.allowed, allowed.rule) == (True, "policy.rule[1]")
    assert policy.decide(GLOBEX, READ, log("telemetry")) == policy.decide(
        ANONYMOUS, PUBLISH, log("x")
    )
    assert policy.decide(GLOBEX, READ, log("telemetry")).rule == DEFAULT_RULE
    assert not policy.decide(GLOBEX, READ, log("telemetry")).allowed
    opened = parsed('[policy]\ndefault = "allow"\n')
    assert opened.decide(ANONYMOUS, PUBLISH, log("x")).allowed


def test_callers_by_identity_uid_gid_token_and_anonymous() -> None:
    policy = parsed(
        """
        [policy]
        [[policy.rule]]
        callers = ["uid:1000", "gid:50", "anonymous", "acme/bl/dev1"]
        allow = ["publish"]
        """
    )
    user = Caller(unix=UnixCredentials(pid=9, uid=1000, gid=1000))
    group = Caller(unix=UnixCredentials(pid=9, uid=7, gid=50))
    other = Caller(unix=UnixCredentials(pid=9, uid=7, gid=7))
    for caller in (user, group, ANONYMOUS, ACME_1):
        assert policy.decide(caller, PUBLISH, log("t")).allowed, caller
    for caller in (other, ACME_2, Caller(token="app")):
        assert not policy.decide(caller, PUBLISH, log("t")).allowed, caller


def test_token_callers_are_checked_against_the_token_file(tmp_path: Path) -> None:
    add_token(str(tmp_path / "tokens"), "dashboard")
    policy = parsed(
        """
        [policy]
        token-file = "tokens"
        [[policy.rule]]
        callers = ["token:dash*"]
        allow = ["read"]
        """,
        tmp_path,
    )
    assert policy.decide(Caller(token="dashboard"), READ, log("t")).allowed
    assert not policy.decide(Caller(token="other"), READ, log("t")).allowed
    message = refused(
        """
        [policy]
        token-file = "tokens"
        [[policy.rule]]
        callers = ["token:dashbord"]
        allow = ["read"]
        """,
        tmp_path,
    )
    assert "policy.rule[0].callers[0]" in message
    assert "no token named 'dashbord'" in message


def test_placeholders_stand_for_the_callers_identity_and_are_escaped() -> None:
    policy = parsed(
        """
        [policy]
        [[policy.rule]]
        callers = ["*/*/*"]
        allow = ["read"]
        topics = ["commands.{device}.*", "config.*"]
        [[policy.rule]]
        callers = ["*/*/*"]
        allow = ["push"]
        origins = ["{tenant}/{bl}/{device}"]
        """
    )
    assert policy.decide(ACME_1, READ, log("commands.dev1.reboot")).allowed
    assert not policy.decide(ACME_1, READ, log("commands.dev2.reboot")).allowed
    assert not policy.decide(ROOT, READ, log("commands.dev1.reboot")).allowed
    # A device named "*" gets its own commands, not everyone's.
    star = Caller(node=NodeId("acme", "bl", "*"))
    assert policy.decide(star, READ, log("commands.*.x")).allowed
    assert not policy.decide(star, READ, log("commands.dev1.x")).allowed
    # The push rule format (issue 17): a peer may push the logs of its own origin only.
    assert policy.decide(ACME_1, PUSH, log("telemetry", ACME_1.node or HUB)).allowed
    assert not policy.decide(ACME_1, PUSH, log("telemetry", NodeId("acme", "bl", "dev2"))).allowed


def test_pull_grants_fetch_and_listing_but_not_subscribe() -> None:
    policy = parsed(
        """
        [policy]
        [[policy.rule]]
        callers = ["ops/*/*"]
        allow = ["pull"]
        topics = ["telemetry.*", "$msgbus.delete"]
        """
    )
    peer = Caller(node=NodeId("ops", "hub", "h2"))
    assert policy.decide(peer, READ_OR_PULL, log("telemetry.cpu")).allowed
    assert policy.decide(peer, READ_OR_PULL, log("$msgbus.delete")).allowed
    assert not policy.decide(peer, READ, log("telemetry.cpu")).allowed
    assert not policy.decide(peer, READ_OR_PULL, log("config.x")).allowed


@pytest.mark.parametrize("mode", ["origin", "topic"])
def test_tenant_isolation_is_one_line_no_rule_overrides(mode: str) -> None:
    policy = parsed(
        f"""
        [policy]
        tenant-isolation = "{mode}"
        default = "allow"
        [[policy.rule]]
        callers = ["*"]
        allow = ["read", "fifo"]
        """
    )
    acme_log = log("acme.telemetry", NodeId("acme", "bl", "dev2"))
    globex_log = log("globex.telemetry", NodeId("globex", "bl", "dev1"))
    assert policy.decide(ACME_1, READ, acme_log).allowed
    decision = policy.decide(ACME_1, READ, globex_log)
    assert (decision.allowed, decision.rule) == (False, TENANT_ISOLATION)
    assert "'acme'" in decision.reason
    # A topic that only starts with the tenant's name is not the tenant's.
    assert not policy.decide(ACME_1, READ, log("acmecorp.x", NodeId("acmecorp", "b", "d"))).allowed
    assert policy.decide(ACME_1, frozenset({"fifo"}), QueueRef("acme.jobs")).allowed
    assert not policy.decide(ACME_1, frozenset({"fifo"}), QueueRef("globex.jobs")).allowed
    # Callers without a certificate identity are in no tenant: the rules decide for them.
    assert policy.decide(ROOT, READ, globex_log).allowed
    if mode == "origin":
        assert not policy.decide(ACME_1, READ, log("acme.telemetry", HUB)).allowed
    else:
        assert policy.decide(ACME_1, READ, log("acme.telemetry", HUB)).allowed


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[policy]\ndefalt = "deny"', "policy: unknown key 'defalt' (did you mean 'default'?)"),
        ('[policy]\ndefault = "maybe"', "policy.default must be one of 'deny', 'allow'"),
        ('[policy]\ntenant-isolation = "device"', "policy.tenant-isolation must be one of"),
        ("[policy]\nrule = 3", "policy.rule must be an array of tables"),
        (
            '[policy]\n[[policy.rule]]\ncallers = ["*"]\nallow = ["pubish"]',
            "policy.rule[0].allow[0]: unknown action 'pubish' (did you mean 'publish'?)",
        ),
        ('[policy]\n[[policy.rule]]\ncallers = ["*"]', "policy.rule[0]: give exactly one of"),
        (
            '[policy]\n[[policy.rule]]\ncallers = ["*"]\nallow = ["read"]\ndeny = ["read"]',
            "policy.rule[0]: give exactly one of",
        ),
        ('[policy]\n[[policy.rule]]\nallow = ["read"]', "policy.rule[0].callers must be an array"),
        (
            '[policy]\n[[policy.rule]]\ncallers = []\nallow = ["read"]',
            "policy.rule[0].callers must not be empty",
        ),
        (
            '[policy]\n[[policy.rule]]\ncallers = ["acme"]\nallow = ["read"]',
            "policy.rule[0].callers[0]: 'acme' is not a caller",
        ),
        (
            '[policy]\n[[policy.rule]]\ncallers = ["uid:no-such-user-here"]\nallow = ["read"]',
            "policy.rule[0].callers[0]: there is no user named 'no-such-user-here'",
        ),
        (
            '[policy]\n[[policy.rule]]\ncallers = ["token:x"]\nallow = ["read"]',
            "policy.rule[0].callers[0]: no token named 'x': there is no token-file",
        ),
        (
            '[policy]\n[[policy.rule]]\ncallers = ["*"]\nallow = ["fifo"]\ntopics = ["a"]',
            "policy.rule[0].topics: only rules for delete, publish, pull, push, read take topics",
        ),
        (
            '[policy]\n[[policy.rule]]\ncallers = ["*"]\nallow = ["read"]\nqueues = ["a"]',
            "policy.rule[0].queues: only rules for fifo take queues",
        ),
        (
            '[policy]\n[[policy.rule]]\ncallers = ["*"]\nallow = ["read"]\ntopics = ["{dev}.x"]',
            "policy.rule[0].topics[0]: unknown placeholder {dev}",
        ),
        (
            '[policy]\n[[policy.rule]]\ncallers = ["*"]\nallow = ["read"]\ncolour = "red"',
            "policy.rule[0]: unknown key 'colour'",
        ),
        (
            '[policy]\n[[policy.rule]]\nname = "a"\ncallers = ["*"]\nallow = ["read"]\n'
            '[[policy.rule]]\nname = "a"\ncallers = ["*"]\nallow = ["read"]',
            "policy.rule[1].name: an earlier rule is named 'a' too",
        ),
        ('[policy]\ntoken-file = "missing"', "policy.token-file: cannot read"),
    ],
)
def test_a_policy_that_does_not_parse_is_one_line_naming_the_key(
    text: str, named: str, tmp_path: Path
) -> None:
    message = refused(text, tmp_path)
    assert message.startswith("test.toml: "), message
    assert named in message, message


def test_a_source_reads_the_policy_table_or_the_file_it_names(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text('[policy]\ndefault = "allow"\n')
    config = tmp_path / "msgbusd.toml"
    config.write_text('listen = "127.0.0.1:1"\npolicy = "rules.toml"\n')
    policy = PolicySource(str(config), optional=True).load()
    assert policy is not None
    assert policy.default_allow
    config.write_text('listen = "127.0.0.1:1"\n')
    assert PolicySource(str(config), optional=True).load() is None
    with pytest.raises(ConfigError, match="no \\[policy\\] table"):
        PolicySource(str(config)).load()
    config.write_text("[policy\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        PolicySource(str(config), optional=True).load()
