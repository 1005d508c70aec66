"""Visitor sessions: the window, the limit, the order of activity."""

from __future__ import annotations

from service.events.sessions import NUMBER, SHARDS, Session, Sessions, outcomes_of

KEY = '["flag","rule","on",1,2,3]'
OTHER = '["flag","rule","off",1,2,4]'


def held(sessions: Sessions, visitor: str) -> Session:
    """The visitor's session, which the test expects to be there."""
    session = sessions.get(visitor)
    assert session is not None
    return session


def test_an_exposure_is_new_once_per_session() -> None:
    """The same key is new once; another key is new too; both stay in the session, in order."""
    sessions = Sessions(ttl=60, limit=10_000)
    first = sessions.expose("v", 0.0, KEY)
    assert first is not None
    assert None is sessions.expose("v", 1.0, KEY)
    assert first == sessions.expose("v", 2.0, OTHER)
    assert (KEY, OTHER) == outcomes_of(sessions.touch("v", 3.0))


def test_a_session_expires_after_its_last_activity() -> None:
    """Activity extends the window; after ttl idle seconds the next exposure opens a new one."""
    sessions = Sessions(ttl=60, limit=10_000)
    number = sessions.expose("v", 0.0, KEY)
    assert None is sessions.expose("v", 50.0, KEY)  # extended to 110
    assert None is sessions.expose("v", 100.0, KEY)
    renewed = sessions.expose("v", 161.0, KEY)
    assert renewed not in (None, number)


def test_a_repeat_within_a_hundredth_of_the_window_leaves_the_session_as_it_is() -> None:
    """A repeat soon after the last activity writes nothing; a later repeat extends the
    session, so it ends between 99% and 100% of the window after the last activity."""
    sessions = Sessions(ttl=100, limit=10_000)
    number = sessions.expose("v", 0.0, KEY)
    before = held(sessions, "v")
    assert None is sessions.expose("v", 0.5, KEY)
    assert before is held(sessions, "v")
    assert None is sessions.expose("v", 1.5, KEY)
    assert 101.5 == held(sessions, "v")[1]
    assert None is sessions.expose("v", 101.0, KEY)  # 99.5 s after the last write: same one
    assert number != sessions.expose("v", 202.0, KEY)


def test_a_number_or_expiry_never_passes_for_an_outcome() -> None:
    """Searching the whole session tuple finds outcomes only."""
    sessions = Sessions(ttl=60, limit=10_000)
    number = sessions.expose("v", 0.0, KEY)
    assert number is not None
    assert number == sessions.expose("v", 0.1, str(number))
    assert number == sessions.expose("v", 0.2, "60.0")


def test_expose_all_returns_only_outcomes_new_to_the_session() -> None:
    """Many decisions at once: the new ones in order, the repeats counted."""
    import rules
    from tests.rules.helpers import DEMO_PATH

    ruleset = rules.load(DEMO_PATH.read_bytes())
    decisions = list(ruleset.decide_all("visitor-7", {"geo": {"country": "FR"}}).values())
    ruled = [decision for decision in decisions if decision.rule is not None]
    assert ruled, "the demo has flags answered by rules"
    sessions = Sessions(ttl=60, limit=10_000)
    number, fresh, repeated = sessions.expose_all("visitor-7", 0.0, decisions)
    assert (tuple(d.outcome for d in ruled), 0) == (fresh, repeated)
    assert (number, (), len(ruled)) == sessions.expose_all("visitor-7", 0.1, decisions)
    assert (number, (), len(ruled)) == sessions.expose_all("visitor-7", 30.0, decisions)
    assert tuple(d.outcome for d in ruled) == outcomes_of(held(sessions, "visitor-7"))


def test_sweeping_forgets_expired_sessions_only() -> None:
    """Sweep removes the sessions idle for longer than ttl and keeps the others."""
    sessions = Sessions(ttl=60, limit=10_000)
    sessions.touch("old", 0.0)
    sessions.touch("recent", 30.0)
    sessions.touch("old-but-active", 0.0)
    sessions.touch("old-but-active", 50.0)
    assert 1 == sessions.sweep(65.0)
    kept = [v for v in ("old", "recent", "old-but-active") if sessions.get(v) is not None]
    assert ["recent", "old-but-active"] == kept


def test_the_least_recently_active_go_first_past_the_limit() -> None:
    """Past the limit (per shard of the table) the least recently active sessions are
    forgotten, not the busy ones."""
    sessions = Sessions(ttl=600, limit=4 * SHARDS + 3)  # four sessions a shard
    shard = sessions.shards[0]
    same = [f"v{n}" for n in range(5000) if sessions.shard(f"v{n}") is shard][:5]
    for moment, visitor in enumerate(same[:4]):
        sessions.touch(visitor, float(moment))
    sessions.touch(same[0], 300.0)  # active again
    sessions.touch(same[4], 301.0)  # a newcomer in the full shard
    assert [True, False, True, True, True] == [sessions.get(v) is not None for v in same]
    assert 4 == len(shard)


def test_a_growing_table_grows_a_shard_at_a_time() -> None:
    """Visitors spread over every shard, so no single dict holds (and copies) them all."""
    sessions = Sessions(ttl=600, limit=100_000)
    for number in range(64_000):
        sessions.touch(f"visitor-{number}", 0.0)
    sizes = [len(shard) for shard in sessions.shards]
    assert 64_000 == len(sessions) == sum(sizes)
    assert max(sizes) < 2 * 64_000 / SHARDS


def test_session_ids_are_distinct() -> None:
    """Two processes' and two sessions' ids differ."""
    one, two = Sessions(ttl=60, limit=10_000), Sessions(ttl=60, limit=10_000)
    a, b = one.touch("a", 0.0)[NUMBER], one.touch("b", 0.0)[NUMBER]
    assert one.id_of(a) != one.id_of(b)
    assert one.id_of(a) != two.id_of(two.touch("a", 0.0)[NUMBER])


def test_sessions_hold_nothing_the_garbage_collector_has_to_track() -> None:
    """After one collection, a session with exposures is an untracked tuple, so a table of
    hundreds of thousands of sessions costs the collector nothing."""
    import gc

    import rules
    from tests.rules.helpers import DEMO_PATH

    ruleset = rules.load(DEMO_PATH.read_bytes())
    decisions = list(ruleset.decide_all("visitor-9", {"geo": {"country": "FR"}}).values())
    sessions = Sessions(ttl=60, limit=10_000)
    sessions.expose_all("visitor-9", 0.0, decisions)
    sessions.expose("visitor-8", 0.0, KEY)
    gc.collect()
    sessions_made = [held(sessions, "visitor-9"), held(sessions, "visitor-8")]
    assert [False, False] == [gc.is_tracked(s) for s in sessions_made]


def test_the_recorders_own_path_for_new_visitors_keeps_sessions_as_sessions_does() -> None:
    """A new visitor recorded by the recorder gets the session Sessions.expose would make; a
    repeat is not queued again; at the limit the oldest sessions still go first."""
    from typing import Any

    import rules
    from service.events.queue import EventQueue, Recorder
    from tests.rules.helpers import DEMO_PATH

    ruleset = rules.load(DEMO_PATH.read_bytes())
    decision = next(
        d
        for n in range(1000)
        if (
            d := ruleset.decide(
                "new_checkout", f"v{n}", {"geo": {"country": "FR"}, "device": "phone"}
            )
        ).rule
    )
    spilled: list[Any] = []
    queue = EventQueue(
        batch_size=1000, capacity=1000, on_full=lambda items, _: spilled.append(items)
    )
    sessions = Sessions(ttl=60, limit=100)
    recorder = Recorder(queue, sessions)
    for number in range(150):
        recorder.expose(f"visitor-{number}", decision, {}, None, None, "r1")
    # Shards are chosen by hash, which changes from run to run: a newcomer is put in
    # visitor-0's shard on purpose, so the oldest session there must go.
    first = sessions.shard("visitor-0")
    newcomer = next(c for n in range(10_000) if sessions.shard(c := f"new-{n}") is first)
    recorder.expose(newcomer, decision, {}, None, None, "r1")
    recorder.expose(newcomer, decision, {}, None, None, "r1")
    assert (151, 1) == (len(queue), recorder.repeated)
    assert len(sessions) <= 100
    assert None is sessions.get("visitor-0")
    assert (decision.outcome,) == outcomes_of(held(sessions, newcomer))
    assert None is sessions.expose(newcomer, 1.0, decision.outcome)
    numbers = {item[2] for item in queue.items if isinstance(item, tuple)}
    assert 151 == len(numbers)  # every session its own number
