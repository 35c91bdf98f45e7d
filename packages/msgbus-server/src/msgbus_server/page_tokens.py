"""Opaque keyset page tokens: the key of the last entry a page answered, for the next page.

ListPeerSyncStates and ListCursors page by a key of strings; the token is that key as JSON in
URL-safe base64, so a client passes it back unchanged and never reads it.
"""

from __future__ import annotations

import base64
import json

from msgbus_core.errors import InvalidArgumentError


def key_token(key: tuple[str, ...]) -> str:
    """The opaque token of the page after the entry with key `key`."""
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def key_after(token: str, parts: int) -> tuple[str, ...]:
    """The key of `parts` strings a `key_token` names; INVALID_ARGUMENT naming page_token if not."""
    try:
        key = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError):
        key = None
    if not (isinstance(key, list) and len(key) == parts and all(isinstance(k, str) for k in key)):
        raise InvalidArgumentError(
            "page_token is malformed: pass a next_page_token unchanged", field="page_token"
        )
    return tuple(key)


__all__ = ["key_after", "key_token"]
