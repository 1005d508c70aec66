"""Visitor sessions: the window, the limit, the order of activity."""

from __future__ import annotations

from service.events.sessions import NUMBER, SEEN, Sessions

KEY = ("flag", "rule", "on", 1, 2, 3)
OTHER = ("flag", "rule", "off", 1, 2, 4)


def test_an_exposure_is_new_once_per_session() -> None:
    """The same key is new once; another key is new too; both stay in the session, in order."""
    sessions = Sessions(ttl=60, limit=10)
    first = sessions.expose("v", 0.0, KEY)
    assert first is not None
    assert None is sessions.expose("v", 1.0, KEY)
    assert first == sessions.expose("v", 2.0, OTHER)
    assert (KEY, OTHER) == sessions.touch("v", 3.0)[SEEN]


def test_a_session_expires_after_its_last_activity() -> None:
    """Activity extends the window; after ttl idle seconds the next exposure opens a new one."""
    sessions = Sessions(ttl=60, limit=10)
    number = sessions.expose("v", 0.0, KEY)
    assert None is sessions.expose("v", 50.0, KEY)  # extended to 110
    assert None is sessions.expose("v", 100.0, KEY)
    renewed = sessions.expose("v", 161.0, KEY)
    assert renewed not in (None, number)


def test_sweeping_forgets_expired_sessions_only() -> None:
    """Sweep removes the sessions idle for longer than ttl and keeps the others."""
    sessions = Sessions(ttl=60, limit=10)
    sessions.touch("old", 0.0)
    sessions.touch("recent", 30.0)
    sessions.touch("old-but-active", 0.0)
    sessions.touch("old-but-active", 50.0)
    assert 1 == sessions.sweep(65.0)
    assert ["recent", "old-but-active"] == list(sessions.by_visitor)


def test_the_least_recently_active_go_first_past_the_limit() -> None:
    """Past the limit the least recently active sessions are forgotten, not the busy ones."""
    sessions = Sessions(ttl=600, limit=200)
    for number in range(200):
        sessions.touch(f"v{number}", float(number))
    sessions.touch("v0", 300.0)  # active again
    sessions.touch("newcomer", 301.0)
    assert len(sessions) <= 200
    assert "v0" in sessions.by_visitor
    assert "newcomer" in sessions.by_visitor
    assert "v1" not in sessions.by_visitor


def test_session_ids_are_distinct() -> None:
    """Two processes' and two sessions' ids differ."""
    one, two = Sessions(ttl=60, limit=10), Sessions(ttl=60, limit=10)
    a, b = one.touch("a", 0.0)[NUMBER], one.touch("b", 0.0)[NUMBER]
    assert one.id_of(a) != one.id_of(b)
    assert one.id_of(a) != two.id_of(two.touch("a", 0.0)[NUMBER])
