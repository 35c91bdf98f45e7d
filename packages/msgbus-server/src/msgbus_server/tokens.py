"""Bearer tokens for clients that cannot hold a certificate: the token file, and checking one.

A token is `NAME.SECRET`: the name says which entry of the token file to check it against (and
is what policy rules match, as `token:NAME`), the secret is 32 random bytes, base64url. The file
stores no secret, only its scrypt hash, one token per line:

    # NAME HASH
    dashboard scrypt$16384$8$1$<salt>$<digest>

Make a token with `python -m msgbus_server.tokens add FILE NAME`: it appends the line to FILE
(created with mode 0600) and prints the token, once. Clients send it as gRPC metadata
`authorization: Bearer NAME.SECRET`.

scrypt takes tens of milliseconds on purpose, so a checked token is remembered (by its SHA-256,
never in clear) and a client that sends the same token on every call pays for it once.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from msgbus_server.config import ConfigError

SCHEME: Final = "scrypt"
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
DIGEST_BYTES: Final = 32
SALT_BYTES: Final = 16
SECRET_BYTES: Final = 32
MAX_SCRYPT_N: Final = 2**20
"""The costliest work factor a file may ask for (1 GiB of memory at r=8 is too much already)."""
CACHED_TOKENS: Final = 4096
"""Checked tokens remembered; the memo starts over when full, so it stays bounded."""
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A token name: it is the part of the token before the first dot."""


@dataclass(frozen=True, slots=True)
class StoredToken:
    """One line of the token file: the name and the scrypt hash of its secret."""

    name: str
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def matches(self, secret: str) -> bool:
        """True when `secret` hashes to this entry's digest (constant-time comparison)."""
        derived = _scrypt(secret, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(derived, self.digest)

    def line(self) -> str:
        """This entry as a line of the file."""
        salt, digest = (base64.b64encode(v).decode() for v in (self.salt, self.digest))
        return f"{self.name} {SCHEME}${self.n}${self.r}${self.p}${salt}${digest}"


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # maxmem: scrypt needs 128 * n * r bytes, above OpenSSL's 32 MiB default for larger n.
    return hashlib.scrypt(
        secret.encode(), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=256 * n * r + (1 << 20)
    )


class TokenFile:
    """The tokens a daemon accepts, by name; checks the tokens clients send."""

    def __init__(self, tokens: Sequence[StoredToken], path: str = "") -> None:
        self.path = path
        self._tokens = {token.name: token for token in tokens}
        self._checked: dict[bytes, str | None] = {}
        """Outcomes by the SHA-256 of the token: its name, or None for a wrong one."""

    def __contains__(self, name: object) -> bool:
        return name in self._tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def cached(self, token: str) -> tuple[bool, str | None]:
        """`(True, name-or-None)` when `token` was checked before, else `(False, None)`."""
        key = hashlib.sha256(token.encode()).digest()
        if key in self._checked:
            return True, self._checked[key]
        return False, None

    def verify(self, token: str) -> str | None:
        """The name of a valid token; None for an unknown name or a wrong secret.

        Slow for a token not seen before (scrypt): call it off the event loop.
        """
        key = hashlib.sha256(token.encode()).digest()
        if key in self._checked:
            return self._checked[key]
        name, _, secret = token.partition(".")
        stored = self._tokens.get(name)
        valid = stored is not None and bool(secret) and stored.matches(secret)
        outcome = name if valid else None
        if len(self._checked) >= CACHED_TOKENS:
            self._checked.clear()
        self._checked[key] = outcome
        return outcome


def parse_line(line: str, where: str) -> StoredToken:
    """One `NAME scrypt$N$r$p$SALT$DIGEST` line; `ConfigError` naming `where` otherwise."""
    fields = line.split()
    if len(fields) != 2:
        raise ConfigError(
            f"{where}: expected 'NAME {SCHEME}$N$r$p$SALT$DIGEST', got {len(fields)} fields"
        )
    name, hashed = fields
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"{where}: token name {name!r} must be 1-64 of A-Z a-z 0-9 _ -")
    parts = hashed.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ConfigError(f"{where}: the hash of {name!r} is not {SCHEME}$N$r$p$SALT$DIGEST")
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ConfigError(
            f"{where}: the hash of {name!r} has a malformed number or base64"
        ) from None
    if not (1 < n <= MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= 64 and 1 <= p <= 16):
        raise ConfigError(
            f"{where}: the scrypt parameters of {name!r} are out of range "
            f"(N a power of two up to {MAX_SCRYPT_N}, r 1-64, p 1-16)"
        )
    if len(salt) < 8 or len(digest) < 16:
        raise ConfigError(f"{where}: the salt or digest of {name!r} is too short")
    return StoredToken(name, n, r, p, salt, digest)


def load_token_file(path: str, key: str) -> TokenFile:
    """Read a token file; every problem is a `ConfigError` naming `key`, the file and the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{key}: cannot read {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path} is not UTF-8 text") from None
    tokens: list[StoredToken] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        token = parse_line(line, f"{key}: {path} line {number}")
        if token.name in seen:
            raise ConfigError(f"{key}: {path} line {number}: token {token.name!r} is listed twice")
        seen.add(token.name)
        tokens.append(token)
    return TokenFile(tokens, path)


def new_token(name: str) -> tuple[str, StoredToken]:
    """A fresh token `NAME.SECRET` and its file entry."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"token name {name!r} must be 1-64 of A-Z a-z 0-9 _ -")
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, DIGEST_BYTES)
    return f"{name}.{secret}", StoredToken(name, SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, digest)


def add_token(path: str, name: str) -> str:
    """Append a new token named `name` to the file at `path` (0600 when created); return it.

    Raises `ValueError` for a bad name or one the file already has.
    """
    file = Path(path)
    if file.exists() and name in load_token_file(path, "token file"):
        raise ValueError(f"{path} already has a token named {name!r}")
    token, stored = new_token(name)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
        handle.write(stored.line() + "\n")
    return token


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m msgbus_server.tokens add FILE NAME`: make a token and print it."""
    parser = argparse.ArgumentParser(
        prog="python -m msgbus_server.tokens",
        description="Make msgbusd bearer tokens: the file keeps only their scrypt hashes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="append a new token to FILE and print it, once")
    add.add_argument("file", metavar="FILE")
    add.add_argument("name", metavar="NAME", help="1-64 of A-Z a-z 0-9 _ -")
    args = parser.parse_args(argv)
    try:
        token = add_token(args.file, args.name)
    except (ValueError, ConfigError, OSError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    sys.stdout.write(token + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
