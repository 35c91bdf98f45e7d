"""Server-assigned message ids."""

from __future__ import annotations

import os


def new_id() -> str:
    """A server-assigned message id: a random UUID v4, canonical lowercase form.

    Same bits and text as `str(uuid.uuid4())` at a third of the cost, which matters on the
    publish path: the version and variant bits are set by hand on 16 random bytes.
    """
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
