"""The export on a simulated experiment over two replicas' logs, checked with the
specification's SQL against counts computed here from the scenario itself."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from service.cli import main
from service.export import ExportError, LakeLocked, job, sql
from service.export.job import ExportOptions, Report, export
from service.export.lake import Lake
from service.export.query import connect, run_query

ACCOUNT = "acct-1"
DAY = datetime(2026, 11, 30, tzinfo=UTC)
T0 = int((DAY + timedelta(hours=10)).timestamp() * 1000)
MINUTE = 60_000
PURCHASE = "83023"
SIGNUP = "83025"
WINDOW = (T0 - 60 * MINUTE, T0 + 24 * 60 * MINUTE)


def decision(uuid: str, at: int, visitor: str, experiment: str, variation: str) -> dict[str, Any]:
    return {
        "kind": "decision", "uuid": uuid, "timestamp": at, "process_timestamp": at + 5,
        "session_id": "process-1", "visitor_id": visitor,
        "attributes": [{"id": "plan", "name": "plan", "type": "custom", "value": "pro"}],
        "user_agent": "app/1.0", "referer": None, "revision": "r1",
        "campaign_id": f"c-{experiment}", "experiment_id": experiment,
        "variation_id": variation, "flag": "f", "rule": experiment, "variation": variation,
        "is_holdback": False, "client_engine": "flagpost", "client_version": "0.1.0",
    }  # fmt: skip


def conversion(
    uuid: str, at: int, visitor: str, entity: str, revenue: int | None, value: float | None
) -> dict[str, Any]:
    return {
        "kind": "conversion", "uuid": uuid, "timestamp": at, "process_timestamp": at + 5,
        "visitor_id": visitor, "session_id": "process-1", "experiments": [],
        "entity_id": entity, "attributes": [], "user_agent": "app/1.0", "referer": None,
        "event_type": "custom", "event_name": "purchase" if entity == PURCHASE else "signup",
        "revenue": revenue, "value": value, "quantity": 1, "tags": {"coupon": "none"},
        "revision": "r1", "client_engine": "flagpost", "client_version": "0.1.0",
    }  # fmt: skip


@dataclass
class Scenario:
    """What the replicas wrote, kept to compute the expected answers independently."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    conversions: list[dict[str, Any]] = field(default_factory=list)

    def write(self, path: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
        for record in records:
            kept = self.decisions if record["kind"] == "decision" else self.conversions
            if record["kind"] in ("decision", "conversion") and record not in kept:
                kept.append(record)
        return path

    def attributed(self, record: dict[str, Any]) -> set[tuple[str, str]]:
        """(experiment, first variation) of each experiment decided at or before it."""
        firsts: dict[str, tuple[int, str]] = {}
        for d in sorted(self.decisions, key=lambda d: (d["timestamp"], d["uuid"])):
            if d["visitor_id"] == record["visitor_id"]:
                firsts.setdefault(d["experiment_id"], (d["timestamp"], d["variation_id"]))
        return {(e, v) for e, (at, v) in firsts.items() if at <= record["timestamp"]}

    def in_window(self, record: dict[str, Any]) -> bool:
        at: int = record["timestamp"]
        return WINDOW[0] <= at <= WINDOW[1]


def two_replicas(root: Path) -> Scenario:
    """Exposures on replica a, conversions on replica b, duplicates across them, sessions
    split by a gap, a visitor whose variation changed, a conversion before any decision, and
    lines the export must reject."""
    scenario = Scenario()
    decisions = [
        decision("d1", T0, "v1", "E1", "A"),
        decision("d2", T0 + 10 * MINUTE, "v1", "E1", "B"),  # changed: A stays the first
        decision("d3", T0, "v2", "E1", "B"),
        decision("d4", T0 + 60 * MINUTE, "v3", "E1", "A"),
        decision("d5", T0, "v4", "E2", "X"),
    ]
    scenario.write(root / "a" / "events-20261130T100000000000Z-11.jsonl", decisions[:3])
    scenario.write(
        root / "a" / "events-20261130T110000000000Z-11.jsonl",
        [*decisions[3:], {"kind": "odp", "uuid": "o1", "timestamp": T0}],
        tail='{"kind": "decision", "uuid": "d9", "timest',  # a crash mid-write
    )
    conversions = [
        conversion("c1", T0 + 20 * MINUTE, "v1", PURCHASE, 1000, 1.5),
        conversion("c2", T0 + 120 * MINUTE, "v1", PURCHASE, 500, 2.0),  # a new session
        conversion("c3", T0 + 5 * MINUTE, "v2", PURCHASE, 700, 0.5),
        conversion("c4", T0 + 30 * MINUTE, "v3", PURCHASE, 900, 9.0),  # before its decision
        conversion("c5", T0, "v5", SIGNUP, None, None),  # no decision at all
    ]
    scenario.write(root / "b" / "events-20261130T100000000000Z-22.jsonl", conversions[:3])
    scenario.write(
        root / "b" / "events-20261130T120000000000Z-22.jsonl",
        [conversions[2], *conversions[3:], decisions[2]],  # replayed: the same uuids again
        tail="\n".join([
            "this is not JSON",
            json.dumps({**conversion("c8", T0, "v1", PURCHASE, 1, 1.0), "revenue": "10"}),
            json.dumps({k: v for k, v in decision("d8", T0, "v1", "E1", "A").items()
                        if k != "visitor_id"}),
            json.dumps({"kind": "telemetry", "uuid": "x1"}),
            json.dumps({**conversion("c7", T0, "v1", PURCHASE, 1, 1.0),
                        "timestamp": 10**19}),
        ]) + "\n",
    )  # fmt: skip
    return scenario


def run(root: Path, now: datetime = DAY + timedelta(hours=20), **options: Any) -> Report:
    return export(
        ExportOptions(
            events=(root / "a", root / "b"), lake=root / "lake", account_id=ACCOUNT, now=now,
            **options,
        )
    )  # fmt: skip


def answer(root: Path, sql: str) -> Any:
    con = connect(Lake(root / "lake", ACCOUNT))
    try:
        return json.loads(run_query(con, sql, "json"))[0]
    finally:
        con.close()


EXAMPLES = {
    "unique visitors (full stack)": """
        SELECT COUNT(distinct visitor_id) AS n FROM decisions
        WHERE experiment_id = 'E1' AND timestamp between {start} AND {end}
        AND is_holdback = false""",
    "unique visitors (web)": """
        SELECT COUNT (distinct visitor_id) AS n FROM (
            SELECT visitor_id FROM events CROSS JOIN UNNEST(experiments) as t(exp)
            WHERE exp.experiment_id='E1' AND timestamp between {start} AND {end}
            UNION
            SELECT visitor_id FROM decisions
            WHERE experiment_id = 'E1' AND timestamp between {start} AND {end}
            AND is_holdback = false)""",
    "unique conversions": """
        SELECT COUNT(distinct visitor_id) AS n FROM events
        CROSS JOIN UNNEST(experiments) as t(exp)
        WHERE exp.experiment_id='E1' AND timestamp between {start} and {end}
        AND entity_id = '83023'""",
    "total conversions": """
        SELECT COUNT(*) AS n FROM events CROSS JOIN UNNEST(experiments) as t(exp)
        WHERE exp.experiment_id='E1' AND timestamp between {start} and {end}
        AND entity_id = '83023'""",
    "total revenue": """
        SELECT SUM(revenue) AS n FROM events CROSS JOIN UNNEST(experiments) as t(exp)
        WHERE exp.experiment_id='E1' AND timestamp between {start} and {end}
        AND entity_id = '83023'""",
    "total value": """
        SELECT SUM(value) AS n FROM events CROSS JOIN UNNEST(experiments) as t(exp)
        WHERE exp.experiment_id='E1' AND timestamp between {start} and {end}
        AND entity_id = '83023'""",
}


def expected(scenario: Scenario) -> dict[str, Any]:
    """The six answers, from the scenario's records (each uuid once) by plain Python."""
    d = [r for r in scenario.decisions if r["experiment_id"] == "E1" and scenario.in_window(r)]
    c = [
        r
        for r in scenario.conversions
        if r["entity_id"] == PURCHASE
        and scenario.in_window(r)
        and any(e == "E1" for e, _ in scenario.attributed(r))
    ]
    every = [r for r in scenario.conversions if scenario.in_window(r)]
    web = {r["visitor_id"] for r in every if any(e == "E1" for e, _ in scenario.attributed(r))}
    return {
        "unique visitors (full stack)": len({r["visitor_id"] for r in d}),
        "unique visitors (web)": len(web | {r["visitor_id"] for r in d}),
        "unique conversions": len({r["visitor_id"] for r in c}),
        "total conversions": len(c),
        "total revenue": sum(r["revenue"] for r in c),
        "total value": sum(r["value"] for r in c),
    }


def test_the_specifications_sql_answers_as_the_scenario_says(tmp_path: Path) -> None:
    """Each of the six example queries, run as written, gives the count computed from the
    scenario: duplicates across replicas dropped, conversions attributed across them."""
    scenario = two_replicas(tmp_path)
    report = run(tmp_path)
    found = {
        name: answer(tmp_path, sql.format(start=WINDOW[0], end=WINDOW[1]))["n"]
        for name, sql in EXAMPLES.items()
    }
    assert expected(scenario) == found
    assert {"unique visitors (full stack)": 3, "total conversions": 3, "total revenue": 2200} == {
        name: found[name] for name in ("unique visitors (full stack)", "total conversions",
                                       "total revenue")
    }  # fmt: skip
    assert (5, 5, 2) == (report.decisions, report.conversions, report.duplicates)


def test_attribution_takes_the_first_variation_and_only_earlier_decisions(tmp_path: Path) -> None:
    """A conversion lists the first variation of each experiment decided at or before it;
    one before any decision lists none."""
    two_replicas(tmp_path)
    run(tmp_path)
    rows = answer_all(tmp_path, "SELECT uuid, experiments FROM events ORDER BY uuid")
    experiments = {row["uuid"]: [(e["experiment_id"], e["variation_id"], e["is_holdback"])
                                 for e in row["experiments"]] for row in rows}  # fmt: skip
    assert {
        "c1": [("E1", "A", False)],
        "c2": [("E1", "A", False)],
        "c3": [("E1", "B", False)],
        "c4": [],
        "c5": [],
    } == experiments


def answer_all(root: Path, sql: str) -> list[dict[str, Any]]:
    con = connect(Lake(root / "lake", ACCOUNT))
    try:
        rows: list[dict[str, Any]] = json.loads(run_query(con, sql, "json"))
        return rows
    finally:
        con.close()


def test_sessions_split_by_a_gap_and_keep_their_id_across_runs(tmp_path: Path) -> None:
    """v1's events within 30 minutes share a session; the one two hours later starts
    another; an event exported in a later run continues the session it belongs to."""
    two_replicas(tmp_path)
    run(tmp_path)
    later = Scenario()
    later.write(
        tmp_path / "b" / "events-20261130T130000000000Z-22.jsonl",
        [conversion("c9", T0 + 125 * MINUTE, "v1", PURCHASE, 5, 0.1)],
    )
    run(tmp_path)
    sessions = {
        row["uuid"]: row["session_id"]
        for row in answer_all(
            tmp_path,
            "SELECT uuid, session_id FROM decisions WHERE visitor_id = 'v1' UNION ALL "
            "SELECT uuid, session_id FROM events WHERE visitor_id = 'v1'",
        )
    }
    assert sessions["d1"] == sessions["d2"] == sessions["c1"]
    assert sessions["c2"] == sessions["c9"]
    assert sessions["c1"] != sessions["c2"]


def test_a_second_run_adds_nothing_and_a_new_file_only_its_rows(tmp_path: Path) -> None:
    """Exporting again takes no file twice; a new file's rows are added, its duplicates
    of rows already in the lake are not, and its conversion is attributed to a decision
    exported in the first run."""
    two_replicas(tmp_path)
    first = run(tmp_path)
    again = run(tmp_path)
    Scenario().write(
        tmp_path / "b" / "events-20261130T140000000000Z-22.jsonl",
        [conversion("c1", T0 + 20 * MINUTE, "v1", PURCHASE, 1000, 1.5),
         conversion("c10", T0 + 180 * MINUTE, "v4", PURCHASE, 10, 1.0)],
    )  # fmt: skip
    third = run(tmp_path)
    counts = answer(tmp_path, "SELECT (SELECT count(*) FROM decisions) AS d, "
                    "(SELECT count(*) FROM events) AS c, "
                    "(SELECT count(DISTINCT uuid) FROM events) AS u")  # fmt: skip
    (c10,) = answer_all(tmp_path, "SELECT experiments FROM events WHERE uuid = 'c10'")
    assert (4, 0, 0) == (first.files_read, again.files_read, again.decisions + again.conversions)
    assert (1, 1, 1) == (third.files_read, third.conversions, third.duplicates)
    assert {"d": 5, "c": 6, "u": 6} == counts
    assert ["E2"] == [e["experiment_id"] for e in c10["experiments"]]


def test_first_decisions_kept_a_file_per_run_are_merged_and_attribute_across_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run adds a file of the first decisions it changed, merged into one every few
    runs; a late decision earlier than the first known becomes the first, and conversions
    of later runs are attributed from all of them."""
    monkeypatch.setattr(job, "FIRSTS_FILES", 3)
    state = Lake(tmp_path / "lake", ACCOUNT).state
    (tmp_path / "b").mkdir()
    steps = [
        [decision("d1", T0 + 10 * MINUTE, "v1", "E1", "A")],
        [decision("d2", T0, "v2", "E2", "B")],
        [decision("d3", T0 + 5 * MINUTE, "v1", "E1", "B")],  # late, and before d1
        [conversion("c1", T0 + 60 * MINUTE, "v1", PURCHASE, 1, 1.0),
         conversion("c2", T0 + 60 * MINUTE, "v2", PURCHASE, 1, 1.0)],
    ]  # fmt: skip
    files_after = []
    for number, records in enumerate(steps):
        Scenario().write(tmp_path / "a" / f"events-{number}.jsonl", records)
        run(tmp_path)
        files_after.append(len(list(state.glob("firsts*.parquet"))))
    rows = answer_all(tmp_path, "SELECT uuid, experiments FROM events ORDER BY uuid")
    assert [1, 2, 3, 1] == files_after  # the fourth run merged the three files
    assert [
        ("c1", [("E1", "B")]),
        ("c2", [("E2", "B")]),
    ] == [(r["uuid"], [(e["experiment_id"], e["variation_id"]) for e in r["experiments"]])
          for r in rows]  # fmt: skip


def test_bad_lines_are_listed_and_the_good_ones_around_them_kept(tmp_path: Path) -> None:
    """A truncated line, a line that is not JSON, a mistyped field, a missing one, an
    unknown kind and a number too large for its column are rejected with file and line;
    other kinds are counted, not exported."""
    two_replicas(tmp_path)
    report = run(tmp_path)
    assert report.rejects_report is not None
    listed = [json.loads(line) for line in report.rejects_report.read_text().splitlines()]
    reasons = {(Path(row["file"]).name, row["line"]): row["reason"] for row in listed}
    second = "events-20261130T120000000000Z-22.jsonl"
    assert {
        ("events-20261130T110000000000Z-11.jsonl", 4): "not JSON (a truncated line, say)",
        (second, 5): "not JSON (a truncated line, say)",
        (second, 6): "conversion: missing or mistyped revenue",
        (second, 7): "decision: missing or mistyped visitor_id",
        (second, 8): "unknown kind telemetry",
        (second, 9): "conversion: missing or mistyped timestamp",
    } == reasons
    assert (6, 1) == (report.rejected, report.not_exported)


def test_bytes_that_are_not_text_are_rejected_and_the_lines_around_them_kept(
    tmp_path: Path,
) -> None:
    """A line that is not UTF-8 and one with a raw control character are listed with their
    numbers; the good lines of the same file, and of the files read with it, are exported."""
    good = [json.dumps(decision(f"d{n}", T0 + n, "v1", "E1", "A")).encode() for n in range(4)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    lines = [good[0], b'{"kind": "decision", "uuid": "\xff\xfe"}', good[1], b'{"a": "\x1f"}']
    (tmp_path / "a" / "events-1.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "b" / "events-2.jsonl").write_bytes(b"\n".join(good[2:]) + b"\n")
    report = run(tmp_path)
    assert report.rejects_report is not None
    listed = [json.loads(line) for line in report.rejects_report.read_text().splitlines()]
    assert [(2, "not UTF-8 text"), (4, "not JSON (a truncated line, say)")] == [
        (row["line"], row["reason"]) for row in listed
    ]
    assert (6, 4, 2) == (report.lines, report.decisions, report.rejected)


def test_a_day_is_complete_once_late_enough_and_no_open_file_can_hold_it(
    tmp_path: Path,
) -> None:
    """_SUCCESS appears for a day once it ended more than the lateness ago and no file
    still open was opened before its end; an event arriving after that is written and
    counted as late."""
    two_replicas(tmp_path)
    held = tmp_path / "a" / "events-20261130T230000000000Z-11.jsonl.open"
    held.write_text("")
    writer = os.open(held, os.O_RDWR)
    fcntl.flock(writer, fcntl.LOCK_EX)
    try:
        early = run(tmp_path, now=DAY + timedelta(hours=24, minutes=30))
        open_file = run(tmp_path, now=DAY + timedelta(hours=26))
    finally:
        os.close(writer)  # the writer died: its file counts as closed now
    done = run(tmp_path, now=DAY + timedelta(hours=26))
    success = [
        (Lake(tmp_path / "lake", ACCOUNT).date_dir(kind, "2026-11-30") / "_SUCCESS").exists()
        for kind in ("decisions", "events")
    ]
    Scenario().write(
        tmp_path / "b" / "events-20261201T010000000000Z-22.jsonl",
        [conversion("c11", T0 + 60 * MINUTE, "v2", PURCHASE, 1, 1.0)],
    )
    late = run(tmp_path, now=DAY + timedelta(hours=27))
    assert ((), (), ("2026-11-30",)) == (early.completed, open_file.completed, done.completed)
    assert [True, True] == success
    assert (1, 1) == (late.conversions, late.late)


def test_a_second_export_on_the_lake_is_refused_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While one export holds the lake, another stops at once, saying why."""
    two_replicas(tmp_path)
    lake = Lake(tmp_path / "lake", ACCOUNT)
    with lake.locked():
        with pytest.raises(LakeLocked):
            run(tmp_path)
        status = main(["export", "--events", str(tmp_path / "a"), "--lake", str(lake.root),
                       "--account-id", ACCOUNT])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert 1 == status
    assert 1 == len(lines)
    assert "another export is writing to this lake" in lines[0]


def test_unusable_inputs_and_lakes_are_one_line_and_leave_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing input directory and a lake that is a file: one line each, exit 1."""
    (tmp_path / "a").mkdir()
    (tmp_path / "lake-file").write_text("")
    missing = main(["export", "--events", str(tmp_path / "none"), "--lake",
                    str(tmp_path / "lake"), "--account-id", ACCOUNT])  # fmt: skip
    unwritable = main(["export", "--events", str(tmp_path / "a"), "--lake",
                       str(tmp_path / "lake-file"), "--account-id", ACCOUNT])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert (1, 1) == (missing, unwritable)
    assert 2 == len(lines)
    assert "none: not a directory" in lines[0]
    assert "cannot be written" in lines[1]
    assert not (tmp_path / "lake").exists()


def test_partitions_past_the_retention_are_removed(tmp_path: Path) -> None:
    """A run a year and more later removes the partitions older than the retention, and
    the first decisions of those days from the export's state."""
    two_replicas(tmp_path)
    run(tmp_path)
    later = DAY + timedelta(days=400)
    at = int(later.timestamp() * 1000) - 60 * MINUTE
    Scenario().write(
        tmp_path / "a" / "events-20280104T000000000000Z-11.jsonl",
        [decision("d20", at, "v9", "E1", "A")],
    )
    report = run(tmp_path, now=later)
    firsts = (
        duckdb.connect()
        .execute(
            "SELECT visitor_id FROM read_parquet(?)",
            [str(Lake(tmp_path / "lake", ACCOUNT).state / "firsts.parquet")],
        )
        .fetchall()
    )
    assert ("2026-11-30",) == report.removed
    assert 1 == answer(tmp_path, "SELECT count(*) AS n FROM decisions")["n"]
    assert [("v9",)] == firsts  # the first decisions of the removed days went with them


def test_the_lake_has_the_specifications_columns_in_order(tmp_path: Path) -> None:
    """The Parquet parts carry exactly the schema tables' columns, names, order and types."""
    two_replicas(tmp_path)
    run(tmp_path)
    lake = Lake(tmp_path / "lake", ACCOUNT)
    con = duckdb.connect()
    described = {
        kind: [
            (name, kind_)
            for name, kind_, *_ in con.execute(
                "DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = false)",
                [[str(part) for part in lake.parts(kind)]],
            ).fetchall()
        ]
        for kind in ("decisions", "events")
    }
    attributes = 'STRUCT(id VARCHAR, "name" VARCHAR, "type" VARCHAR, "value" VARCHAR)[]'
    assert [
        ("uuid", "VARCHAR"), ("timestamp", "BIGINT"), ("process_timestamp", "BIGINT"),
        ("visitor_id", "VARCHAR"), ("session_id", "VARCHAR"), ("account_id", "VARCHAR"),
        ("campaign_id", "VARCHAR"), ("experiment_id", "VARCHAR"), ("variation_id", "VARCHAR"),
        ("attributes", attributes), ("user_ip", "VARCHAR"), ("user_agent", "VARCHAR"),
        ("referer", "VARCHAR"), ("is_holdback", "BOOLEAN"), ("revision", "VARCHAR"),
        ("client_engine", "VARCHAR"), ("client_version", "VARCHAR"),
    ] == described["decisions"]  # fmt: skip
    assert [
        ("uuid", "VARCHAR"), ("timestamp", "BIGINT"), ("process_timestamp", "BIGINT"),
        ("visitor_id", "VARCHAR"), ("session_id", "VARCHAR"), ("account_id", "VARCHAR"),
        ("experiments", "STRUCT(campaign_id VARCHAR, experiment_id VARCHAR, "
                        "variation_id VARCHAR, is_holdback BOOLEAN)[]"),
        ("entity_id", "VARCHAR"), ("attributes", attributes), ("user_ip", "VARCHAR"),
        ("user_agent", "VARCHAR"), ("referer", "VARCHAR"), ("event_type", "VARCHAR"),
        ("event_name", "VARCHAR"), ("revenue", "BIGINT"), ("value", "DOUBLE"),
        ("quantity", "BIGINT"), ("tags", "MAP(VARCHAR, VARCHAR)"), ("revision", "VARCHAR"),
        ("client_engine", "VARCHAR"), ("client_version", "VARCHAR"),
    ] == described["events"]  # fmt: skip


def test_forget_removes_a_visitors_rows_everywhere_and_only_theirs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After flagpost forget, no partition nor the export's state holds the visitor, the
    other visitors' rows are all there, and a part left empty is gone."""
    two_replicas(tmp_path)
    run(tmp_path)
    lake = Lake(tmp_path / "lake", ACCOUNT)
    before = answer(tmp_path, "SELECT (SELECT count(*) FROM decisions) + "
                    "(SELECT count(*) FROM events) AS n")["n"]  # fmt: skip
    status = main(["forget", "--lake", str(lake.root), "v1", "v4"])
    con = duckdb.connect()
    left = {
        str(path.relative_to(lake.root)): con.execute(
            "SELECT count(*) FROM read_parquet(?) WHERE visitor_id IN ('v1', 'v4')", [str(path)]
        ).fetchone()
        for path in [*lake.parts("decisions"), *lake.parts("events"),
                     lake.state / "tails.parquet", lake.state / "firsts.parquet"]
    }  # fmt: skip
    after = answer(tmp_path, "SELECT (SELECT count(*) FROM decisions) + "
                   "(SELECT count(*) FROM events) AS n")["n"]  # fmt: skip
    assert 0 == status
    assert "5 rows removed" in capsys.readouterr().out  # v1: d1, d2, c1, c2; v4: d5
    assert all((0,) == count for count in left.values())
    assert before - 5 == after
    assert [] == list(lake.date_dir("decisions", "2026-11-30").glob("experiment=E2/*.parquet"))


def test_a_failure_inside_the_engine_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the engine fails midway (here, a query it cannot run), the export stops with
    one line, and neither a part nor the run's scratch is left in the lake."""
    two_replicas(tmp_path)
    monkeypatch.setattr(sql, "SESSIONS", "SELECT no_such_column FROM new_decisions")
    with pytest.raises(ExportError, match=r"^the export failed, nothing was written: "):
        run(tmp_path)
    lake = Lake(tmp_path / "lake", ACCOUNT)
    assert ([], [], False) == (
        lake.parts("decisions"),
        list((lake.own / "runs").iterdir()),
        lake.state.exists(),
    )
