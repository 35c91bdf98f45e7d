"""TLS and mTLS against a daemon serving TLS: CA, client certificate, server name override."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from msgbus_sdk import MsgbusClient, MsgbusError, TlsConfig, UnavailableError
from msgbus_server.testing import Daemon
from msgbus_testkit.certificates import CertificateAuthority, TlsFiles


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    # The harness probes 127.0.0.1 without a name override, so the IP is a SAN too.
    return CertificateAuthority().write_tls_files(
        tmp_path_factory.mktemp("pki"), server_hosts=["msgbusd.test", "127.0.0.1"]
    )


@pytest.fixture(scope="module")
def mtls_daemon(pki: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon.start(
        tmp_path_factory.mktemp("tls"),
        extra_args=pki.server_args(require_client_cert=True),
        credentials=pki.credentials(client=True),
    ) as daemon:
        yield daemon


def test_mtls_with_ca_client_certificate_and_server_name(
    mtls_daemon: Daemon, pki: TlsFiles
) -> None:
    tls = TlsConfig.from_files(
        ca=pki.ca, cert=pki.client_cert, key=pki.client_key, server_name="msgbusd.test"
    )
    with MsgbusClient.connect(mtls_daemon.endpoint, tls=tls) as bus:
        assert bus.health().status == "SERVING"
        assert bus.publish("tls.events", b"secret").head_id >= 1
    # https:// plus explicit options: the options win over the system roots.
    with MsgbusClient.connect(f"https://{mtls_daemon.endpoint}", tls=tls) as bus:
        assert bus.ready().ready


def test_a_wrong_server_name_is_refused(mtls_daemon: Daemon, pki: TlsFiles) -> None:
    tls = TlsConfig.from_files(
        ca=pki.ca, cert=pki.client_cert, key=pki.client_key, server_name="impostor.test"
    )
    with pytest.raises(UnavailableError):
        MsgbusClient.connect(mtls_daemon.endpoint, tls=tls, timeout=5)


def test_without_a_client_certificate_the_daemon_refuses(
    mtls_daemon: Daemon, pki: TlsFiles
) -> None:
    with pytest.raises(MsgbusError):
        MsgbusClient.connect(mtls_daemon.endpoint, tls=TlsConfig.from_files(ca=pki.ca), timeout=5)


def test_plaintext_against_a_tls_daemon_fails_cleanly(mtls_daemon: Daemon) -> None:
    with pytest.raises(UnavailableError):
        MsgbusClient.connect(mtls_daemon.endpoint, timeout=5)


def test_cli_tls_flags(mtls_daemon: Daemon, pki: TlsFiles) -> None:
    import subprocess
    import sys

    msgbus = str(Path(sys.executable).parent / "msgbus")
    flags = ["--endpoint", mtls_daemon.endpoint, "--tls-ca", str(pki.ca)]
    flags += ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    flags += ["--tls-server-name", "msgbusd.test"]
    result = subprocess.run([msgbus, *flags, "health"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"SERVING")
