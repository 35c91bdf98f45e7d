"""Whether this daemon is serving, and if not, why.

`Health` is the one owner of that answer. Each subsystem reports to it: the store monitor and
Ready (does the store answer?), the commit pipeline (did the last write transaction commit?
while it did not, the daemon's health monitor probes it with a write that changes nothing)
and shutdown. The Health and Ready RPCs read it, and the daemon mirrors it into
grpc.health.v1 from its one change listener. Every transition is logged once, with the reasons.

Recovery (a daemon with a new store pulling its own logs back from its peers) makes the daemon
not ready, so Ready answers NOT_READY with its reason, but it still serves: its peers must keep
reaching it. It never changes `serving`, and the recovery logs its own progress.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from msgbus_core.errors import MsgbusError

__all__ = ["Health", "Subsystem", "storage_reason"]

logger = logging.getLogger("msgbus_server.health")


class Subsystem(enum.Enum):
    """What can make the daemon not serve; `Health.reason` names them in this order."""

    STORE = "store"
    SHUTDOWN = "shutdown"
    PIPELINE = "pipeline"
    RECOVERY = "recovery"
    """Not ready, still serving (see the module docstring)."""


_READY_ONLY = frozenset({Subsystem.RECOVERY})
"""Subsystems that make the daemon not ready without making it stop serving."""


def storage_reason(error: Exception) -> str:
    """The reason reported when the store check fails: the error, and its type if a bug."""
    if isinstance(error, MsgbusError):
        return f"storage error: {error}"
    return f"storage error: {type(error).__name__}: {error}"


class Health:
    """Serving, or not serving with the reason of each failing subsystem.

    Used from the event loop only. Listeners (`on_change`) are called on every transition
    between serving and not serving, after the state changed.
    """

    def __init__(self) -> None:
        self._failing: dict[Subsystem, str] = {}
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def serving(self) -> bool:
        """True while no subsystem reports a failure, recovery aside."""
        return self._failing.keys() <= _READY_ONLY

    def reasons(self) -> dict[Subsystem, str]:
        """The reason of every failing subsystem, in `Subsystem` order (for a status page)."""
        return {s: self._failing[s] for s in Subsystem if s in self._failing}

    def failing(self, subsystem: Subsystem) -> bool:
        """True while `subsystem` reports a failure."""
        return subsystem in self._failing

    def reason(self) -> str:
        """The first reason not to be ready (in `Subsystem` order); "" while ready."""
        return next(iter(self.reasons().values()), "")

    def report(self, subsystem: Subsystem, ok: bool, reason: str = "") -> None:
        """Note that `subsystem` works (`ok`), or fails for `reason`."""
        if ok and subsystem not in self._failing:
            return  # the common case: every commit reports, and nothing changes
        if subsystem in _READY_ONLY:
            # Not a transition of `serving`: no listener, and the subsystem logs its own.
            if ok:
                del self._failing[subsystem]
            else:
                self._failing[subsystem] = reason or f"{subsystem.value} pending"
            return
        before = set(self._failing)
        was_serving = self.serving
        if ok:
            self._failing.pop(subsystem, None)
        else:
            self._failing[subsystem] = reason or f"{subsystem.value} failed"
        if set(self._failing) == before:
            return  # a failing subsystem may fail again, differently: still one transition
        self._log_transition()
        if self.serving != was_serving:
            for listener in self._listeners:
                listener(self.serving)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(serving)` on every transition between serving and not serving."""
        self._listeners.append(listener)

    def _log_transition(self) -> None:
        if self.serving:
            logger.warning("health is now SERVING")
            return
        reasons = self.reasons()
        shown = "; ".join(f"{s.value}: {r}" for s, r in reasons.items())
        # A shutdown is asked for; only a failure is worth a warning.
        failures = [s for s in reasons if s not in _READY_ONLY]
        level = logging.INFO if failures == [Subsystem.SHUTDOWN] else logging.WARNING
        logger.log(level, "health is now NOT_SERVING (%s)", shown)
