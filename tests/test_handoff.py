"""The queue between the run's stages: order, ending, back-pressure with refill at half, weights,
consumers gone, and a cancelled consumer passing its wake-up on. No sleeps: tasks are stepped
with ``wait_all_tasks_blocked``."""

from __future__ import annotations

import anyio
import pytest

from pipeline.handoff import Handoff

pytestmark = pytest.mark.anyio


async def test_items_come_out_in_order_then_none_once_the_producer_is_done() -> None:
    queue = Handoff[int](8)
    for i in range(5):
        await queue.put(i)
    queue.producer_done()
    assert [await queue.get() for _ in range(6)] == [0, 1, 2, 3, 4, None]


async def test_a_waiting_consumer_gets_the_next_item_and_none_at_the_end() -> None:
    queue = Handoff[str](4)
    got: list[str | None] = []

    async def consume() -> None:
        while (item := await queue.get()) is not None:
            got.append(item)
        got.append(None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        await queue.put("a")
        await anyio.wait_all_tasks_blocked()
        assert got == ["a"]
        queue.producer_done()
    assert got == ["a", None]


async def test_a_full_queue_holds_its_producer_until_drained_to_half() -> None:
    queue = Handoff[int](4)
    put: list[int] = []

    async def produce() -> None:
        for i in range(8):
            await queue.put(i)
            put.append(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await anyio.wait_all_tasks_blocked()
        assert put == [0, 1, 2, 3]  # full
        assert await queue.get() == 0
        await anyio.wait_all_tasks_blocked()
        assert put == [0, 1, 2, 3], "one row taken: still above half, the producer sleeps on"
        assert await queue.get() == 1
        await anyio.wait_all_tasks_blocked()
        assert put == [0, 1, 2, 3, 4, 5], "drained to half: refilled in one turn"
        assert [await queue.get() for _ in range(6)] == [2, 3, 4, 5, 6, 7]


async def test_weights_bound_the_load_and_an_oversized_item_goes_in_alone() -> None:
    queue = Handoff[str](8)
    await queue.put("image", weight=6)
    await queue.put("row")
    assert queue.load == 7
    with anyio.move_on_after(0) as scope:  # would need 6 more: does not fit
        await queue.put("image 2", weight=6)
    assert scope.cancelled_caught and len(queue) == 2
    assert await queue.get() == "image"
    assert await queue.get() == "row"
    await queue.put("huge", weight=100)  # heavier than the capacity: in, once the queue is empty
    assert queue.load == 100


async def test_producers_stop_once_every_consumer_is_gone() -> None:
    queue = Handoff[int](2, consumers=2)
    await queue.put(1)
    await queue.put(2)
    outcome: list[str] = []

    async def produce() -> None:
        try:
            await queue.put(3)
        except anyio.BrokenResourceError:
            outcome.append("broken")

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await anyio.wait_all_tasks_blocked()
        queue.consumer_done()
        await anyio.wait_all_tasks_blocked()
        assert outcome == [], "one consumer is still there"
        queue.consumer_done()
    assert outcome == ["broken"]
    with pytest.raises(anyio.BrokenResourceError):
        await queue.put(4)


async def test_a_consumer_cancelled_as_it_is_woken_loses_no_row() -> None:
    queue = Handoff[str](4)
    got: list[str | None] = []
    first = anyio.CancelScope()

    async def consume(scope: anyio.CancelScope) -> None:
        with scope:
            got.append(await queue.get())

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume, first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(consume, anyio.CancelScope())
        await anyio.wait_all_tasks_blocked()
        await queue.put("row")  # wakes the first consumer...
        first.cancel()  # ...which is cancelled before it runs: it takes the row, or hands the wake-up on
        await anyio.wait_all_tasks_blocked()
        queue.producer_done()  # whoever did not get the row ends
    assert got.count("row") == 1 and len(queue) == 0


async def test_a_cancelled_waiting_consumer_leaves_no_stale_wake_up() -> None:
    queue = Handoff[int](4)
    scope = anyio.CancelScope()

    async def consume() -> None:
        with scope:
            await queue.get()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
    await queue.put(7)
    assert await queue.get() == 7


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Handoff[int](0)
