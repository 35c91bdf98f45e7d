"""Connection settings shared by both clients: the target, token, channel options, reconnect."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import tenacity

from ._errors import ConfigurationError
from ._tls import TlsConfig

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_MAX_RECEIVE_BYTES",
    "DEFAULT_TIMEOUT",
    "Endpoint",
    "TOKEN_ENV",
    "ReconnectPolicy",
    "Target",
    "parse_endpoints",
    "parse_target",
    "token_metadata",
]

DEFAULT_ENDPOINT: Final = "127.0.0.1:50051"
"""Where msgbusd listens unless configured otherwise."""

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds allowed for connecting and for each unary call, unless the caller says otherwise."""

DEFAULT_MAX_RECEIVE_BYTES: Final = 64 * 1024 * 1024
"""The largest response the client receives unless connected with ``max_receive_bytes``.

msgbusd caps ``--max-payload-bytes`` so that any message it accepts, with its headers and
envelope, fits in this; a packed page stays well below it.
"""

TOKEN_ENV: Final = "MSGBUS_TOKEN"
"""The environment variable the ``msgbus`` CLI reads a bearer token from (like ``--token``)."""

_AUTHORIZATION: Final = "authorization"
"""The metadata key msgbusd reads a bearer token from (gRPC metadata keys are lowercase)."""
# msgbusd's rule for a token name (msgbus_server.tokens.NAME_PATTERN; tests/test_token.py
# checks the two agree). The secret is what gRPC metadata can carry: visible ASCII, no spaces.
_TOKEN_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN_SECRET: Final = re.compile(r"[\x21-\x7e]{1,1024}")
_TOKEN_FORM: Final = "NAME.SECRET, as 'python -m msgbus_server.tokens add FILE NAME' prints it"

_DEFAULT_PORT: Final = 50051
_UNIX: Final = "unix:"
_SCHEME_PORTS: Final = {"http": 80, "https": 443}

# host:port where host is a name, an IPv4 address or a bracketed IPv6 address.
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[^:/\[\]\s]+)(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed endpoint: where to connect and whether the scheme asked for TLS."""

    host: str
    port: int
    tls: bool
    unix_path: str | None = None
    """The socket path of a ``unix:`` target (its host is then empty and its port 0)."""

    @property
    def address(self) -> str:
        """``host:port`` (or ``unix:PATH``), the form grpc dials."""
        if self.unix_path is not None:
            return f"{_UNIX}{self.unix_path}"
        return f"{self.host}:{self.port}"


def parse_target(target: str) -> Target:
    """Parse ``host:port``, ``http://host:port``, ``https://host:port`` or ``unix:PATH``.

    These are the forms the original Go (``host:port``) and Rust (``http://...``) SDKs accept.
    A bare host gets port 50051; a URL without a port gets its scheme's default port.
    ``https`` asks for TLS; the other forms are plaintext unless TLS options are given.
    ``unix:PATH`` or ``unix:///absolute/path`` is msgbusd's Unix socket (``--listen unix:...``).

    Raises:
        ConfigurationError: the target is malformed.
    """
    text = target.strip()
    if text.startswith(_UNIX):
        return _unix_target(target, text[len(_UNIX) :])
    tls = False
    default_port = _DEFAULT_PORT
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in _SCHEME_PORTS:
            raise ConfigurationError(
                f"invalid endpoint {target!r}: scheme must be http or https, not {scheme!r}"
            )
        tls = scheme == "https"
        default_port = _SCHEME_PORTS[scheme]
        text = text.rstrip("/")
        if "/" in text:
            raise ConfigurationError(f"invalid endpoint {target!r}: a path is not allowed")
    match = _HOST_PORT.match(text)
    if match is None:
        raise ConfigurationError(f"invalid endpoint {target!r}: expected host:port")
    port = int(match["port"]) if match["port"] is not None else default_port
    if not 0 < port < 65536:
        raise ConfigurationError(f"invalid endpoint {target!r}: port must be 1-65535")
    return Target(host=match["host"], port=port, tls=tls)


def _unix_target(target: str, path: str) -> Target:
    """The target of a Unix socket: ``unix:PATH``, or ``unix://`` and an absolute path."""
    if path.startswith("//"):
        path = path[2:]
        if not path.startswith("/"):
            raise ConfigurationError(
                f"invalid endpoint {target!r}: unix:// takes an absolute path "
                "(unix:///run/msgbus/msgbusd.sock)"
            )
    if not path:
        raise ConfigurationError(f"invalid endpoint {target!r}: no socket path after unix:")
    return Target(host="", port=0, tls=False, unix_path=path)


class Endpoint(NamedTuple):
    """One endpoint of a client's target: as given (stripped), and parsed."""

    text: str
    target: Target


def parse_endpoints(target: str | Sequence[str]) -> tuple[Endpoint, ...]:
    """Parse a client's target: one endpoint, a comma-separated string, or a sequence of them.

    Each endpoint takes any form :func:`parse_target` accepts. A string without a comma is one
    endpoint, parsed exactly as :func:`parse_target` does.

    Raises:
        ConfigurationError: no endpoint is given, or one is malformed or empty (the message
            names it, and its place in the list when there are several).
    """
    texts = target.split(",") if isinstance(target, str) else list(target)
    if not texts:
        raise ConfigurationError("no endpoint given: the target must name at least one endpoint")
    endpoints: list[Endpoint] = []
    for number, text in enumerate(texts, start=1):
        where = f" (endpoint {number} of {len(texts)} in {target!r})" if len(texts) > 1 else ""
        if not isinstance(text, str):
            raise ConfigurationError(f"invalid endpoint {text!r:.80}: expected a string{where}")
        try:
            endpoints.append(Endpoint(text.strip(), parse_target(text)))
        except ConfigurationError as error:
            if not where:
                raise
            raise ConfigurationError(error.message + where) from None
    return tuple(endpoints)


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a bearer token: ``authorization: Bearer NAME.SECRET``.

    ``None`` carries nothing. The error never repeats the token, which is a secret.

    Raises:
        ConfigurationError: ``token`` is not ``NAME.SECRET`` with a name of 1-64 of
            ``A-Z a-z 0-9 _ -`` and a secret of 1-1024 visible ASCII characters.
    """
    if token is None:
        return ()
    if not isinstance(token, str):
        raise ConfigurationError(
            f"token must be a str, {_TOKEN_FORM}; got a {type(token).__name__}", field="token"
        )
    name, dot, secret = token.partition(".")
    if not dot:
        raise ConfigurationError(f"token must be {_TOKEN_FORM}: it has no '.'", field="token")
    if not _TOKEN_NAME.fullmatch(name):
        raise ConfigurationError(
            f"token must be {_TOKEN_FORM}: its name (before the first '.') must be 1-64 of "
            f"A-Z a-z 0-9 _ - (it has {len(name)} characters)",
            field="token",
        )
    if not _TOKEN_SECRET.fullmatch(secret):
        raise ConfigurationError(
            f"token must be {_TOKEN_FORM}: its secret (after the first '.') must be 1-1024 "
            f"visible ASCII characters without spaces (it has {len(secret)} characters)",
            field="token",
        )
    return ((_AUTHORIZATION, f"Bearer {token}"),)


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How a reconnecting subscription waits between attempts to reopen its stream.

    Waits grow exponentially with full jitter (a random wait between 0 and
    ``min(max_delay, initial_delay * 2 ** (attempt - 1))``), so many subscribers that lose
    the same daemon do not come back in lockstep. Attempts count consecutive failures: every
    delivered message resets the count and the backoff.

    Attributes:
        initial_delay: the upper bound of the first wait, in seconds.
        max_delay: the cap on any single wait, in seconds.
        max_attempts: give up (re-raising the last error) after this many consecutive failed
            attempts; ``None`` retries forever.
    """

    initial_delay: float = 0.1
    max_delay: float = 5.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("reconnect delays must not be negative")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1 (or None for unlimited)")

    def wait_strategy(self) -> tenacity.wait.wait_base:
        """The tenacity wait strategy for this policy."""
        return tenacity.wait_random_exponential(multiplier=self.initial_delay, max=self.max_delay)

    def stop_strategy(self) -> tenacity.stop.stop_base:
        """The tenacity stop strategy for this policy."""
        if self.max_attempts is None:
            return tenacity.stop_never
        return tenacity.stop_after_attempt(self.max_attempts)


NO_RECONNECT: Final = ReconnectPolicy(initial_delay=0.0, max_delay=0.0, max_attempts=1)


def resolve_reconnect(reconnect: bool | ReconnectPolicy) -> ReconnectPolicy:
    """``True`` → the default policy, ``False`` → a single attempt, a policy → itself."""
    if isinstance(reconnect, ReconnectPolicy):
        return reconnect
    return ReconnectPolicy() if reconnect else NO_RECONNECT


def channel_options(
    tls: TlsConfig | None,
    reconnect_cap: float,
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
) -> list[tuple[str, str | int]]:
    """The grpc channel options common to both clients.

    Raises:
        ConfigurationError: ``max_receive_bytes`` is not a positive int that grpc can take.
    """
    if not 0 < max_receive_bytes < 2**31:
        raise ConfigurationError(
            f"max_receive_bytes must be between 1 and {2**31 - 1}, got {max_receive_bytes}"
        )
    options: list[tuple[str, str | int]] = [
        # The daemon's payload limit is configurable (default 1 MiB, at most what fits in
        # DEFAULT_MAX_RECEIVE_BYTES); never let grpc's own 4 MiB default be the thing that
        # rejects a large message or a packed page.
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", DEFAULT_MAX_RECEIVE_BYTES),
        # grpc's own reconnect backoff starts at 1 s and grows to 120 s; a daemon restarted on
        # the same port would then stay unreachable long after it is back. Keep the channel's
        # backoff short and let the subscription's policy do the pacing. (Not
        # grpc.min_reconnect_backoff_ms: grpc uses it as the time one connection attempt may
        # take, TLS handshake included, and 100 ms failed live daemons on a loaded machine or
        # across a slow link, which a client of several endpoints would then fail over from.)
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", max(100, int(reconnect_cap * 1000))),
        ("grpc.enable_retries", 0),
    ]
    if tls is not None:
        options.extend(tls.channel_options())
    return options
