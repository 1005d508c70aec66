"""The engine tracking code's window and its JavaScript."""

from __future__ import annotations

import gc
import time

import rules
from service.visitors.recent import KEPT, NOTE, WINDOW, RecentExposures, assignment, tracking_code
from tests.service.conftest import DEMO

RULESET = rules.load(DEMO.read_bytes())


def _experiment_decision() -> rules.Decision:
    for number in range(1000):
        decision = RULESET.decide("new_checkout", f"v{number}", {"account_id": f"a{number}"})
        if decision.rule_type == "experiment":
            return decision
    raise AssertionError("no experiment exposure")


async def test_only_the_last_seconds_count() -> None:
    """An assignment older than the window is left out; targeted deliveries never count."""
    recent = RecentExposures(None)
    decision = _experiment_decision()
    recent.note("v", [decision, RULESET.decide("search_ranking", "v", {})])
    assert [decision.experiment_id] == [a[1] for a in await recent.assignments("v")]
    recent.local["v"] = (time.time() - WINDOW - 1, 1, 2)
    assert [] == await recent.assignments("v")
    recent.sweep()
    assert "v" not in recent.local


def test_keys_stand_in_for_missing_ids_as_json_strings() -> None:
    """Integer ids are numbers; a rule or variation without an id is its key, quoted."""
    code = tracking_code([(1.0, "checkout_ab", "on"), (2.0, 9001, 1), (3.0, 9001, 1)])
    assert (
        "window.kameleoonQueue=window.kameleoonQueue||[];"
        'window.kameleoonQueue.push([\'Experiments.assignVariation\',"checkout_ab","on"]);'
        "window.kameleoonQueue.push(['Experiments.trigger',\"checkout_ab\",true]);"
        "window.kameleoonQueue.push(['Experiments.assignVariation',9001,1]);"
        "window.kameleoonQueue.push(['Experiments.trigger',9001,true]);"
    ) == code
    decision = _experiment_decision()
    assert (decision.experiment_id, decision.variation_id) == assignment(decision, 0.0)[1:]


def test_sweep_stops_at_the_first_live_visitor_and_notes_are_bounded() -> None:
    """Expired visitors at the front go; a visitor noted again moves behind them; a visitor
    decided over and over keeps only the newest notes."""
    recent = RecentExposures(None)
    decision = _experiment_decision()
    recent.note("old", [decision])
    recent.note("renewed", [decision])
    recent.local["old"] = (time.time() - WINDOW - 1, 1, 2)
    recent.local["renewed"] = (time.time() - WINDOW - 1, 1, 2)
    recent.note("renewed", [decision])  # moves to the end with a fresh note
    recent.sweep()
    assert ["renewed"] == list(recent.local)
    recent.note("busy", [decision] * 200)
    assert KEPT == len(recent.local["busy"]) / NOTE


def test_notes_leave_the_garbage_collector_nothing_to_walk() -> None:
    """A visitor's notes are plain tuples the collector stops tracking: a window of
    thousands of visitors adds nothing to its collections (lists made them 25-40 ms)."""
    recent = RecentExposures(None)
    decision = _experiment_decision()
    recent.note("once", [decision])
    recent.note("twice", [decision])
    recent.note("twice", [decision])
    gc.collect()
    assert [False, False] == [gc.is_tracked(notes) for notes in recent.local.values()]


def test_noting_one_decision_keeps_what_noting_it_among_others_keeps() -> None:
    """``note_one`` leaves a visitor's notes as ``note`` does, for a new visitor, a returning
    one and one past the ``KEPT`` bound, and queues the same notes for a shared store."""
    decision = _experiment_decision()
    one, many = RecentExposures(None), RecentExposures(None)
    one.store = many.store = object()  # type: ignore[assignment]  # only pending is read here
    for number in range(KEPT + 3):
        for visitor in ("steady", f"new-{number}"):
            one.note_one(visitor, decision)
            many.note(visitor, (decision,))

    def times_dropped(notes: tuple[float | int | str, ...]) -> list[float | int | str]:
        return [value for index, value in enumerate(notes) if index % NOTE]

    assert list(many.local) == list(one.local)
    assert [times_dropped(notes) for notes in many.local.values()] == [
        times_dropped(notes) for notes in one.local.values()
    ]
    assert KEPT * NOTE == len(one.local["steady"])
    assert [(v, n[1:]) for v, n in many.pending] == [(v, n[1:]) for v, n in one.pending]
