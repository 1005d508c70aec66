"""Sharing the one event loop: work too long for one turn (building a batch of event records,
loading or taking apart a ruleset) runs in slices and gives way to requests in between.

How it gives way matters as much as how long a slice is. ``await asyncio.sleep(0)`` puts the
task straight back on the ready queue, ahead of the requests whose bytes arrived during the
slice: the loop reads those bytes on its next turn, and the handlers they wake run only on
the turn after, behind the task's next slice. Each such request then waits out two slices.
A timer that is already due runs after the I/O the loop has just read, on both asyncio's loop
and uvloop, so the requests it woke go first and wait out at most the slice they arrived in.
"""

from __future__ import annotations

import asyncio

__all__ = ["SLICE_SECONDS", "give_way"]

#: The longest a slice holds the event loop. A request that arrives during a slice waits for
#: what is left of it: with 5,000 requests/s and a batch of records being built, 2 ms slices
#: put the p99 of single decisions near 5 ms on the benchmark machine, 1 ms ones near 4 ms,
#: for 1-6 % of the pipeline's top throughput.
SLICE_SECONDS = 0.001

#: Shorter than any clock tick of either loop: the timer is due at once, so an idle loop
#: resumes the task at once; it only decides the order, never adds a wait.
_DUE_AT_ONCE = 1e-6


async def give_way() -> None:
    """Let what arrived during a slice (requests, above all) run before the next slice."""
    await asyncio.sleep(_DUE_AT_ONCE)
