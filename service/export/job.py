"""One export run on DuckDB: new input files in, new parts, state and a rejects report out.

1. Stage: the new files, a group of up to ``GROUP_BYTES`` at a time, are read as lines,
   checked (``sql.CHECKED``) and typed; good rows go to Parquet files in the run's scratch
   directory, the reasons of bad ones to the rejects report. Never the whole log in memory.
2. Enrich over all the staged rows: drop uuids seen before (in this run or in the lake's
   partitions of the same dates: a duplicate is the same record, so it has the same date),
   sessions, attribution (``sql``).
3. Write the rows as Parquet partitions, the new state (sessions' tails, first decisions,
   the manifest of inputs), and land the run whole (``lake.Run``).
4. Mark the days that are complete, and remove those past the retention.
"""

from __future__ import annotations

import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
from tqdm import tqdm

from service.export import ExportError, LakeUnwritable, sql
from service.export.engines import DuckEngine, Engine, open_engine
from service.export.inputs import InputFile, Manifest, find_inputs
from service.export.lake import SCHEMAS, Lake, Run, Schema, literal, names

__all__ = ["ExportOptions", "Report", "export"]

#: Bytes of input read in one group (its lines are held in memory while checked).
GROUP_BYTES = 64 * 1024**2
DAY_MS = 86_400_000

_TAILS: Schema = (
    ("visitor_id", "VARCHAR"), ("session_start", "BIGINT"), ("last_timestamp", "BIGINT"),
)  # fmt: skip
_FIRSTS: Schema = (
    ("visitor_id", "VARCHAR"), ("experiment_id", "VARCHAR"), ("campaign_id", "VARCHAR"),
    ("variation_id", "VARCHAR"), ("timestamp", "BIGINT"), ("uuid", "VARCHAR"),
)  # fmt: skip
#: What an account id may be: it names a directory of the lake and is written in every row.
ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class ExportOptions:
    events: tuple[Path, ...]
    lake: Path
    account_id: str
    now: datetime
    lateness: timedelta = timedelta(hours=1)
    session_gap: timedelta = timedelta(minutes=30)
    retention_days: int = 365
    progress: bool = False
    engine: str = "duckdb"

    def __post_init__(self) -> None:
        if not ACCOUNT_ID.fullmatch(self.account_id):
            raise ValueError(
                f"account id {self.account_id!r}: 1 to 64 letters, digits, '_', '.' or '-'"
            )


@dataclass(frozen=True, slots=True)
class Report:
    files_read: int
    files_known: int
    lines: int
    decisions: int
    conversions: int
    duplicates: int
    not_exported: int
    rejected: int
    late: int
    completed: tuple[str, ...]
    removed: tuple[str, ...]
    rejects_report: Path | None

    def summary(self) -> str:
        return (
            f"{self.files_read} new files ({self.files_known} already taken), {self.lines} lines: "
            f"{self.decisions} decisions, {self.conversions} conversions written; "
            f"{self.duplicates} duplicates dropped, {self.not_exported} of other kinds, "
            f"{self.rejected} rejected, {self.late} late; "
            f"days completed: {', '.join(self.completed) or 'none'}"
        )


def export(options: ExportOptions) -> Report:
    """Run the export once (the caller holds nothing; the lake's lock is taken here)."""
    lake = Lake(options.lake, options.account_id)
    inputs = find_inputs(list(options.events))  # before the lake is touched: a bad input
    # directory leaves no trace there
    with lake.locked():
        Run.recover(lake)
        manifest = Manifest.load(lake.state / "manifest.json")
        new = [file for file in inputs.closed if file not in manifest]
        known = len(inputs.closed) - len(new)
        completed = _load_days(lake)
        report_counts: dict[str, int] = {}
        rejects: Path | None = None
        if new:
            run = Run.begin(lake)
            try:
                report_counts, rejects = _run(lake, run, new, manifest, completed, options)
                run.land()
            except OSError as error:
                run.abandon()
                raise LakeUnwritable(f"{lake.root}: cannot be written: {error}") from None
            except ExportError:
                run.abandon()
                raise
            except Exception as error:  # the engine's (DuckDB's, Spark's): one line, no trace
                run.abandon()
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ExportError(f"the export failed, nothing was written: {reason}") from None
            except BaseException:
                run.abandon()
                raise
            rejects = None if rejects is None else lake.root / rejects.relative_to(run.staged)
        done = _complete_days(lake, completed, inputs.open_since, options)
        cutoff = (options.now - timedelta(days=options.retention_days)).strftime("%Y-%m-%d")
        removed = lake.remove_dates_before(cutoff)
        return Report(
            files_read=len(new),
            files_known=known,
            lines=report_counts.get("lines", 0),
            decisions=report_counts.get("decisions", 0),
            conversions=report_counts.get("conversions", 0),
            duplicates=report_counts.get("duplicates", 0),
            not_exported=report_counts.get("not_exported", 0),
            rejected=report_counts.get("rejected", 0),
            late=report_counts.get("late", 0),
            completed=tuple(done),
            removed=tuple(removed),
            rejects_report=rejects,
        )


def _run(
    lake: Lake,
    run: Run,
    new: list[InputFile],
    manifest: Manifest,
    completed: set[str],
    options: ExportOptions,
) -> tuple[dict[str, int], Path | None]:
    staging = DuckEngine(run.work)
    engine: Engine = staging
    try:
        counts, rejected = _stage(staging.con, run, new, options.progress)
        if options.engine != "duckdb":
            engine = open_engine(options.engine, run.work)
        raw = run.work / "raw"
        # Staging writes a file per group, empty or not: never none.
        engine.parquet("raw_decisions", sorted(raw.glob("decisions-*.parquet")), ())
        engine.parquet("raw_conversions", sorted(raw.glob("conversions-*.parquet")), ())
        dates = [
            row[0]
            for row in staging.con.execute(
                "SELECT DISTINCT strftime(epoch_ms(timestamp), '%Y-%m-%d') FROM read_parquet(?)",
                [[str(path) for path in sorted(raw.glob("*.parquet"))]],
            ).fetchall()
        ]
        parts = [part for kind in ("decisions", "events") for part in lake.parts(kind, dates)]
        engine.parquet("lake_uuids", parts, (("uuid", "VARCHAR"),), columns="uuid")
        engine.table("new_decisions", sql.DEDUPLICATED.format(raw="raw_decisions"))
        engine.table("new_conversions", sql.DEDUPLICATED.format(raw="raw_conversions"))
        state_files = [lake.state / "tails.parquet", lake.state / "firsts.parquet"]
        engine.parquet("tails", [state_files[0]] if state_files[0].exists() else [], _TAILS)
        engine.parquet("firsts", [state_files[1]] if state_files[1].exists() else [], _FIRSTS)
        gap = int(options.session_gap.total_seconds() * 1000)
        engine.table("sessions", sql.SESSIONS.format(gap=gap, longest=DAY_MS))
        engine.table("merged_firsts", sql.FIRSTS)
        counts["decisions"] = engine.count("SELECT uuid FROM new_decisions")
        counts["conversions"] = engine.count("SELECT uuid FROM new_conversions")
        counts["duplicates"] = (
            engine.count("SELECT uuid FROM raw_decisions")
            + engine.count("SELECT uuid FROM raw_conversions")
            - counts["decisions"]
            - counts["conversions"]
        )
        counts["late"] = _late(engine, completed)
        _write_parts(engine, lake, run, options.account_id)
        state = run.staged / lake.state.relative_to(lake.root)
        state.mkdir(parents=True, exist_ok=True)
        engine.write_file(sql.TAILS.format(keep=DAY_MS + gap), state / "tails.parquet")
        # First decisions older than the retention go with their partitions.
        kept_from = int((options.now - timedelta(days=options.retention_days)).timestamp() * 1000)
        engine.write_file(
            f"SELECT {names(_FIRSTS)} FROM merged_firsts WHERE timestamp >= {kept_from}",
            state / "firsts.parquet",
        )
    finally:
        if engine is not staging:
            engine.close()
        staging.close()
    for file in new:
        manifest.add(file, run.name)
    (state / "manifest.json").write_bytes(manifest.dumps())
    report = None
    rejected.sort(key=lambda row: (row["file"], row["line"]))
    if rejected:
        report = run.staged / "_flagpost" / "rejects" / f"{run.name}.jsonl"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rejected))
    counts["rejected"] = len(rejected)
    return counts, report


def _stage(
    con: duckdb.DuckDBPyConnection, run: Run, new: list[InputFile], progress: bool
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    raw = run.work / "raw"
    raw.mkdir()
    counts = {"lines": 0, "not_exported": 0}
    rejected: list[dict[str, Any]] = []
    groups = _groups(new)
    bar = tqdm(
        total=sum(file.size for file in new), unit="B", unit_scale=True, desc="reading",
        disable=not progress, file=sys.stderr,
    )  # fmt: skip
    with bar:
        for number, group in enumerate(groups):
            lines, unreadable = read_lines(group)
            con.register("lines", lines)
            rejected += unreadable
            con.execute(sql.CHECKED)
            for kind, rows in (("decisions", sql.DECISION_ROWS),
                               ("conversions", sql.CONVERSION_ROWS)):  # fmt: skip
                con.execute(f"COPY ({rows}) TO {literal(raw / f'{kind}-{number}.parquet')}")
            counts["lines"] += _one(con, "SELECT count(*) FROM checked")
            counts["not_exported"] += _one(
                con,
                "SELECT count(*) FROM checked WHERE reason IS NULL "
                "AND kind NOT IN ('decision', 'conversion')",
            )
            for file, line, reason in con.execute(
                "SELECT file, line_no, reason FROM checked WHERE reason IS NOT NULL "
                "ORDER BY file, line_no"
            ).fetchall():
                rejected.append({"file": file, "line": line, "reason": reason})
            bar.update(sum(file.size for file in group))
    return counts, rejected


def read_lines(files: list[InputFile]) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The lines of ``files`` as a table (file, line_no, line), read by pyarrow's CSV reader
    with a separator JSON text never holds raw; a line that holds one anyway is not JSON,
    and is returned as rejected (with its number: each file is read on one thread, so the
    reader knows it)."""
    with ThreadPoolExecutor(2) as pool:
        read = list(pool.map(_read_file, files))
    tables = [table for table, _ in read if table.num_rows]
    rejected = [row for _, rows in read for row in rows]
    if not tables:
        return pa.table({"file": [], "line_no": [], "line": []}, schema=_LINES), rejected
    return pa.concat_tables(tables), rejected


_LINES = pa.schema([("file", pa.string()), ("line_no", pa.int64()), ("line", pa.string())])


def _read_file(file: InputFile) -> tuple[pa.Table, list[dict[str, Any]]]:
    if file.size == 0:
        return _LINES.empty_table(), []
    skipped: list[int] = []

    def skip(row: Any) -> str:
        skipped.append(row.number)
        return "skip"

    table = pa_csv.read_csv(
        file.path,
        read_options=pa_csv.ReadOptions(column_names=["line"], use_threads=False),
        parse_options=pa_csv.ParseOptions(
            delimiter="\x1f", quote_char=False, escape_char=False, newlines_in_values=False,
            ignore_empty_lines=False, invalid_row_handler=skip,
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types={"line": pa.string()}, strings_can_be_null=False
        ),
    )  # fmt: skip
    numbers = pa.array(range(1, table.num_rows + len(skipped) + 1), pa.int64())
    if skipped:
        keep = pa.array([n not in set(skipped) for n in range(1, len(numbers) + 1)])
        numbers = numbers.filter(keep)
    name = str(file.path)
    lines = pa.table(
        {"file": pa.array([name] * table.num_rows, pa.string()), "line_no": numbers,
         "line": table.column("line")},
        schema=_LINES,
    )  # fmt: skip
    reason = "not JSON (a truncated line, say)"
    return lines, [{"file": name, "line": number, "reason": reason} for number in skipped]


def _groups(files: list[InputFile]) -> list[list[InputFile]]:
    groups: list[list[InputFile]] = [[]]
    size = 0
    for file in files:
        if groups[-1] and size + file.size > GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(file)
        size += file.size
    return groups


def _late(engine: Engine, completed: set[str]) -> int:
    if not completed:
        return 0
    days = ", ".join(f"'{day}'" for day in sorted(completed))  # YYYY-MM-DD: ours, checked
    return engine.count(
        "SELECT timestamp FROM (SELECT timestamp FROM new_decisions UNION ALL "
        "SELECT timestamp FROM new_conversions) "
        f"WHERE strftime(epoch_ms(timestamp), '%Y-%m-%d') IN ({days})"
    )


def _write_parts(engine: Engine, lake: Lake, run: Run, account: str) -> None:
    session = "md5(n.visitor_id || ':' || s.session_start::VARCHAR) AS session_id"
    account_column = f"'{account}' AS account_id"  # checked: letters, digits, _ . -
    date = "strftime(epoch_ms(n.timestamp), '%Y-%m-%d') AS date"
    decisions = f"""
        SELECT {_prefixed(SCHEMAS["decisions"], session, account_column)}, {date},
               n.experiment_id AS experiment
        FROM new_decisions n JOIN sessions s ON s.uuid = n.uuid
    """
    events = f"""
        SELECT {_prefixed(SCHEMAS["events"], session, account_column)}, {date},
               n.event_name AS event
        FROM new_conversions n JOIN sessions s ON s.uuid = n.uuid
        JOIN ({sql.ATTRIBUTED}) a ON a.uuid = n.uuid
    """
    for kind, query, partition in (("decisions", decisions, "experiment"),
                                   ("events", events, "event")):  # fmt: skip
        target = run.staged / lake.type_dir(kind).relative_to(lake.root)
        engine.write_partitioned(query, target, ("date", partition))


def _prefixed(schema: Schema, session: str, account: str) -> str:
    chosen = []
    for column, _ in schema:
        if column == "session_id":
            chosen.append(session)
        elif column == "account_id":
            chosen.append(account)
        elif column == "experiments":
            chosen.append("a.experiments")
        else:
            chosen.append(f"n.{column}")
    return ", ".join(chosen)


def _one(con: duckdb.DuckDBPyConnection, query: str) -> int:
    row = con.execute(query).fetchone()
    return int(row[0]) if row else 0


def _load_days(lake: Lake) -> set[str]:
    path = lake.state / "days.json"
    return set(orjson.loads(path.read_bytes())) if path.exists() else set()


def _complete_days(
    lake: Lake, completed: set[str], open_since: tuple[float, ...], options: ExportOptions
) -> list[str]:
    """Mark each day complete whose end is ``lateness`` past and that no open file can still
    hold events of; the days marked now."""
    done = []
    for date in sorted(lake.dates() - completed):
        end = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
        if options.now < end + options.lateness:
            continue
        if any(opened < end.timestamp() for opened in open_since):
            continue
        lake.mark_complete(date)
        done.append(date)
    if done:
        lake.state.mkdir(parents=True, exist_ok=True)
        temporary = lake.state / "days.json.tmp"
        temporary.write_bytes(orjson.dumps(sorted(completed | set(done))))
        temporary.rename(lake.state / "days.json")
    return done
