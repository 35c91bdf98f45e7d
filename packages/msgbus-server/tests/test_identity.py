"""Who is calling: certificate identities, bearer tokens and the token file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from msgbus_core.model import NodeId
from msgbus_server.config import ConfigError
from msgbus_server.identity import MalformedToken, bearer_token, certificate_node, node_from_uri
from msgbus_server.tokens import add_token, load_token_file, main, new_token


@pytest.mark.parametrize(
    ("uri", "node"),
    [
        ("msgbus://acme/bl/dev1", NodeId("acme", "bl", "dev1")),
        ("msgbus://acme/point%20of%20sale/till-1", NodeId("acme", "point of sale", "till-1")),
        ("msgbus://acme/bl", None),
        ("msgbus://acme/bl/dev/extra", None),
        ("msgbus://acme/bl/dev%2F1", None),  # a part may not hold a slash, however written
        ("msgbus://acme//dev1", None),
        ("spiffe://acme/bl/dev1", None),
        ("msgbus://acme/bl/dev1?x=1", None),
    ],
)
def test_a_san_uri_names_a_node(uri: str, node: NodeId | None) -> None:
    assert node_from_uri(uri) == node


def test_a_certificate_with_several_identities_names_none() -> None:
    one = {"peer_uri": [b"msgbus://acme/bl/dev1", b"https://example.com"]}
    assert certificate_node(one, "uri") == NodeId("acme", "bl", "dev1")
    two = {"peer_uri": [b"msgbus://acme/bl/dev1", b"msgbus://acme/bl/dev2"]}
    assert certificate_node(two, "uri") is None
    common = {"x509_common_name": [b"acme/bl/dev3"], "peer_uri": [b"msgbus://acme/bl/dev1"]}
    assert certificate_node(common, "common-name") == NodeId("acme", "bl", "dev3")
    assert certificate_node({"transport_security_type": [b"insecure"]}, "uri") is None


def test_bearer_tokens_come_from_the_authorization_metadata() -> None:
    assert bearer_token([("x-other", "1")]) is None
    assert bearer_token([("authorization", "Bearer app.s3cret")]) == "app.s3cret"
    assert bearer_token([("authorization", b"bearer  app.s3cret ")]) == "app.s3cret"
    for metadata in (
        [("authorization", "Basic abc")],
        [("authorization", "Bearer ")],
        [("authorization", "Bearer a.b"), ("authorization", "Bearer c.d")],
    ):
        with pytest.raises(MalformedToken):
            bearer_token(metadata)


def test_a_token_file_holds_hashes_and_checks_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    token = add_token(str(path), "dashboard")
    other = add_token(str(path), "backup")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    assert token.split(".", 1)[1] not in text, "the file must not hold the secret"
    tokens = load_token_file(str(path), "policy.token-file")
    assert len(tokens) == 2
    assert "dashboard" in tokens
    assert tokens.cached(token) == (False, None)
    assert tokens.verify(token) == "dashboard"
    assert tokens.cached(token) == (True, "dashboard")
    assert tokens.verify(other) == "backup"
    name, secret = token.split(".", 1)
    assert tokens.verify(f"{name}.{secret[:-1]}x") is None
    assert tokens.verify(f"backup.{secret}") is None
    assert tokens.verify("nobody.abc") is None
    assert tokens.verify("dashboard") is None
    with pytest.raises(ValueError, match="already has a token named 'dashboard'"):
        add_token(str(path), "dashboard")


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("only-a-name", "expected 'NAME scrypt"),
        (
            "bad.name scrypt$16384$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==",
            "token name 'bad.name'",
        ),
        ("app md5$abc", "is not scrypt$N$r$p$SALT$DIGEST"),
        ("app scrypt$x$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "malformed number or base64"),
        ("app scrypt$1000$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "out of range"),
        ("app scrypt$16384$8$1$AA==$AAAAAAAAAAAAAAAAAAAAAA==", "too short"),
    ],
)
def test_a_bad_token_line_is_one_error_naming_the_line(
    tmp_path: Path, line: str, named: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# made by hand\n\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_token_file(str(path), "policy.token-file")
    message = str(info.value)
    assert message.startswith(f"policy.token-file: {path} line 3: "), message
    assert named in message, message


def test_a_token_listed_twice_is_refused(tmp_path: Path) -> None:
    _, stored = new_token("app")
    path = tmp_path / "tokens"
    path.write_text(f"{stored.line()}\n{stored.line()}\n")
    with pytest.raises(ConfigError, match="line 2: token 'app' is listed twice"):
        load_token_file(str(path), "policy.token-file")


def test_the_token_command_prints_a_token_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens"
    assert main(["add", str(path), "app"]) == 0
    token = capsys.readouterr().out.strip()
    assert load_token_file(str(path), "k").verify(token) == "app"
    assert main(["add", str(path), "bad name"]) == 2
    assert "must be 1-64 of" in capsys.readouterr().err
