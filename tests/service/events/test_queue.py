"""The queue on its own: it counts events, wakes the flusher at a batch, hands over at capacity."""

from __future__ import annotations

from typing import Any

from service.events.queue import EventQueue


def test_the_queue_counts_events_not_items_and_wakes_at_a_batch() -> None:
    """An item of many exposures counts as many events; a batch's worth sets the wake event."""
    queue = EventQueue(batch_size=5, capacity=100, on_full=lambda items, events: None)
    queue.put({"n": 1})
    queue.put(("item",), events=3)  # type: ignore[arg-type]
    assert (4, False) == (len(queue), queue.wake.is_set())
    queue.put({"n": 2})
    assert (5, True) == (len(queue), queue.wake.is_set())


def test_take_empties_the_queue_and_says_how_many_events() -> None:
    """take() gives every item and the event count, and leaves the queue empty."""
    queue = EventQueue(batch_size=100, capacity=100, on_full=lambda items, events: None)
    for number in range(3):
        queue.put({"n": number}, events=2)
    items, events = queue.take()
    assert (3, 6, 0, []) == (len(items), events, len(queue), queue.items)


def test_at_capacity_the_content_is_handed_over_whole() -> None:
    """Reaching capacity hands every item and its event count to on_full at once."""
    handed: list[tuple[list[Any], int]] = []
    queue = EventQueue(
        batch_size=2, capacity=4, on_full=lambda items, events: handed.append((items, events))
    )
    for number in range(9):
        queue.put({"n": number})
    assert [4, 4] == [events for _, events in handed]
    assert [0, 1, 2, 3] == [item["n"] for item in handed[0][0]]
    assert 1 == len(queue)
