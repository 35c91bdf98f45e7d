"""The Go (grpc-go) and Rust (tonic, prost) clients drive real msgbusd daemons.

Each client is shaped like the original SDK of its language (tests/interop/go/sdk.go,
tests/interop/rust/src/sdk.rs), so a pass here means the original SDKs' calls work.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Pki, Scenarios

pytestmark = pytest.mark.timeout(2100)  # the first test of a run may wait for the build


@pytest.fixture(params=["go", "rust"])
def client(request: pytest.FixtureRequest) -> Path:
    """Each client program, built (or found current) in the cache."""
    binary: Path = request.getfixturevalue(f"{request.param}_client")
    return binary


def test_client_calls_every_rpc_and_gets_the_contracts_answers(
    client: Path, backend: str, tmp_path: Path, scenarios: Scenarios
) -> None:
    output = scenarios.contract(client, backend, tmp_path)
    assert "replay 2, 3 then live 4, in order" in output
    assert "refusals with the contract's status codes" in output
    if client.name == "msgbus-interop-go":
        # Every extension of msgbus.v1 is exercised from Go, in the issue that adds it.
        assert "PublishBatch: consecutive head_ids" in output
        assert "max_messages_per_response: 3 messages in one response" in output


def test_reconnecting_subscription_survives_sigkill_of_the_daemon(
    client: Path, backend: str, tmp_path: Path, scenarios: Scenarios
) -> None:
    output = scenarios.resume_across_crashes(client, backend, tmp_path)
    assert "exactly once, in order" in output


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_client_speaks_tls_and_mtls_with_certificates_made_here(
    client: Path, pki: Pki, mutual: bool, tmp_path: Path, scenarios: Scenarios
) -> None:
    output = scenarios.tls(client, pki, tmp_path, mutual=mutual)
    assert "does not trust the test CA refuses" in output


def test_a_missing_toolchain_skips_locally_and_fails_under_ci(
    scenarios: Scenarios, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="`no-such-go` is not installed"):
        scenarios.require("no-such-go")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: a missing toolchain fails the run"):
        scenarios.require("no-such-go")
