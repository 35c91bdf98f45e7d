"""A grpc-go client, shaped like the original Go SDK, drives real msgbusd daemons."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Pki, Scenarios

pytestmark = pytest.mark.timeout(2100)  # the first test of a run may wait for the build


def test_go_client_calls_every_rpc_and_gets_the_contracts_answers(
    go_client: Path, backend: str, tmp_path: Path, scenarios: Scenarios
) -> None:
    output = scenarios.contract(go_client, backend, tmp_path)
    assert "replay 2, 3 then live 4, in order" in output


def test_go_reconnecting_subscription_survives_sigkill_of_the_daemon(
    go_client: Path, backend: str, tmp_path: Path, scenarios: Scenarios
) -> None:
    scenarios.resume_across_crashes(go_client, backend, tmp_path)


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_go_client_speaks_tls_and_mtls_with_certificates_made_here(
    go_client: Path, pki: Pki, mutual: bool, tmp_path: Path, scenarios: Scenarios
) -> None:
    scenarios.tls(go_client, pki, tmp_path, mutual=mutual)
