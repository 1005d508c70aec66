"""The same export and the same SQL on Apache Spark (local mode, on 127.0.0.1) as on DuckDB."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from service.export.job import ExportOptions, export
from service.export.lake import Lake
from service.export.query import connect, run_query, spark_answer
from tests.service.export.test_export import ACCOUNT, DAY, EXAMPLES, WINDOW, expected, two_replicas


def lake_rows(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    con = connect(Lake(root, ACCOUNT))
    try:
        return {
            kind: con.execute(f"SELECT * FROM {kind} ORDER BY uuid").fetchall()
            for kind in ("decisions", "events")
        }
    finally:
        con.close()


def partitions(root: Path) -> list[str]:
    lake = Lake(root, ACCOUNT)
    return sorted(
        {str(part.parent.relative_to(root)) for kind in ("decisions", "events")
         for part in lake.parts(kind)}
    )  # fmt: skip


def test_spark_writes_the_lake_duckdb_writes_and_answers_the_six_examples_alike(
    tmp_path: Path,
) -> None:
    """On the simulated experiment over two replicas, the Spark engine's lake holds the same
    rows in the same partitions as DuckDB's, and the specification's six queries, translated
    for Spark by sqlglot, give the same answers as on DuckDB and as the scenario says."""
    scenario = two_replicas(tmp_path)
    answers: dict[str, dict[str, Any]] = {}
    for engine in ("duckdb", "spark"):
        report = export(
            ExportOptions(
                events=(tmp_path / "a", tmp_path / "b"), lake=tmp_path / f"lake-{engine}",
                account_id=ACCOUNT, now=DAY + timedelta(hours=20),
                engine=engine,
            )
        )  # fmt: skip
        assert (5, 5, 2, 6) == (report.decisions, report.conversions, report.duplicates,
                                report.rejected)  # fmt: skip
    for engine in ("duckdb", "spark"):
        lake = Lake(tmp_path / f"lake-{engine}", ACCOUNT)
        answers[engine] = {}
        for name, sql in EXAMPLES.items():
            text = sql.format(start=WINDOW[0], end=WINDOW[1])
            if engine == "spark":
                answered = spark_answer(lake, text, "json")
            else:
                con = connect(lake)
                answered = run_query(con, text, "json")
                con.close()
            answers[engine][name] = json.loads(answered)[0]["n"]
    assert lake_rows(tmp_path / "lake-duckdb") == lake_rows(tmp_path / "lake-spark")
    assert partitions(tmp_path / "lake-duckdb") == partitions(tmp_path / "lake-spark")
    assert expected(scenario) == answers["duckdb"] == answers["spark"]
    assert [] == list((tmp_path / "lake-spark").rglob("*.crc"))
