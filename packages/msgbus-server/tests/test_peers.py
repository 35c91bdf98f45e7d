"""`--peer` parsing and the peer client's TLS configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from msgbus_core import NodeId
from msgbus_server.peers import PeerSpec, PeerTlsConfig, parse_peer_spec, peer_target


def test_unpinned_peer() -> None:
    assert parse_peer_spec("http://127.0.0.1:50052") == PeerSpec("http://127.0.0.1:50052", None)


def test_identity_bound_peer() -> None:
    spec = parse_peer_spec("https://node-b:50052=tenant/default/node-b")
    assert spec.endpoint == "https://node-b:50052"
    assert spec.pinned == NodeId("tenant", "default", "node-b")


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.1:50051",
        "localhost:1",
        "node-b.example.com:65535",
        "[::1]:50051",
        "http://[fe80::1]:443",
        "https://node-b:50052/",
    ],
)
def test_accepted_endpoint_forms(value: str) -> None:
    assert parse_peer_spec(value).endpoint == value


def test_whitespace_is_trimmed() -> None:
    spec = parse_peer_spec("  127.0.0.1:5000 = t/b/d ")
    assert spec == PeerSpec("127.0.0.1:5000", NodeId("t", "b", "d"))


def test_split_is_on_the_last_equals_sign() -> None:
    # Only the last '=' separates the pin, so the endpoint half is validated as given.
    with pytest.raises(ValueError, match="not of the form host:port"):
        parse_peer_spec("127.0.0.1:5000=x=t/b/d")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "peer is empty"),
        ("   ", "peer is empty"),
        ("=t/b/d", "peer endpoint is empty"),
        (" =t/b/d", "peer endpoint is empty"),
        ("127.0.0.1:5000=", "no node key"),
        ("127.0.0.1:5000=t/b", "tenant_id/bl_name/device_id"),
        ("127.0.0.1:5000=t/b/d/e", "tenant_id/bl_name/device_id"),
        ("127.0.0.1:5000=t//d", "bl_name is empty"),
        ("127.0.0.1", "not of the form host:port"),
        ("127.0.0.1:", "not of the form host:port"),
        ("127.0.0.1:0", "ports are 1-65535"),
        ("127.0.0.1:70000", "ports are 1-65535"),
        ("127.0.0.1:port", "not of the form host:port"),
        ("grpc://127.0.0.1:5000", "unsupported scheme"),
        ("http://127.0.0.1:5000/path", "not of the form host:port"),
        ("::1:5000", "not of the form host:port"),
        ("user@host:5000", "not of the form host:port"),
    ],
)
def test_invalid_peer_specs(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_peer_spec(value)


def test_peer_target() -> None:
    assert peer_target("127.0.0.1:1") == ("127.0.0.1:1", False)
    assert peer_target("http://h:1") == ("h:1", False)
    assert peer_target("https://h:1/") == ("h:1", True)


# -- TLS ---------------------------------------------------------------------------------------


def _pem(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    # Content is not parsed until a connection is made; from_paths only checks readability.
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return str(path)


def test_no_tls_options_means_none() -> None:
    assert PeerTlsConfig.from_paths(None, None, None, None) is None
    assert PeerTlsConfig.from_paths("", "", None, "") is None


def test_ca_only(tmp_path: Path) -> None:
    ca = _pem(tmp_path, "ca.pem")
    assert PeerTlsConfig.from_paths(ca, None, None, None) == PeerTlsConfig(ca, None, None, None)


def test_domain_only_enables_tls_with_system_roots() -> None:
    assert PeerTlsConfig.from_paths(None, None, None, "node-b") == PeerTlsConfig(
        None, None, None, "node-b"
    )


def test_client_identity(tmp_path: Path) -> None:
    cert, key = _pem(tmp_path, "c.pem"), _pem(tmp_path, "k.pem")
    config = PeerTlsConfig.from_paths(None, cert, key, None)
    assert config is not None
    assert (config.cert_path, config.key_path) == (cert, key)


@pytest.mark.parametrize("which", ["cert", "key"])
def test_cert_and_key_come_together(tmp_path: Path, which: str) -> None:
    path = _pem(tmp_path, "x.pem")
    cert, key = (path, None) if which == "cert" else (None, path)
    with pytest.raises(ValueError, match="peer TLS cert and key must be configured together"):
        PeerTlsConfig.from_paths(None, cert, key, None)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ValueError, match=r"peer TLS CA file .*nope\.pem"):
        PeerTlsConfig.from_paths(missing, None, None, None)
    key = _pem(tmp_path, "k.pem")
    with pytest.raises(ValueError, match=r"peer TLS cert file .*nope\.pem"):
        PeerTlsConfig.from_paths(None, missing, key, None)


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    # A directory cannot be read as a file, whoever runs the test (root reads any file).
    key = tmp_path / "k.pem"
    key.mkdir()
    cert = _pem(tmp_path, "c.pem")
    with pytest.raises(ValueError, match=r"peer TLS key file .*k\.pem"):
        PeerTlsConfig.from_paths(None, cert, str(key), None)
