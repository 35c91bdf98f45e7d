"""`--listen` values: Unix socket paths, socket modes and groups, listeners another covers."""

from __future__ import annotations

import grp
import os

import pytest

from msgbus_server.config import ConfigError
from msgbus_server.listeners import (
    TcpListener,
    UnixListener,
    exposed_listeners,
    parse_socket_group,
    parse_socket_mode,
    parse_unix_listener,
    without_covered,
)


def test_unix_listener_forms() -> None:
    assert parse_unix_listener("unix:///run/msgbus/msgbusd.sock", 0o660, None).path == (
        "/run/msgbus/msgbusd.sock"
    )
    assert parse_unix_listener("unix:/run/x.sock", 0o600, 5) == UnixListener(
        "/run/x.sock", 0o600, 5
    )
    relative = parse_unix_listener("unix:run/x.sock", 0o660, None)
    assert relative.path == os.path.abspath("run/x.sock")
    assert relative.address == f"unix:{relative.path}"
    for value, named in (
        ("unix:", "names no socket path"),
        ("unix://relative", "unix:// takes an absolute path"),
        ("unix:///" + "x" * 120, "a Unix socket path holds at most 107"),
    ):
        with pytest.raises(ConfigError, match="--listen") as info:
            parse_unix_listener(value, 0o660, None)
        assert named in str(info.value)


def test_socket_mode_and_group() -> None:
    assert parse_socket_mode("0660") == 0o660
    assert parse_socket_mode("600") == 0o600
    for text in ("rw", "0800", "17777"):
        with pytest.raises(ConfigError, match="--socket-mode"):
            parse_socket_mode(text)
    assert parse_socket_group("0") == 0
    assert parse_socket_group(grp.getgrgid(0).gr_name) == 0
    with pytest.raises(ConfigError, match="--socket-group: there is no group named"):
        parse_socket_group("no-such-group-here")


def test_a_wildcard_covers_the_same_port_of_its_family() -> None:
    loopback, wildcard = TcpListener("127.0.0.1", 7000), TcpListener("0.0.0.0", 7000)
    unix = UnixListener("/run/x.sock")
    assert without_covered([loopback, wildcard, unix]) == (wildcard, unix)
    assert without_covered([loopback, loopback]) == (loopback,)
    other_port = TcpListener("127.0.0.1", 7001)
    v6 = TcpListener("::1", 7000)
    assert without_covered([other_port, wildcard, v6]) == (other_port, wildcard, v6)
    ephemeral = [TcpListener("127.0.0.1", 0), TcpListener("0.0.0.0", 0)]
    assert without_covered(ephemeral) == tuple(ephemeral)
    with pytest.raises(ConfigError, match="given twice"):
        without_covered([unix, unix])
    assert exposed_listeners([loopback, wildcard, unix, v6]) == [wildcard]
