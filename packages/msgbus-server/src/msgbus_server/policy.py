"""The authorization policy: which callers may do what, on which logs and FIFO queues.

The policy is the `[policy]` table of a TOML file: msgbusd's `--config` file, or the file that
`--policy` names. Rules are tried in file order and the first one that matches decides:

    [policy]
    default = "deny"               # what no rule decides; "deny" (the default) or "allow"
    tenant-isolation = "origin"    # optional: "origin" or "topic" (see below)
    certificate-identity = "uri"   # a client certificate names its caller by a msgbus:// SAN URI
    token-file = "tokens"          # hashed bearer tokens (`msgbus_server.tokens`), optional

    [[policy.rule]]
    name = "local apps"            # optional; shown in denials and audit lines
    callers = ["uid:1000", "gid:msgbus", "token:dashboard", "acme/*/*", "anonymous", "*"]
    allow = ["publish", "read"]    # or deny = [...]
    topics = ["telemetry.*"]       # topic globs; default every topic
    origins = ["{tenant}/*/*"]     # origin globs (tenant/bl/device); default every origin
    queues = ["jobs.*"]            # FIFO queue globs (fifo rules); default every queue

A rule matches a request when one of its callers is the caller, one of its actions is the
request's, and the request's log (topic and origin) or queue matches its globs. Globs follow
the rule of every glob in msgbus (`msgbus_server.topic_globs`): `*` matches any text, dots and
slashes included. `{tenant}`, `{bl}` and `{device}` in a glob stand for the parts of the caller's
certificate identity, so a rule that uses them matches only callers with one.

Actions: `publish` (Publish, PublishBatch), `read` (Fetch, Subscribe, GetHead, the heads
ListHeads shows, and durable cursors on the log: CommitCursor, GetCursor, DeleteCursor of one
cursor, the cursors ListCursors shows), `delete` (DeleteRange), `fifo` (EnqueueFifo, PeekFifo,
AckFifo, RejectFifo and the lease RPCs LeaseFifo, AckFifoLease, RejectFifoLease,
ExtendFifoLease, ListFifo, by queue; RedriveFifo on both QUEUE and QUEUE.dead), `admin`
(ListPeerSyncStates; DeleteCursor of every cursor of a name, which spans logs), `pull` (what a
peer's sync reads: Fetch, GetHead and ListHeads, not Subscribe) and `push` (which logs a peer
may supply, by topic and origin: what this daemon takes from the peers it pulls from, see
`peer_authz`, and what issue 17's push RPC will ask).
Health and Ready are answered to every caller.

Tenant isolation is one line: a caller whose certificate identity is in tenant T touches only
the logs of T, whatever the rules say. With `"origin"` a log is T's when its origin's tenant is
T; with `"topic"` when its topic is `T` or starts with `T.`. A queue is T's when its name is `T`
or starts with `T.`, in both modes. Callers without a certificate identity (a Unix uid, a token,
anonymous) belong to no tenant and get only what rules grant them.

Every parse error is a `ConfigError` of one line naming the key (`policy.rule[2].allow[0]`).
"""

from __future__ import annotations

import difflib
import grp
import pwd
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from msgbus_core.errors import InvalidArgumentError
from msgbus_core.model import NodeId
from msgbus_server.config import ConfigError
from msgbus_server.config_file import described
from msgbus_server.identity import CERTIFICATE_IDENTITIES, Caller
from msgbus_server.tokens import TokenFile, load_token_file
from msgbus_server.topic_globs import TopicGlob, compile_glob, escape_glob, validate_glob

ACTIONS: Final = ("publish", "read", "delete", "fifo", "admin", "pull", "push")
"""Every action a rule may allow or deny."""
LOG_ACTIONS: Final = frozenset({"publish", "read", "delete", "pull", "push"})
"""Actions on a log: rules for them may name topics and origins."""
QUEUE_ACTIONS: Final = frozenset({"fifo"})
"""Actions on a FIFO queue: rules for them may name queues."""
ISOLATIONS: Final = ("origin", "topic")
"""How `tenant-isolation` tells a log's tenant: by its origin, or by its topic's first part."""
DEFAULTS: Final = ("deny", "allow")

TENANT_ISOLATION: Final = "tenant-isolation"
"""The name of the rule that tenant isolation decides by, in denials and audit lines."""
DEFAULT_RULE: Final = "the policy default"
"""What decides a request that no rule matches."""

_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDERS: Final = ("tenant", "bl", "device")
_POLICY_KEYS: Final = ("default", "tenant-isolation", "certificate-identity", "token-file", "rule")
_RULE_KEYS: Final = ("name", "callers", "allow", "deny", "topics", "origins", "queues")
_CALLER_FORMS: Final = (
    "use a tenant/bl/device glob such as acme/*/*, uid:N or uid:USER, gid:N or gid:GROUP, "
    "token:NAME, anonymous, or * for every caller"
)


@dataclass(frozen=True, slots=True)
class LogRef:
    """A request's log: its topic and origin (the local node for writes)."""

    topic: str
    origin: NodeId


@dataclass(frozen=True, slots=True)
class QueueRef:
    """A request's FIFO queue."""

    queue: str


Resource = LogRef | QueueRef | None
"""What a request touches; None for requests about no log or queue (admin)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request is allowed, and what decided it.

    `rule` names the deciding rule (`policy.rule[1] 'apps'`, `tenant-isolation` or
    `the policy default`); `reason` says more when there is more to say (the tenant a log
    belongs to, for tenant isolation).
    """

    allowed: bool
    rule: str
    reason: str = ""


class _Glob:
    """One topic, origin or queue glob, compiled once; placeholders are filled per caller."""

    __slots__ = ("_glob", "text")

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        try:
            validate_glob("the glob", text)
        except InvalidArgumentError as refused:
            raise ConfigError(f"{where}: {refused}") from None
        names = _PLACEHOLDER.findall(text)
        for name in names:
            if name not in _PLACEHOLDERS:
                raise ConfigError(
                    f"{where}: unknown placeholder {{{name}}} in {text!r} "
                    "(use {tenant}, {bl} or {device}: the parts of the caller's identity)"
                )
        self._glob = None if names else compile_glob(text)

    def matches(self, value: str, caller: Caller) -> bool:
        if self._glob is not None:
            return self._glob.matches(value)
        node = caller.node
        if node is None:
            return False
        parts = {"tenant": node.tenant_id, "bl": node.bl_name, "device": node.device_id}
        pattern = _PLACEHOLDER.sub(lambda found: escape_glob(parts[found.group(1)]), self.text)
        return compile_glob(pattern).matches(value)


_EVERYTHING: Final = (_Glob("*", "policy"),)


@dataclass(frozen=True, slots=True)
class CallerPattern:
    """One entry of a rule's `callers`: a kind and what it matches."""

    text: str
    kind: str
    """`anyone`, `anonymous`, `uid`, `gid`, `token` or `identity`."""
    number: int = -1
    """The uid or gid."""
    glob: TopicGlob | None = None
    """The token name or identity glob."""

    def matches(self, caller: Caller) -> bool:
        """True when `caller` is one this pattern names."""
        kind = self.kind
        if kind == "anyone":
            return True
        if kind == "identity":
            return caller.node is not None and self._glob_matches(caller.node.key)
        if kind == "uid":
            return caller.unix is not None and caller.unix.uid == self.number
        if kind == "gid":
            return caller.unix is not None and caller.unix.gid == self.number
        if kind == "token":
            return caller.token is not None and self._glob_matches(caller.token)
        return caller.is_anonymous

    def _glob_matches(self, value: str) -> bool:
        assert self.glob is not None
        return self.glob.matches(value)


@dataclass(frozen=True, slots=True)
class Rule:
    """One `[[policy.rule]]`: an effect, its actions, and whom and what it is about."""

    name: str
    """How denials and audit lines name it: `policy.rule[1]`, with its `name` when given."""
    allow: bool
    actions: frozenset[str]
    callers: tuple[CallerPattern, ...]
    topics: tuple[_Glob, ...] = _EVERYTHING
    origins: tuple[_Glob, ...] = _EVERYTHING
    queues: tuple[_Glob, ...] = _EVERYTHING

    def applies(self, caller: Caller, actions: frozenset[str], resource: Resource) -> bool:
        """True when this rule decides `actions` on `resource` for `caller`."""
        if self.actions.isdisjoint(actions):
            return False
        if not any(pattern.matches(caller) for pattern in self.callers):
            return False
        if isinstance(resource, LogRef):
            return any(g.matches(resource.topic, caller) for g in self.topics) and any(
                g.matches(resource.origin.key, caller) for g in self.origins
            )
        if isinstance(resource, QueueRef):
            return any(g.matches(resource.queue, caller) for g in self.queues)
        return True


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy: rules in order, the default, tenant isolation and the token file."""

    rules: tuple[Rule, ...] = ()
    default_allow: bool = False
    isolation: str | None = None
    """`origin`, `topic`, or None for no tenant isolation."""
    certificate_identity: str = "uri"
    """How a client certificate names its caller (`identity.certificate_node`)."""
    tokens: TokenFile | None = None
    source: str = ""
    """The file the policy was read from, for logs."""

    def decide(self, caller: Caller, actions: frozenset[str], resource: Resource) -> Decision:
        """Decide whether `caller` may do one of `actions` on `resource`.

        Tenant isolation first (no rule overrides it), then the first rule that applies, then
        the default.
        """
        outside = self.outside_tenant(caller, resource)
        if outside:
            return Decision(False, TENANT_ISOLATION, outside)
        for rule in self.rules:
            if rule.applies(caller, actions, resource):
                return Decision(rule.allow, rule.name)
        return Decision(self.default_allow, DEFAULT_RULE)

    def outside_tenant(self, caller: Caller, resource: Resource) -> str:
        """Why `resource` is outside the caller's tenant, or "".

        Empty when it is inside, or when isolation does not apply: no isolation, a caller
        without a tenant, or no resource.
        """
        tenant = caller.tenant
        if self.isolation is None or tenant is None or resource is None:
            return ""
        if isinstance(resource, QueueRef):
            if _in_namespace(resource.queue, tenant):
                return ""
            return f"queue {resource.queue!r} is not in tenant {tenant!r} (not {tenant}.*)"
        if self.isolation == "origin":
            if resource.origin.tenant_id == tenant:
                return ""
            return f"origin {resource.origin.key} is not in tenant {tenant!r}"
        if _in_namespace(resource.topic, tenant):
            return ""
        return f"topic {resource.topic!r} is not in tenant {tenant!r} (not {tenant}.*)"

    def describe(self) -> str:
        """One line for the startup and reload logs."""
        parts = [
            f"{len(self.rules)} rule(s)",
            f"default {'allow' if self.default_allow else 'deny'}",
        ]
        if self.isolation is not None:
            parts.append(f"tenant isolation by {self.isolation}")
        if self.tokens is not None:
            parts.append(f"{len(self.tokens)} token(s)")
        return ", ".join(parts)


def _in_namespace(name: str, tenant: str) -> bool:
    return name == tenant or name.startswith(f"{tenant}.")


# -- parsing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Where the policy is read from, at startup and again on SIGHUP.

    `path` is a TOML file whose `[policy]` table is the policy; the table may instead be a
    string, the path of another such file (relative to this one). `optional` says a file
    without a `policy` key means "no policy" (msgbusd's own `--config` file) rather than an
    error (a file given with `--policy`).
    """

    path: str
    optional: bool = False

    def load(self) -> Policy | None:
        """Read and parse the policy now; None when an optional file has none.

        Raises `ConfigError` with one line naming the file and the key.
        """
        document = _read_toml(self.path)
        table = document.get("policy")
        if table is None:
            if self.optional:
                return None
            raise ConfigError(f"{self.path}: no [policy] table")
        if isinstance(table, str):
            if not table:
                raise ConfigError(f"{self.path}: policy must not be empty")
            referred = Path(self.path).absolute().parent / table
            return PolicySource(str(referred)).load()
        if not isinstance(table, dict):
            raise ConfigError(
                f"{self.path}: policy must be a table ([policy]) or the path of a policy file, "
                f"got {described(table)}"
            )
        return policy_from_table(table, Path(self.path).absolute().parent, self.path)


def _read_toml(path: str) -> dict[str, object]:
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the policy: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML file (it is not UTF-8 text)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None


def policy_from_table(table: Mapping[str, object], base: Path, source: str) -> Policy:
    """Parse a `[policy]` table; `base` is the directory relative paths (token-file) resolve to.

    Raises `ConfigError` naming `source` and the key (`policy.rule[0].allow`).
    """
    try:
        return _parse(table, base, source)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def _parse(table: Mapping[str, object], base: Path, source: str) -> Policy:
    _known_keys(table, _POLICY_KEYS, "policy")
    default = _choice(table, "default", DEFAULTS, "policy", "deny")
    isolation = _choice(table, "tenant-isolation", ISOLATIONS, "policy", None)
    identity = _choice(table, "certificate-identity", CERTIFICATE_IDENTITIES, "policy", "uri")
    tokens: TokenFile | None = None
    token_file = table.get("token-file")
    if token_file is not None:
        if not isinstance(token_file, str) or not token_file:
            raise ConfigError(
                f"policy.token-file must be the path of a token file, got {described(token_file)}"
            )
        tokens = load_token_file(str(base / token_file), "policy.token-file")
    raw_rules = table.get("rule", [])
    if not isinstance(raw_rules, list):
        raise ConfigError(
            f"policy.rule must be an array of tables ([[policy.rule]]), got {described(raw_rules)}"
        )
    rules = []
    names: set[str] = set()
    for index, raw in enumerate(raw_rules):
        rule = _rule(raw, f"policy.rule[{index}]", tokens)
        label = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(label, str):
            if label in names:
                raise ConfigError(
                    f"policy.rule[{index}].name: an earlier rule is named {label!r} too"
                )
            names.add(label)
        rules.append(rule)
    return Policy(
        rules=tuple(rules),
        default_allow=default == "allow",
        isolation=isolation,
        certificate_identity=identity or "uri",
        tokens=tokens,
        source=source,
    )


def _rule(raw: object, where: str, tokens: TokenFile | None) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table, got {described(raw)}")
    _known_keys(raw, _RULE_KEYS, where)
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"{where}.name must be a non-empty string, got {described(name)}")
    shown = f"{where} {name!r}" if name else where
    if ("allow" in raw) == ("deny" in raw):
        raise ConfigError(f"{where}: give exactly one of allow = [...] or deny = [...]")
    effect = "allow" if "allow" in raw else "deny"
    actions = _strings(raw, effect, where, required=True)
    for position, action in enumerate(actions):
        if action not in ACTIONS:
            raise ConfigError(
                f"{where}.{effect}[{position}]: unknown action {action!r}"
                f"{_close(action, ACTIONS)} (actions: {', '.join(ACTIONS)})"
            )
    acting = frozenset(actions)
    callers = tuple(
        _caller(text, f"{where}.callers[{position}]", tokens)
        for position, text in enumerate(_strings(raw, "callers", where, required=True))
    )
    globs: dict[str, tuple[_Glob, ...]] = {}
    for key, takes in (
        ("topics", LOG_ACTIONS),
        ("origins", LOG_ACTIONS),
        ("queues", QUEUE_ACTIONS),
    ):
        if key not in raw:
            continue
        if acting.isdisjoint(takes):
            kinds = ", ".join(sorted(takes))
            raise ConfigError(
                f"{where}.{key}: only rules for {kinds} take {key}; this rule is for "
                f"{', '.join(actions)}"
            )
        globs[key] = tuple(
            _Glob(text, f"{where}.{key}[{position}]")
            for position, text in enumerate(_strings(raw, key, where, required=True))
        )
    return Rule(
        name=shown,
        allow=effect == "allow",
        actions=acting,
        callers=callers,
        topics=globs.get("topics", _EVERYTHING),
        origins=globs.get("origins", _EVERYTHING),
        queues=globs.get("queues", _EVERYTHING),
    )


def _caller(text: str, where: str, tokens: TokenFile | None) -> CallerPattern:
    if text == "*":
        return CallerPattern(text, "anyone")
    if text == "anonymous":
        return CallerPattern(text, "anonymous")
    kind, sep, value = text.partition(":")
    if sep and kind in ("uid", "gid"):
        return CallerPattern(text, kind, number=_unix_id(kind, value, where))
    if sep and kind == "token":
        if not value:
            raise ConfigError(f"{where}: token: needs a token name (token:NAME)")
        if not any(char in value for char in "*?[") and (tokens is None or value not in tokens):
            held = "there is no token-file" if tokens is None else "the token-file has none"
            raise ConfigError(f"{where}: no token named {value!r}: {held}")
        return CallerPattern(text, "token", glob=compile_glob(value))
    parts = text.split("/")
    if sep or len(parts) != 3 or not all(parts):
        raise ConfigError(f"{where}: {text!r} is not a caller ({_CALLER_FORMS})")
    return CallerPattern(text, "identity", glob=compile_glob(text))


def _unix_id(kind: str, value: str, where: str) -> int:
    """A uid or gid by number or by user or group name (looked up when the policy is read)."""
    if value.isdigit():
        return int(value)
    if not value:
        raise ConfigError(f"{where}: {kind}: needs a number or a name ({kind}:1000)")
    try:
        if kind == "uid":
            return pwd.getpwnam(value).pw_uid
        return grp.getgrnam(value).gr_gid
    except KeyError:
        what = "user" if kind == "uid" else "group"
        raise ConfigError(f"{where}: there is no {what} named {value!r}") from None


def _strings(table: Mapping[str, object], key: str, where: str, *, required: bool) -> list[str]:
    value = table.get(key)
    if value is None and not required:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}.{key} must be an array of strings, got {described(value)}")
    if not value:
        raise ConfigError(f"{where}.{key} must not be empty")
    return list(value)


def _choice(
    table: Mapping[str, object], key: str, allowed: Sequence[str], where: str, fallback: str | None
) -> str | None:
    value = table.get(key)
    if value is None:
        return fallback
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(
            f"{where}.{key} must be one of {', '.join(repr(a) for a in allowed)}, "
            f"got {described(value)}"
        )
    return value


def _known_keys(table: Mapping[str, object], keys: Sequence[str], where: str) -> None:
    for key in table:
        if key not in keys:
            raise ConfigError(f"{where}: unknown key {key!r}{_close(key, keys)}")


def _close(word: str, words: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, words, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
