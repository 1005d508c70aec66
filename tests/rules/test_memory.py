"""A ruleset is freed by reference counting alone, so replacing one leaks nothing even when
the cyclic garbage collector is off or the heap is frozen (as the service does)."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator

import pytest

import rules
from bench.generate import generate
from tests.rules.helpers import DEMO_PATH


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize(
    "data",
    [
        DEMO_PATH.read_bytes(),
        json.dumps(generate(300)).encode(),
        b'{"format": 1, "flags": {"x": 1}}',
    ],
    ids=["demo", "generated", "invalid"],
)
def test_loading_and_dropping_a_ruleset_leaves_no_cycles(
    data: bytes, saved_garbage: list[object]
) -> None:
    """After a ruleset is loaded, used and dropped, the collector finds nothing to collect."""
    try:
        ruleset = rules.load(data)
        ruleset.decide_all("visitor", {"geo": {"country": "FR"}, "device": "phone"})
        del ruleset
    except rules.InvalidRuleset:
        pass
    gc.collect()
    assert [] == [type(thing).__name__ for thing in saved_garbage]
