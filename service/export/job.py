"""One export run on DuckDB: new input files in, new parts, state and a rejects report out.

1. Stage: the new files, a group of up to ``GROUP_BYTES`` at a time, are read as lines,
   checked and typed (``sql.staged``) into Parquet files in the run's scratch directory;
   the lines rejected, with their numbers and reasons, go to the rejects report. DuckDB
   streams each group: never the whole log in memory.
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
from tqdm import tqdm

from service.export import ExportError, LakeUnwritable, sql
from service.export.engines import DuckEngine, Engine, open_engine
from service.export.inputs import InputFile, Manifest, find_inputs
from service.export.lake import SCHEMAS, Lake, Run, Schema, literal, names

__all__ = ["ExportOptions", "Report", "export"]

#: Bytes of input staged by one query (DuckDB streams them; a group is a step of progress).
GROUP_BYTES = 1024**3
DAY_MS = 86_400_000
#: First decisions' files (one per run) merged into one once there are this many.
FIRSTS_FILES = 16

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
                report_counts, rejects, merged = _run(lake, run, new, manifest, completed, options)
                run.land()
                for path in merged:  # their rows are in the new merged file: left, they would
                    path.unlink(missing_ok=True)  # repeat them, which readers allow
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
) -> tuple[dict[str, int], Path | None, list[Path]]:
    staging = DuckEngine(run.work)
    engine: Engine = staging
    try:
        counts, rejected = _stage(staging.con, run, new, options.progress)
        if options.engine != "duckdb":
            engine = open_engine(options.engine, run.work)
        staged = sorted((run.work / "raw").glob("staged-*.parquet"))  # one per group, never none
        engine.parquet("staged", staged, ())
        engine.view("raw_decisions", sql.DECISION_ROWS)
        engine.view("raw_conversions", sql.CONVERSION_ROWS)
        dates = [
            row[0]
            for row in staging.con.execute(
                "SELECT DISTINCT strftime(epoch_ms(timestamp), '%Y-%m-%d') FROM read_parquet(?) "
                "WHERE reason IS NULL AND kind IN ('decision', 'conversion')",
                [[str(path) for path in staged]],
            ).fetchall()
        ]
        parts = [part for kind in ("decisions", "events") for part in lake.parts(kind, dates)]
        engine.parquet("lake_uuids", parts, (("uuid", "VARCHAR"),), columns="uuid")
        for kind, columns in (("decision", sql.DECISION_COLUMNS),
                              ("conversion", sql.CONVERSION_COLUMNS)):  # fmt: skip
            raw = f"raw_{kind}s"
            engine.table(f"repeated_{kind}s", sql.REPEATED.format(kind=kind))
            engine.table(
                f"chosen_{kind}s",
                sql.CHOSEN.format(columns=columns, raw=raw, repeated=f"repeated_{kind}s"),
            )
            engine.table(f"known_{kind}s", sql.KNOWN.format(raw=raw))
            engine.view(
                f"new_{kind}s",
                sql.NEW_ROWS.format(raw=raw, repeated=f"repeated_{kind}s",
                                    chosen=f"chosen_{kind}s", known=f"known_{kind}s"),
            )  # fmt: skip
        tails = lake.state / "tails.parquet"
        engine.parquet("tails", [tails] if tails.exists() else [], _TAILS)
        firsts = sorted(lake.state.glob("firsts*.parquet"))
        engine.parquet("firsts", firsts, _FIRSTS)
        gap = int(options.session_gap.total_seconds() * 1000)
        engine.table("sessions", sql.SESSIONS.format(gap=gap, longest=DAY_MS))
        # First decisions older than the retention go with their partitions.
        kept_from = int((options.now - timedelta(days=options.retention_days)).timestamp() * 1000)
        # Earlier firsts merged into one file every FIRSTS_FILES runs, or when some expired
        # (older than the retention: removed, not only left unread); otherwise this run adds
        # a file of the firsts it changed, and needs only those of the visitors seen now.
        expired = bool(firsts) and _one(
            staging.con, f"SELECT count(*) FROM read_parquet(?) WHERE timestamp < {kept_from}",
            [str(path) for path in firsts],
        ) > 0  # fmt: skip
        merging = not firsts or expired or len(firsts) >= FIRSTS_FILES
        seen = "" if merging else sql.SEEN_NOW
        engine.table("merged_firsts", sql.FIRSTS.format(kept_from=kept_from, visitors=seen))
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
        merged = _write_firsts(engine, firsts, state, run.name, kept_from, merging)
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
    return counts, report, merged


def _write_firsts(
    engine: Engine, firsts: list[Path], state: Path, run: str, kept_from: int, merging: bool
) -> list[Path]:
    """The first decisions after this run (``merged_firsts``): all of them in one file when
    ``merging``, else a file of those the new decisions are, so that a small run does not
    write every visitor's again. The files merged, to remove once the run has landed."""
    kept = f"SELECT {names(_FIRSTS)} FROM merged_firsts WHERE timestamp >= {kept_from}"
    if merging:
        engine.write_file(kept, state / "firsts.parquet")
        return [path for path in firsts if path.name != "firsts.parquet"]
    engine.write_file(
        f"{kept} AND uuid IN (SELECT uuid FROM new_decisions)", state / f"firsts-{run}.parquet"
    )
    return []


def _stage(
    con: duckdb.DuckDBPyConnection, run: Run, new: list[InputFile], progress: bool
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Check and type the lines of ``new``, a group at a time, into ``raw/staged-<n>``
    Parquet files; the counts, and the rejected lines with their file, number and reason."""
    raw = run.work / "raw"
    raw.mkdir()
    counts = {"lines": 0, "not_exported": 0}
    rejected: list[dict[str, Any]] = []
    bar = tqdm(
        total=sum(file.size for file in new), unit="B", unit_scale=True, desc="reading",
        disable=not progress, file=sys.stderr,
    )  # fmt: skip
    with bar:
        for number, group in enumerate(_groups(new)):
            targets, unsplit = _stage_group(con, group, raw / f"staged-{number}")
            rejected += unsplit
            counts["lines"] += len(unsplit)
            for target in targets:
                lines_read, others, failed = _summary(con, target)
                counts["lines"] += lines_read
                counts["not_exported"] += others
                rejected += _numbered_rejects(con, target)
                rejected += _rejected(con, [file for file in group if str(file.path) in failed])
            bar.update(sum(file.size for file in group))
    return counts, rejected


def _stage_group(
    con: duckdb.DuckDBPyConnection, group: list[InputFile], stem: Path
) -> tuple[list[Path], list[dict[str, Any]]]:
    """Stage ``group`` as one Parquet file read by DuckDB's reader, or, if that reader cannot
    split a file of it into lines (bytes that are not UTF-8, a stray separator), each file
    alone, by pyarrow's reader where DuckDB's fails: the files written, and the lines that
    neither can split off (rejected)."""
    target = stem.with_suffix(".parquet")
    try:
        _copy(con, sql.staged(_csv_lines(group)), target)
        return [target], []
    except duckdb.Error:
        target.unlink(missing_ok=True)
        if len(group) > 1:
            targets: list[Path] = []
            unsplit: list[dict[str, Any]] = []
            for k, file in enumerate(group):
                written, lost = _stage_group(con, [file], stem.with_name(f"{stem.name}-{k}"))
                targets += written
                unsplit += lost
            return targets, unsplit
    lines, unsplit = read_lines(group)
    con.register("lines", lines)
    _copy(con, sql.staged("lines"), target)
    con.unregister("lines")
    return [target], unsplit


def _summary(con: duckdb.DuckDBPyConnection, target: Path) -> tuple[int, int, list[str]]:
    """A staged file's lines, those of other kinds, and the files with rejected lines whose
    numbers are not known yet."""
    row = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE reason IS NULL AND kind NOT IN "
        "('decision', 'conversion')), coalesce(list(DISTINCT file) FILTER (WHERE reason "
        f"IS NOT NULL AND line_no IS NULL), []) FROM read_parquet({literal(target)})"
    ).fetchone()
    assert row is not None  # an aggregate's one row
    return int(row[0]), int(row[1]), list(row[2])


def _copy(con: duckdb.DuckDBPyConnection, query: str, target: Path) -> None:
    con.execute(f"COPY ({query}) TO {literal(target)} (FORMAT parquet)")


def _csv_lines(files: list[InputFile]) -> str:
    """The lines of ``files`` as DuckDB's CSV reader splits them (in parallel, and fast),
    with a separator JSON text never holds raw: without their numbers."""
    listed = ", ".join(literal(file.path) for file in files)
    return (
        f"(SELECT filename AS file, NULL::BIGINT AS line_no, line FROM read_csv([{listed}], "
        "columns = {'line': 'VARCHAR'}, delim = '\x1f', quote = '', escape = '', "
        "header = false, auto_detect = false, filename = true))"
    )


def _numbered_rejects(con: duckdb.DuckDBPyConnection, target: Path) -> list[dict[str, Any]]:
    rows = con.execute(
        f"SELECT file, line_no, reason FROM read_parquet({literal(target)}) "
        "WHERE reason IS NOT NULL AND line_no IS NOT NULL"
    ).fetchall()
    return _rejects(rows)


def _rejected(con: duckdb.DuckDBPyConnection, files: list[InputFile]) -> list[dict[str, Any]]:
    """The rejected lines of ``files`` with their numbers and reasons: the files with any
    are read again by the reader that numbers lines, and checked by the same query."""
    if not files:
        return []
    lines, _ = read_lines(files)  # the lines it cannot split off were staged so: listed then
    con.register("lines", lines)
    rows = con.execute(
        f"SELECT file, line_no, reason FROM ({sql.staged('lines')}) WHERE reason IS NOT NULL"
    ).fetchall()
    con.unregister("lines")
    return _rejects(rows)


def _rejects(rows: list[tuple[str, int, str]]) -> list[dict[str, Any]]:
    return [{"file": file, "line": line, "reason": reason} for file, line, reason in rows]


def read_lines(files: list[InputFile]) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The lines of ``files`` as a table (file, line_no, line), numbered; a line that is not
    UTF-8 text is returned as rejected instead. The reader of files DuckDB's reader cannot
    split, or whose rejected lines need their numbers: slower, and never the first choice."""
    names: list[str] = []
    numbers: list[int] = []
    texts: list[str] = []
    rejected: list[dict[str, Any]] = []
    for file in files:
        name = str(file.path)
        with file.path.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                try:
                    text = raw.rstrip(b"\r\n").decode()
                except UnicodeDecodeError:
                    rejected.append({"file": name, "line": number, "reason": "not UTF-8 text"})
                    continue
                names.append(name)
                numbers.append(number)
                texts.append(text)
    return pa.table({"file": names, "line_no": numbers, "line": texts}, schema=_LINES), rejected


_LINES = pa.schema([("file", pa.string()), ("line_no", pa.int64()), ("line", pa.string())])


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


def _one(con: duckdb.DuckDBPyConnection, query: str, *parameters: Any) -> int:
    row = con.execute(query, parameters or None).fetchone()
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
