"""Fixtures for the authorization tests: certificates, tokens and short Unix socket paths."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from msgbus_testkit.authz import Pki
from msgbus_testkit.certificates import CertificateAuthority


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A fresh CA and server certificate, written to files, for the module's daemons."""
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority("msgbus authz test CA")
    ca.write_tls_files(directory)
    return Pki(ca, directory)


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (a socket path holds at most 107 bytes), which
    other users may enter (the tests connect as another uid too)."""
    path = Path(tempfile.mkdtemp(prefix="mb-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
