"""Server-assigned message ids: drawn in pools, still unique random UUID v4s."""

from __future__ import annotations

import os
import threading
import uuid

from msgbus_server import ids
from msgbus_server.ids import IDS_PER_DRAW, new_id


def test_ids_are_canonical_uuid4_text() -> None:
    for _ in range(IDS_PER_DRAW * 2 + 3):  # across draws
        value = new_id()
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_ids_are_unique_across_many_draws() -> None:
    values = [new_id() for _ in range(IDS_PER_DRAW * 40)]
    assert len(set(values)) == len(values)


def test_every_bit_but_version_and_variant_varies() -> None:
    """The random bits come from os.urandom for every id, not only the first of a draw."""
    values = [uuid.UUID(new_id()).int for _ in range(IDS_PER_DRAW * 4)]
    fixed_ones = values[0]
    fixed_zeros = ~values[0]
    for value in values[1:]:
        fixed_ones &= value
        fixed_zeros &= ~value
    mask = (1 << 128) - 1
    # Only the 4 version bits (0100) and the 2 variant bits (10) are the same in every id.
    assert bin(fixed_ones & mask).count("1") + bin(fixed_zeros & mask).count("1") == 6


def test_threads_never_get_the_same_id() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        for _ in range(IDS_PER_DRAW * 5):
            out.append(new_id())

    threads = [threading.Thread(target=draw, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = [value for out in results for value in out]
    assert len(set(values)) == len(values)


def test_a_forked_child_does_not_reuse_the_parents_pooled_ids() -> None:
    new_id()  # the pool now holds ids the parent will hand out
    assert ids._pool
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write_end, ",".join(new_id() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        childs = pipe.read().split(",")
    os.waitpid(child, 0)
    parents = [new_id() for _ in range(8)]
    assert len(childs) == 8
    assert not set(childs) & set(parents)
