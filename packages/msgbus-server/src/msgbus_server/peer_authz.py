"""The policy's `push` rule on what peers supply: which logs this daemon takes from each peer.

Everything this daemon stores from a peer's sync came from that peer, so a peer that pulls
supplies data just as a pushing peer will (issue 17's push RPC, which will ask the same
question). With a policy, every log a peer lists, and every batch its Fetch serves, is decided
by `Policy.decide(Caller(node=PEER), PUSH, LogRef(topic, origin))` before anything is stored:

- PEER is the identity pinned with `--peer ENDPOINT=tenant/bl/device`, or else the one the peer
  reports in Health, which nothing verifies (a warning says so, once per identity);
- a refused log is never fetched: its refusal is recorded in the peer's sync state (naming
  `push`, the log and the deciding rule) and in one audit line on `msgbus_server.audit`, once
  while the refusal lasts, and counted in the worker's `refused` counter;
- a log's deleted copies and its origin's delete markers (`$msgbus.delete`) are messages of that
  origin's logs, so they are refused with them.

The policy is read at each check (`PushRules.policy` returns the one in force), so a SIGHUP
decides the next check. Without a policy every log is taken, as before. Logs of this daemon's
own origin are not decided here: a pass never takes them from a peer, and recovery after a
lost store (`recovery`) takes them back by the operator's explicit choice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from msgbus_core.model import NodeId
from msgbus_server.authz import PUSH, AuditLog
from msgbus_server.identity import Caller
from msgbus_server.peers import PeerSpec
from msgbus_server.policy import LogRef, Policy
from msgbus_server.sync_state import LogId

__all__ = ["AUDIT_RPC", "PushGate", "PushRefusal", "PushRules"]

log = logging.getLogger("msgbus_server.sync")

AUDIT_RPC = "sync"
"""What the audit lines of refused pulled logs name as their `rpc`: no call was made to us."""


@dataclass(frozen=True, slots=True)
class PushRefusal:
    """Why one log is not taken from a peer."""

    message: str
    """The text recorded in sync state: names `push`, the log and the deciding rule."""
    new: bool
    """The first check that refused it with this message since it was last allowed (so count
    it, and audit it)."""


@dataclass(frozen=True, slots=True)
class PushRules:
    """Where push checks read the policy in force, and where they write their audit lines."""

    policy: Callable[[], Policy | None]
    """The policy in force now (`Authorizer.policy`); None takes everything."""
    audit: AuditLog

    def gate(self, spec: PeerSpec) -> PushGate:
        """The checks of one peer's worker."""
        return PushGate(spec, self)


@dataclass(slots=True)
class PushGate:
    """One peer's push checks: who the peer is, and which refusals were already announced."""

    spec: PeerSpec
    rules: PushRules
    _reported: NodeId | None = None
    """The identity the peer last reported in Health (only used when none is pinned)."""
    _announced: dict[LogId, str] = field(default_factory=dict)

    @property
    def peer(self) -> NodeId | None:
        """The identity the push rule decides by: the pinned one, else the one reported."""
        return self.spec.pinned or self._reported

    def identified(self, reported: NodeId) -> None:
        """Note the identity the peer reported in Health (already checked against a pin)."""
        if self.spec.pinned is not None or reported == self._reported:
            return
        self._reported = reported
        if self.rules.policy() is not None:
            endpoint = self.spec.endpoint
            log.warning(
                "peer %s: the push rule decides what it may supply by the identity it reports, "
                "%s, which is not verified; pin it with --peer %s=%s",
                endpoint,
                reported.key,
                endpoint,
                reported.key,
            )

    def refusal(self, log_id: LogId) -> PushRefusal | None:
        """Why the peer may not supply `log_id` under the policy in force; None when it may."""
        policy = self.rules.policy()
        if policy is None:
            self._announced.pop(log_id, None)
            return None
        topic, origin = log_id
        caller = Caller(node=self.peer)
        resource = LogRef(topic, origin)
        decision = policy.decide(caller, PUSH, resource)
        if decision.allowed:
            self._announced.pop(log_id, None)
            return None
        rule = f"{decision.rule}: {decision.reason}" if decision.reason else decision.rule
        endpoint = self.spec.endpoint
        what = f"push topic {topic!r} of origin {origin.key}"
        unverified = "" if self.spec.pinned is not None else ", unverified"
        message = (
            f"refused: peer {endpoint} ({caller.principal}{unverified}) may not {what} "
            f"(decided by {rule})"
        )
        new = self._announced.get(log_id) != message
        if new:
            self._announced[log_id] = message
            self.rules.audit.record(
                caller=caller,
                rpc=AUDIT_RPC,
                code=grpc.StatusCode.PERMISSION_DENIED,
                what=f"{what} (pulled from peer {endpoint})",
                rule=rule,
                resource=resource,
            )
        return PushRefusal(message, new)
