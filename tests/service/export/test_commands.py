"""The export's commands as a user runs them: flagpost export --every, flagpost query."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from service.cli import main
from tests.service.export.test_export import (
    ACCOUNT,
    T0,
    Scenario,
    decision,
    two_replicas,
)


def wait_for(log: Path, text: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while text not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"never printed {text!r}: {log.read_text()}"
        time.sleep(0.1)


def test_export_every_keeps_taking_new_files_until_sigterm(tmp_path: Path) -> None:
    """flagpost export --every exports what arrives while it runs, and stops with 0 on
    SIGTERM."""
    two_replicas(tmp_path)
    command = [sys.executable, "-m", "service", "export", "--events", str(tmp_path / "a"),
               "--events", str(tmp_path / "b"), "--lake", str(tmp_path / "lake"),
               "--account-id", ACCOUNT, "--every", "0.2"]  # fmt: skip
    log = tmp_path / "export.log"
    with log.open("wb") as written:
        exporter = subprocess.Popen(command, stdout=written, stderr=subprocess.STDOUT)
    try:
        wait_for(log, "4 new files (0 already taken)", exporter)
        Scenario().write(
            tmp_path / "a" / "events-20261130T150000000000Z-11.jsonl",
            [decision("d30", T0 + 5, "v30", "E1", "B")],
        )
        wait_for(log, "1 new files (4 already taken)", exporter)
        exporter.send_signal(signal.SIGTERM)
        status = exporter.wait(timeout=60)
    finally:
        if exporter.poll() is None:
            exporter.kill()
            exporter.wait()
    con = duckdb.connect(Path(tmp_path / "check.db").as_posix())
    (found,) = con.execute(
        "SELECT count(*) FROM read_parquet(?) WHERE uuid = 'd30'",
        [[str(path) for path in (tmp_path / "lake").rglob("type=decisions/*/*/*.parquet")]],
    ).fetchone() or (0,)
    con.close()
    assert 1 == found
    assert 0 == status


def test_query_prints_a_table_csv_or_json_from_sql_or_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same answer in the three formats, the SQL given as an argument or in a file."""
    two_replicas(tmp_path)
    assert 0 == main(["export", "--events", str(tmp_path / "a"), "--events",
                      str(tmp_path / "b"), "--lake", str(tmp_path / "lake"),
                      "--account-id", ACCOUNT, "--now", "2026-11-30T20:00:00Z"])  # fmt: skip
    capsys.readouterr()
    sql = "SELECT visitor_id, count(*) AS n FROM decisions GROUP BY 1 ORDER BY 1"
    (tmp_path / "q.sql").write_text(sql)
    outputs = {}
    for fmt in ("table", "csv", "json"):
        assert 0 == main(["query", "--lake", str(tmp_path / "lake"), "--format", fmt, sql])
        outputs[fmt] = capsys.readouterr().out
    assert 0 == main(["query", "--lake", str(tmp_path / "lake"), "--format", "json",
                      "-f", str(tmp_path / "q.sql")])  # fmt: skip
    from_file = capsys.readouterr().out
    rows = [{"visitor_id": "v1", "n": 2}, {"visitor_id": "v2", "n": 1},
            {"visitor_id": "v3", "n": 1}, {"visitor_id": "v4", "n": 1}]  # fmt: skip
    assert rows == json.loads(outputs["json"]) == json.loads(from_file)
    assert "visitor_id,n\nv1,2\nv2,1\nv3,1\nv4,1\n" == outputs["csv"]
    assert "│ v1         │     2 │" in outputs["table"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--account-id", "a/b"], "account id 'a/b': 1 to 64 letters, digits"),
     (["--account-id", "a", "--every", "1", "--now", "2026-11-30T00:00:00Z"],
      "--now and --every exclude each other"),
     (["--account-id", "a", "--now", "yesterday"], "--now 'yesterday' is not an ISO 8601")],
)  # fmt: skip
def test_unusable_export_arguments_are_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    """A bad account id, --now with --every, or a bad --now: one line, exit status 2."""
    (tmp_path / "a").mkdir()
    status = main(["export", "--events", str(tmp_path / "a"), "--lake", str(tmp_path / "lake"),
                   *arguments])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert 2 == status
    assert 1 == len(lines)
    assert message in lines[0]


def test_a_query_that_fails_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SQL DuckDB cannot run is one line on stderr and status 1."""
    two_replicas(tmp_path)
    main(["export", "--events", str(tmp_path / "a"), "--lake", str(tmp_path / "lake"),
          "--account-id", ACCOUNT])  # fmt: skip
    capsys.readouterr()
    status = main(["query", "--lake", str(tmp_path / "lake"), "SELECT nope FROM decisions"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert (1, 1) == (status, len(lines))
    assert lines[0].startswith("flagpost: the query failed:")
