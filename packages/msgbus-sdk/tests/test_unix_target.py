"""`unix:` endpoints: msgbusd's Unix socket (`--listen unix:///run/msgbus/msgbusd.sock`)."""

from __future__ import annotations

import pytest

from msgbus_sdk import ConfigurationError, parse_target
from msgbus_sdk._config import parse_endpoints


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("unix:///run/msgbus/msgbusd.sock", "unix:/run/msgbus/msgbusd.sock"),
        ("unix:/run/msgbus/msgbusd.sock", "unix:/run/msgbus/msgbusd.sock"),
        (" unix:relative/msgbusd.sock ", "unix:relative/msgbusd.sock"),
    ],
)
def test_unix_targets_dial_the_socket(text: str, address: str) -> None:
    target = parse_target(text)
    assert (target.address, target.tls, target.unix_path) == (address, False, address[5:])


def test_a_unix_target_fails_over_like_any_endpoint() -> None:
    endpoints = parse_endpoints("unix:///run/a.sock,127.0.0.1:50051")
    assert [e.target.address for e in endpoints] == ["unix:/run/a.sock", "127.0.0.1:50051"]


@pytest.mark.parametrize(
    ("text", "named"),
    [("unix:", "no socket path"), ("unix://run/x.sock", "unix:// takes an absolute path")],
)
def test_a_malformed_unix_target_is_refused(text: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        parse_target(text)
