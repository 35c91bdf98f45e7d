"""The policy's `push` rule decides what a hub takes from the peers it pulls from.

Device D1 holds its own log and D2's logs (it pulled them from D2): a message, a deleted copy
and D2's delete marker. A hub pulling from D1, whose push rule lets each device supply only its
own origin, stores D1's log and nothing of D2's: the refusal is in its sync state and in its
audit log. A rule that lets D1 relay its tenant takes D2's logs too; narrowed again on SIGHUP,
the next pass refuses D2's new messages.
"""

from __future__ import annotations

import signal
from pathlib import Path

from msgbus_core.model import NodeId
from msgbus_proto import pb
from msgbus_server.testing import Daemon, wait_until
from msgbus_testkit.authz import audit_lines
from msgbus_testkit.logs import fetch_rows, heads, publish_many
from msgbus_testkit.metrics import Scrape, metrics_args
from msgbus_testkit.peers import log_state

D1 = NodeId("acme", "bl", "d1")
D2 = NodeId("acme", "bl", "d2")
HUB = NodeId("acme", "hub", "h1")
TOPIC = "telemetry"
DELETE = "$msgbus.delete"
SYNC = ["--sync-interval-ms", "100"]
OWN_ONLY = "devices push their own logs"
RELAY = "d1 relays its tenant"
NOTHING_ELSE = "devices supply nothing else"
RELOADED = "policy reloaded from"


def _policy(push_rule: str, origins: str) -> str:
    return f"""
[policy]
[[policy.rule]]
name = "{push_rule}"
callers = ["*/*/*"]
allow = ["push"]
origins = [{origins}]

[[policy.rule]]
name = "{NOTHING_ELSE}"
callers = ["*/*/*"]
deny = ["push"]

[[policy.rule]]
name = "the test, on loopback"
callers = ["anonymous"]
allow = ["read", "admin"]
"""


NARROW = _policy(OWN_ONLY, '"{tenant}/{bl}/{device}"')
WIDE = _policy(RELAY, '"acme/*/*"')


def _origins(daemon: Daemon) -> dict[tuple[str, str], int]:
    return {(t, o): h for (t, o), h in heads(daemon.stub()).items() if h}


def _hangup(daemon: Daemon) -> None:
    seen = daemon.stderr_text().count(RELOADED)
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.stderr_text().count(RELOADED) > seen, message="the policy reloaded")


def _passes(port: int, peer: str) -> float:
    return Scrape.of(port).value("msgbus_sync_passes_total", peer=peer, result="ok")


def _refusal(hub: Daemon, peer: str, topic: str, origin: NodeId) -> str:
    state = log_state(hub.stub(), peer, topic, origin)
    return state.last_error if state is not None else ""


def test_a_peer_supplies_only_the_origins_its_push_rule_allows(tmp_path: Path) -> None:
    with Daemon.start(tmp_path / "d2", node=D2.key) as d2:
        publish_many(d2.stub(), TOPIC, 3, prefix="d2-")
        d2.stub().DeleteRange(
            pb.DeleteRangeRequest(topic=TOPIC, from_head_id=1, to_head_id=1), timeout=10
        )
        peer_d2 = ["--peer", f"{d2.endpoint}={D2.key}"]
        with Daemon.start(tmp_path / "d1", node=D1.key, extra_args=[*peer_d2, *SYNC]) as d1:
            publish_many(d1.stub(), TOPIC, 2, prefix="d1-")
            wait_until(
                lambda: (
                    _origins(d1).get((TOPIC, D2.key)) == 3
                    and _origins(d1).get((DELETE, D2.key)) == 1
                    and fetch_rows(d1.stub(), TOPIC, D2)[0].deleted
                ),
                message="D1 holding D2's log, its deleted copy and D2's delete marker",
            )

            config = tmp_path / "hub.toml"
            config.write_text(NARROW)
            metrics, port = metrics_args()
            args = ["--config", str(config), "--log-format", "json", *SYNC, *metrics]
            args += ["--peer", f"{d1.endpoint}={D1.key}"]
            with Daemon.start(tmp_path / "hub", node=HUB.key, extra_args=args) as hub:
                peer = d1.endpoint
                wait_until(
                    lambda: (
                        _origins(hub).get((TOPIC, D1.key)) == 2
                        and "may not push" in _refusal(hub, peer, TOPIC, D2)
                        and "may not push" in _refusal(hub, peer, DELETE, D2)
                    ),
                    message="the hub taking D1's own log and refusing D2's",
                )
                refusal = _refusal(hub, peer, TOPIC, D2)
                assert f"may not push topic 'telemetry' of origin {D2.key}" in refusal
                assert f"(decided by policy.rule[1] '{NOTHING_ELSE}')" in refusal
                assert f"({D1.key})" in refusal  # the pinned identity decided
                # Nothing of D2's: no message, no deleted copy, no delete marker.
                assert not [key for key in _origins(hub) if key[1] == D2.key], _origins(hub)
                assert fetch_rows(hub.stub(), TOPIC, D2) == []
                refused = [
                    line
                    for line in audit_lines(hub.stderr_text())
                    if line["rpc"] == "sync" and line.get("origin") == D2.key
                ]
                assert {line["topic"] for line in refused} == {TOPIC, DELETE}, refused
                assert all(line["identity"] == D1.key for line in refused), refused
                assert all(NOTHING_ELSE in str(line["rule"]) for line in refused), refused

                # Passes go on (D1's new message comes), and the refused logs are not fetched:
                # a Fetch refused per batch would count a failure on each retry, and retries
                # come after one or two intervals. Each refusal is recorded, audited and
                # counted once, however many passes meet it.
                publish_many(d1.stub(), TOPIC, 1, prefix="d1-next-")
                wait_until(
                    lambda: _origins(hub).get((TOPIC, D1.key)) == 3,
                    message="the hub's next pass taking D1's new message",
                )
                passes = _passes(port, peer)
                wait_until(lambda: _passes(port, peer) >= passes + 10, message="ten more passes")
                for topic in (TOPIC, DELETE):
                    state = log_state(hub.stub(), peer, topic, D2)
                    assert state is not None
                    assert state.consecutive_failures == 1, state
                assert Scrape.of(port).value("msgbus_sync_refused_total", peer=peer) == 2
                assert len(
                    [line for line in audit_lines(hub.stderr_text()) if line["rpc"] == "sync"]
                ) == len(refused)

                # A rule that lets D1 relay its tenant: D2's logs come, deleted copy included.
                config.write_text(WIDE)
                _hangup(hub)
                wait_until(
                    lambda: (
                        _origins(hub).get((TOPIC, D2.key)) == 3
                        and _origins(hub).get((DELETE, D2.key)) == 1
                    ),
                    message="the hub taking D2's logs through D1",
                )
                assert [row.deleted for row in fetch_rows(hub.stub(), TOPIC, D2)] == [
                    True,
                    False,
                    False,
                ]
                assert _refusal(hub, peer, TOPIC, D2) == ""

                # Narrowed again: the next pass refuses D2's new messages, D1's still come.
                config.write_text(NARROW)
                _hangup(hub)
                publish_many(d2.stub(), TOPIC, 1, prefix="d2-late-")
                wait_until(
                    lambda: _origins(d1).get((TOPIC, D2.key)) == 4,
                    message="D1 pulling D2's new message",
                )
                publish_many(d1.stub(), TOPIC, 1, prefix="d1-late-")
                wait_until(
                    lambda: (
                        _origins(hub).get((TOPIC, D1.key)) == 4
                        and "may not push" in _refusal(hub, peer, TOPIC, D2)
                    ),
                    message="the hub refusing D2's new message after SIGHUP",
                )
                state = log_state(hub.stub(), peer, TOPIC, D2)
                assert state is not None
                assert state.remote_head == 4, state
                assert _origins(hub)[(TOPIC, D2.key)] == 3
