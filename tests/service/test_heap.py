"""The heap: long-lived tables stay out of the collector's walks, and what waits for the
flusher or a sink is nothing the collector has to walk either."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import rules
from service.events.queue import EventQueue, Recorder
from service.events.records import batch_of
from service.events.sessions import Sessions
from service.heap import freeze_start_up
from tests.rules.helpers import DEMO_PATH


@pytest.fixture
def frozen_afterwards() -> Iterator[None]:
    """Each test freezes; unfreeze afterwards so the next test's collector sees everything."""
    yield
    gc.unfreeze()


def walked() -> set[int]:
    """The ids of every object the collector walks (frozen ones are not among them)."""
    return {id(item) for item in gc.get_objects()}


@pytest.mark.usefixtures("frozen_afterwards")
def test_sessions_tables_frozen_at_start_up_stay_out_of_every_collection() -> None:
    """Session shards made empty (untracked) and frozen at start-up are never walked, however
    many sessions they come to hold; a plain gc.freeze() leaves them to be walked."""
    frozen, plain = Sessions(ttl=60, limit=10_000), Sessions(ttl=60, limit=10_000)
    freeze_start_up(frozen.shards)
    gc.freeze()  # what start-up did before: the empty shards of `plain` are left out
    for number in range(2_000):
        frozen.touch(f"v{number}", 0.0)
        plain.touch(f"v{number}", 0.0)
    gc.collect()  # it untracks `plain`'s shards, until the next session put in one:
    for number in range(2_000, 2_200):
        frozen.touch(f"v{number}", 0.0)
        plain.touch(f"v{number}", 0.0)
    ids = walked()
    assert [] == [shard for shard in frozen.shards if id(shard) in ids]
    assert any(id(shard) in ids for shard in plain.shards)


@pytest.mark.usefixtures("frozen_afterwards")
def test_queued_exposures_and_built_batches_leave_nothing_to_walk() -> None:
    """After one collection, the queue's exposures (nested contexts included) and the built
    batch's lines are untracked: a backlog costs the collector nothing per event."""
    ruleset = rules.load(DEMO_PATH.read_bytes())
    context = {"geo": {"country": "FR"}, "device": "phone"}
    decisions = list(ruleset.decide_all("v", context).values())
    queue = EventQueue(batch_size=10**6, capacity=10**6, on_full=lambda items, events: None)
    sessions = Sessions(ttl=60, limit=10**6)
    recorder = Recorder(queue, sessions)
    freeze_start_up(sessions.shards)
    for number in range(500):
        recorder.expose_all(f"visitor-{number}", decisions, dict(context), "ua", None, "r")
    batch = batch_of(queue.items, 0, "p")
    gc.collect()
    gc.collect()  # an item's tuple of outcomes is untracked in one pass, the item in the next
    assert [] == [item for item in queue.items if gc.is_tracked(item)]
    assert (False, False) == (gc.is_tracked(batch.lines), gc.is_tracked(batch.kinds))
