"""How the fetch loop and a writer meet (consumer/sink.py's slot): what arrives while a
writer writes is merged into its next batch, in order, and never beyond the cap."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from consumer.sink import ParsedBatch, _Slot

P0, P2 = TopicPartition("t", 0), TopicPartition("t", 2)


def fetch(offsets: dict[TopicPartition, int], *names: str) -> ParsedBatch:
    """A parsed fetch; its 'events' are names, enough to follow order and merging."""
    events: list[Any] = list(names)
    return ParsedBatch(dict(offsets), [1] * len(names), len(names), events, [])


async def taken(slot: _Slot) -> ParsedBatch:
    """What the writer takes next; there must be something."""
    batch = await asyncio.wait_for(slot.take(), 1)
    assert batch is not None
    return batch


async def test_fetches_that_arrive_while_the_writer_writes_become_its_next_batch_in_order():
    slot = _Slot(cap=100)
    await slot.put(fetch({P0: 3}, "a", "b"))
    await slot.put(fetch({P0: 5, P2: 8}, "c", "d"))
    await slot.put(fetch({P2: 9}, "e"))
    batch = await taken(slot)
    assert batch.events == ["a", "b", "c", "d", "e"]
    assert batch.count == 5 and len(batch.timestamps) == 5
    assert batch.offsets == {P0: 5, P2: 9}
    assert slot.count == 0


async def test_a_partition_fetched_again_from_an_earlier_offset_does_not_move_its_commit_back():
    # Revoked and assigned back before the writer took the slot: the partition is read again
    # from its committed offset. Everything before the higher offset is in the batch.
    slot = _Slot(cap=100)
    await slot.put(fetch({P0: 50}, "x"))
    await slot.put(fetch({P0: 20}, "y"))
    assert (await taken(slot)).offsets == {P0: 50}


async def test_the_writer_waits_for_a_fetch_and_the_fetch_loop_waits_for_room():
    slot = _Slot(cap=4)
    taking = asyncio.create_task(slot.take())
    await asyncio.sleep(0.01)
    assert not taking.done()  # nothing to write yet
    await slot.put(fetch({P0: 3}, "a", "b", "c"))
    first = await asyncio.wait_for(taking, 1)
    assert first is not None and first.events == ["a", "b", "c"]

    await slot.put(fetch({P0: 6}, "d", "e", "f"))
    assert await asyncio.wait_for(slot.room(1), 1) == 1
    putting = asyncio.create_task(slot.put(fetch({P0: 8}, "g", "h")))  # 3 + 2 > cap
    await asyncio.sleep(0.01)
    assert not putting.done()
    assert (await taken(slot)).events == ["d", "e", "f"]
    await asyncio.wait_for(putting, 1)
    assert (await taken(slot)).events == ["g", "h"]


async def test_the_fetch_loop_asks_for_no_more_than_the_slot_has_room_for():
    slot = _Slot(cap=4)
    await slot.put(fetch({P0: 3}, "a", "b", "c"))
    assert await asyncio.wait_for(slot.room(1), 1) == 1
    room = asyncio.create_task(slot.room(2))
    await asyncio.sleep(0.01)
    assert not room.done()
    await slot.take()
    assert await asyncio.wait_for(room, 1) == 4


async def test_a_closed_slot_gives_what_it_holds_then_none():
    slot = _Slot(cap=10)
    await slot.put(fetch({P0: 1}, "last"))
    await slot.close()
    assert (await taken(slot)).events == ["last"]
    assert await asyncio.wait_for(slot.take(), 1) is None
