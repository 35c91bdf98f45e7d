"""The daemon-wide read gate: partial grants, waiting in order, reclaiming stalled streams."""

from __future__ import annotations

import asyncio

import pytest

from msgbus_server.read_gate import ReadGate


class Unsent:
    """A stalled stream's unsent rest, as the service's chunk keeps it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reclaimed = False

    def reclaim(self) -> int:
        self.reclaimed = True
        size, self.size = self.size, 0
        return size


async def test_grants_what_is_free_down_to_one_byte_and_waits_when_full() -> None:
    gate = ReadGate(10)
    assert await gate.reserve(8) == 8
    assert await gate.reserve(8) == 2  # what is left, not nothing
    waiting = asyncio.ensure_future(gate.reserve(8))
    await asyncio.sleep(0)
    assert not waiting.done()
    gate.release(3)
    assert await waiting == 3
    assert gate.held == 10


async def test_waiters_are_served_in_order() -> None:
    gate = ReadGate(4)
    await gate.reserve(4)
    order: list[int] = []

    async def reader(n: int) -> None:
        await gate.reserve(4)
        order.append(n)

    readers = [asyncio.ensure_future(reader(n)) for n in range(3)]
    await asyncio.sleep(0)
    for _ in range(3):
        gate.release(4)
        await asyncio.sleep(0.01)
    await asyncio.gather(*readers)
    assert order == [0, 1, 2]


async def test_an_oversized_read_runs_over_the_cap_until_it_is_sent() -> None:
    gate = ReadGate(10)
    granted = await gate.reserve(10)
    gate.settle(granted, 25)  # one message larger than the grant: it is read alone
    assert gate.held == 25
    waiting = asyncio.ensure_future(gate.reserve(5))
    await asyncio.sleep(0)
    gate.release(10)
    await asyncio.sleep(0)
    assert not waiting.done()  # still over the cap
    gate.release(10)
    assert await waiting == 5


async def test_a_stalled_streams_unsent_rest_is_reclaimed_for_a_waiting_reader() -> None:
    gate = ReadGate(10)
    await gate.reserve(10)
    gate.release(2)  # the stream sent one message, then its client stopped reading
    stalled = Unsent(8)
    gate.stall(stalled)
    assert await gate.reserve(10) == 2  # what is free first
    assert await asyncio.wait_for(gate.reserve(10), 1) == 8  # then what the stall gives up
    assert stalled.reclaimed
    moving = Unsent(1)
    gate.stall(moving)
    gate.resume(moving)  # sending again: no longer reclaimable
    waiting = asyncio.ensure_future(gate.reserve(1))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert not moving.reclaimed
    waiting.cancel()


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    gate = ReadGate(4)
    await gate.reserve(4)
    first = asyncio.ensure_future(gate.reserve(4))
    second = asyncio.ensure_future(gate.reserve(4))
    await asyncio.sleep(0)
    gate.release(4)  # first's turn...
    first.cancel()  # ...but it is gone before it resumes
    assert await asyncio.wait_for(second, 1) == 4
    with pytest.raises(asyncio.CancelledError):
        await first


def test_a_gate_needs_a_capacity() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        ReadGate(0)
