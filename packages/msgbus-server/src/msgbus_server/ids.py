"""Server-assigned message ids."""

from __future__ import annotations

import os
from typing import Final

IDS_PER_DRAW: Final = 256
"""Ids made from one `os.urandom` call (16 random bytes each): about 22 KiB of ids held."""

_pool: list[str] = []
"""Ids drawn and not handed out yet. Only `list.pop` and `list.extend` touch it, each atomic
under the GIL, so threads need no lock; two threads that find it empty both refill it."""


def new_id() -> str:
    """A server-assigned message id: a random UUID v4, canonical lowercase form.

    Same bits and text as `str(uuid.uuid4())`: 122 bits from `os.urandom` per id, the version
    and variant bits set by hand. The ids are drawn IDS_PER_DRAW at a time, which saves the
    publish path a system call per message and, more, the GIL hand-off around it: `os.urandom`
    releases the GIL, and on a busy daemon getting it back waits for the writer or reader
    threads. Each id is still handed out once only, and a forked child starts an empty pool
    (`_forget_pool`), so no id is shared with its parent.
    """
    try:
        return _pool.pop()
    except IndexError:
        _pool.extend(_draw(IDS_PER_DRAW))
        return _pool.pop()


def _draw(count: int) -> list[str]:
    """`count` fresh ids from one `os.urandom` call."""
    raw = bytearray(os.urandom(16 * count))
    # Version 4 in the high nibble of byte 6, variant 10 in the top bits of byte 8, per id.
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])
    text = raw.hex()
    ids = []
    for start in range(0, 32 * count, 32):
        t = text[start : start + 32]
        ids.append(f"{t[:8]}-{t[8:12]}-{t[12:16]}-{t[16:20]}-{t[20:]}")
    return ids


def _forget_pool() -> None:
    """In a forked child: drop the ids inherited from the parent, which may hand them out."""
    _pool.clear()


os.register_at_fork(after_in_child=_forget_pool)
