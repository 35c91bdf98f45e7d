"""The daemon's one health object: serving, the reasons when not, and one log line a transition."""

from __future__ import annotations

import logging

import pytest

from msgbus_core.errors import StorageError
from msgbus_server.health import Health, Subsystem, storage_reason

STORE_DOWN = "storage error: disk I/O error"


def transitions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "msgbus_server.health"]


def test_a_new_daemon_serves_with_no_reason() -> None:
    health = Health()
    assert health.serving
    assert health.reason() == ""
    assert health.reasons() == {}


def test_a_failing_subsystem_stops_serving_until_it_reports_ok() -> None:
    health = Health()
    health.report(Subsystem.STORE, False, STORE_DOWN)
    assert not health.serving
    assert health.reason() == STORE_DOWN
    health.report(Subsystem.STORE, True)
    assert health.serving
    assert health.reason() == ""


def test_every_failing_subsystem_must_recover() -> None:
    health = Health()
    health.report(Subsystem.PIPELINE, False, "storage error: the last write transaction failed")
    health.report(Subsystem.STORE, False, STORE_DOWN)
    health.report(Subsystem.STORE, True)
    assert not health.serving
    health.report(Subsystem.PIPELINE, True)
    assert health.serving


def test_reasons_come_in_subsystem_order_whatever_the_order_of_reports() -> None:
    health = Health()
    health.report(Subsystem.PIPELINE, False, "pipeline reason")
    health.report(Subsystem.SHUTDOWN, False, "shutting down")
    assert health.reason() == "shutting down"
    health.report(Subsystem.STORE, False, STORE_DOWN)
    assert health.reason() == STORE_DOWN
    assert list(health.reasons()) == [Subsystem.STORE, Subsystem.SHUTDOWN, Subsystem.PIPELINE]


def test_a_failure_without_a_reason_still_names_its_subsystem() -> None:
    health = Health()
    health.report(Subsystem.PIPELINE, False)
    assert health.reason() == "pipeline failed"


def test_listeners_hear_each_flip_between_serving_and_not_serving_once() -> None:
    health = Health()
    heard: list[bool] = []
    health.on_change(heard.append)
    health.report(Subsystem.STORE, True)  # already serving
    health.report(Subsystem.STORE, False, STORE_DOWN)
    health.report(Subsystem.STORE, False, "storage error: another text")  # still not serving
    health.report(Subsystem.PIPELINE, False, "pipeline reason")  # still not serving
    health.report(Subsystem.STORE, True)
    health.report(Subsystem.PIPELINE, True)
    health.report(Subsystem.PIPELINE, True)
    assert heard == [False, True]


def test_each_transition_is_logged_once_with_its_reasons(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="msgbus_server.health")
    health = Health()
    for _ in range(3):
        health.report(Subsystem.STORE, False, STORE_DOWN)
    health.report(Subsystem.PIPELINE, False, "pipeline reason")
    for _ in range(3):
        health.report(Subsystem.STORE, True)
        health.report(Subsystem.PIPELINE, True)
    assert transitions(caplog) == [
        f"health is now NOT_SERVING (store: {STORE_DOWN})",
        f"health is now NOT_SERVING (store: {STORE_DOWN}; pipeline: pipeline reason)",
        "health is now NOT_SERVING (pipeline: pipeline reason)",
        "health is now SERVING",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_a_shutdown_is_logged_as_information_not_as_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="msgbus_server.health")
    health = Health()
    health.report(Subsystem.SHUTDOWN, False, "msgbusd is shutting down; reconnect later")
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "health is now NOT_SERVING (shutdown: msgbusd is shutting down; reconnect later)"
    )


def test_storage_reasons_name_the_type_of_an_unexpected_error() -> None:
    assert storage_reason(StorageError("disk I/O error")) == STORE_DOWN
    assert storage_reason(OSError("gone")) == "storage error: OSError: gone"
