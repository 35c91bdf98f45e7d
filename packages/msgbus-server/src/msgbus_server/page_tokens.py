"""Keyset pages: the entries of one page and the opaque token of the next.

ListPeerSyncStates and ListCursors page by a key of strings; the token is the key of the last
entry a page answered, as JSON in URL-safe base64, so a client passes it back unchanged and
never reads it. A page holds at most its count and about a byte budget of entries, so it stays
below what clients receive.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from msgbus_core.errors import InvalidArgumentError

T = TypeVar("T")


def encode(parts: Sequence[object]) -> str:
    """The opaque token of JSON-serialisable `parts`: JSON in URL-safe base64."""
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode()


def decoded(token: str) -> Any:
    """What an `encode` token holds (any JSON value: the caller checks its shape), or None."""
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError):
        return None


def malformed() -> InvalidArgumentError:
    """The one error for a page token this daemon did not hand out."""
    return InvalidArgumentError(
        "page_token is malformed: pass a next_page_token unchanged", field="page_token"
    )


def key_token(key: tuple[str, ...]) -> str:
    """The opaque token of the page after the entry with key `key`."""
    return encode(key)


def key_after(token: str, parts: int) -> tuple[str, ...]:
    """The key of `parts` strings a `key_token` names; INVALID_ARGUMENT naming page_token if not."""
    key = decoded(token)
    if not (isinstance(key, list) and len(key) == parts and all(key_part(k) for k in key)):
        raise malformed()
    return tuple(key)


def key_part(part: object) -> bool:
    """Whether a decoded token part can be a key's string.

    Keys are names, topics and origin keys, which are valid UTF-8 without NUL: a JSON escape of
    a lone surrogate or of NUL in a forged token would otherwise fail only in the store.
    """
    if not isinstance(part, str) or "\x00" in part:
        return False
    try:
        part.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def keyset_page(
    items: Sequence[T],
    limit: int,
    to_pb: Callable[[T], Any],
    key: Callable[[T], tuple[str, ...]],
    budget_bytes: int,
) -> tuple[list[Any], str]:
    """The first `limit` of `items` as messages, within about `budget_bytes` (at least one).

    `items` is read one beyond the page (`limit + 1`) to tell whether more follow. Returns the
    messages and the token of the next page: empty when `items` held nothing more.
    """
    page: list[Any] = []
    size = 0
    for count, item in enumerate(items[:limit]):
        entry = to_pb(item)
        size += entry.ByteSize() + 8
        if count and size > budget_bytes:
            break
        page.append(entry)
    token = key_token(key(items[len(page) - 1])) if len(page) < len(items) else ""
    return page, token


__all__ = ["decoded", "encode", "key_after", "key_part", "key_token", "keyset_page", "malformed"]
