"""The sessionization SQL against a plain Python reading of its rule, on generated visitors:
runs split by a gap, cut each day from their start, continuing an earlier run's session."""

from __future__ import annotations

from collections import defaultdict

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from service.export import sql

GAP = 10
LONGEST = 50

Event = tuple[str, int, str]  # visitor, timestamp, uuid
Tail = tuple[str, int, int]  # visitor, session start, last timestamp


def day_of(at: int, start: int) -> int:
    """Whole days (of LONGEST) from the start, truncated toward zero as SQL's integer
    division does: an event a little before a continued session's start is in its day 0."""
    days = abs(at - start) // LONGEST
    return days if at >= start else -days


def expected_sessions(events: list[Event], tails: list[Tail]) -> dict[str | None, int]:
    """Each event's session start (the tails' rows under None are not compared)."""
    rows: dict[str, list[tuple[int, str | None, int | None]]] = defaultdict(list)
    for visitor, at, uuid in events:
        rows[visitor].append((at, uuid, None))
    for visitor, start, last in tails:
        if visitor in rows:
            rows[visitor].append((last, None, start))
    answer: dict[str | None, int] = {}
    for visitor_rows in rows.values():
        # NULL uuids (the tails') first among equal timestamps, as the SQL orders them
        visitor_rows.sort(key=lambda row: (row[0], row[1] is not None, row[1] or ""))
        runs: list[list[tuple[int, str | None, int | None]]] = []
        for row in visitor_rows:
            if runs and row[0] - runs[-1][-1][0] <= GAP:
                runs[-1].append(row)
            else:
                runs.append([row])
        for run in runs:
            fixed = [row[2] for row in run if row[2] is not None]
            start = min(fixed) if fixed else run[0][0]
            first_of_day: dict[int, int] = {}
            for at, _, _ in run:
                first_of_day.setdefault(day_of(at, start), at)
            for at, name, _ in run:
                day = day_of(at, start)
                if name is not None:
                    answer[name] = start if day == 0 else first_of_day[day]
    return answer


events_strategy = st.lists(
    st.tuples(st.sampled_from(["v1", "v2", "v3"]), st.integers(0, 200)), max_size=40
)
tails_strategy = st.lists(
    st.tuples(st.sampled_from(["v1", "v2", "v4"]), st.integers(0, 120), st.integers(0, 80)),
    max_size=3,
    unique_by=lambda tail: tail[0],
)


@settings(max_examples=150, deadline=None)
@given(events_strategy, tails_strategy)
def test_sessions_follow_the_rule(
    drawn: list[tuple[str, int]], drawn_tails: list[tuple[str, int, int]]
) -> None:
    """Every event's session start is the one the rule gives, whatever the order of events
    and the earlier sessions they continue."""
    events = [(visitor, at, f"u{index:03d}") for index, (visitor, at) in enumerate(drawn)]
    tails = [(visitor, start, start + length) for visitor, start, length in drawn_tails]
    con = duckdb.connect()
    con.execute("CREATE TABLE new_decisions (visitor_id VARCHAR, timestamp BIGINT, uuid VARCHAR)")
    con.execute("CREATE TABLE new_conversions AS SELECT * FROM new_decisions WHERE false")
    con.execute(
        "CREATE TABLE tails (visitor_id VARCHAR, session_start BIGINT, last_timestamp BIGINT)"
    )
    half = len(events) // 2
    if events[:half]:
        con.executemany("INSERT INTO new_decisions VALUES (?, ?, ?)", events[:half])
    if events[half:]:
        con.executemany("INSERT INTO new_conversions VALUES (?, ?, ?)", events[half:])
    if tails:
        con.executemany("INSERT INTO tails VALUES (?, ?, ?)", tails)
    rows = con.execute(
        f"SELECT uuid, session_start FROM ({sql.SESSIONS.format(gap=GAP, longest=LONGEST)}) "
        "WHERE uuid IS NOT NULL"
    ).fetchall()
    assert expected_sessions(events, tails) == dict(rows)
