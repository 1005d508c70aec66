"""The lake on disk: its layout, its lock, and runs that land whole or not at all.

    <lake>/v1/account_id=<ID>/type=decisions/date=YYYY-MM-DD/experiment=<id>/*.parquet
    <lake>/v1/account_id=<ID>/type=events/date=YYYY-MM-DD/event=<name>/*.parquet
    <lake>/v1/account_id=<ID>/type=<type>/date=YYYY-MM-DD/_SUCCESS
    <lake>/_flagpost/        the export's own: lock, state, runs, rejects reports

Hive-style readers (DuckDB, Spark, Trino, Athena) skip names that begin with ``_``, so they
never see the export's own files. A run writes everything (new parts, new state, its rejects
report) under ``_flagpost/runs/<run>/``, marks it committed, and only then moves each file
into place with a rename: a reader sees a part whole or not at all, and a run cut short is
either finished (committed) or thrown away (not) by the next export.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service.durable import Held, lock_file, sync_directory
from service.export import LakeLocked, LakeUnwritable

__all__ = ["KINDS", "SCHEMAS", "Lake", "Run", "Schema", "literal", "names"]

KINDS = {"decisions": "experiment", "events": "event"}

#: Columns and their types (DuckDB's names for them), in order.
Schema = tuple[tuple[str, str], ...]
_ATTRIBUTES = "STRUCT(id VARCHAR, name VARCHAR, type VARCHAR, value VARCHAR)[]"
_EXPERIMENTS = (
    "STRUCT(campaign_id VARCHAR, experiment_id VARCHAR, variation_id VARCHAR, "
    "is_holdback BOOLEAN)[]"
)
#: The specification's schema tables: the lake's two kinds of rows.
SCHEMAS: dict[str, Schema] = {
    "decisions": (
        ("uuid", "VARCHAR"), ("timestamp", "BIGINT"), ("process_timestamp", "BIGINT"),
        ("visitor_id", "VARCHAR"), ("session_id", "VARCHAR"), ("account_id", "VARCHAR"),
        ("campaign_id", "VARCHAR"), ("experiment_id", "VARCHAR"), ("variation_id", "VARCHAR"),
        ("attributes", _ATTRIBUTES), ("user_ip", "VARCHAR"), ("user_agent", "VARCHAR"),
        ("referer", "VARCHAR"), ("is_holdback", "BOOLEAN"), ("revision", "VARCHAR"),
        ("client_engine", "VARCHAR"), ("client_version", "VARCHAR"),
    ),
    "events": (
        ("uuid", "VARCHAR"), ("timestamp", "BIGINT"), ("process_timestamp", "BIGINT"),
        ("visitor_id", "VARCHAR"), ("session_id", "VARCHAR"), ("account_id", "VARCHAR"),
        ("experiments", _EXPERIMENTS), ("entity_id", "VARCHAR"), ("attributes", _ATTRIBUTES),
        ("user_ip", "VARCHAR"), ("user_agent", "VARCHAR"), ("referer", "VARCHAR"),
        ("event_type", "VARCHAR"), ("event_name", "VARCHAR"), ("revenue", "BIGINT"),
        ("value", "DOUBLE"), ("quantity", "BIGINT"), ("tags", "MAP(VARCHAR, VARCHAR)"),
        ("revision", "VARCHAR"), ("client_engine", "VARCHAR"), ("client_version", "VARCHAR"),
    ),
}  # fmt: skip


def names(schema: Schema) -> str:
    """The column names of ``schema``, as a select list."""
    return ", ".join(name for name, _ in schema)


_COMMITTED = "COMMITTED"


def literal(path: Path | str) -> str:
    """``path`` as an SQL string literal (a lake's path may hold a quote)."""
    return "'" + str(path).replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Lake:
    root: Path
    account_id: str

    @property
    def own(self) -> Path:
        return self.root / "_flagpost"

    @property
    def state(self) -> Path:
        return self.own / "state"

    def type_dir(self, kind: str) -> Path:
        return self.root / "v1" / f"account_id={self.account_id}" / f"type={kind}"

    def date_dir(self, kind: str, date: str) -> Path:
        return self.type_dir(kind) / f"date={date}"

    def parts(self, kind: str, dates: list[str] | None = None) -> list[Path]:
        """The Parquet parts of ``kind`` (on ``dates`` only, if given)."""
        if dates is None:
            return sorted(self.type_dir(kind).glob("date=*/*/*.parquet"))
        return [
            part for date in dates for part in sorted(self.date_dir(kind, date).glob("*/*.parquet"))
        ]

    def dates(self) -> set[str]:
        """The dates that have a partition of either kind."""
        found = set()
        for kind in KINDS:
            for directory in self.type_dir(kind).glob("date=*"):
                found.add(directory.name.removeprefix("date="))
        return found

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lake's lock for the block, or raise ``LakeLocked`` at once."""
        try:
            self.own.mkdir(parents=True, exist_ok=True)
            descriptor = lock_file(self.own / "lock")
        except Held as held:
            raise LakeLocked(
                f"{self.root}: another export is writing to this lake (process {held.holder})"
            ) from None
        except OSError as error:
            raise LakeUnwritable(f"{self.root}: cannot be written: {error.strerror}") from None
        try:
            yield
        finally:
            os.close(descriptor)

    def mark_complete(self, date: str) -> None:
        """Write ``_SUCCESS`` in both kinds' partitions of ``date``."""
        for kind in KINDS:
            directory = self.date_dir(kind, date)
            directory.mkdir(parents=True, exist_ok=True)
            marker = directory / "_SUCCESS"
            temporary = directory / "._SUCCESS.tmp"
            temporary.write_bytes(b"")
            temporary.rename(marker)

    def remove_dates_before(self, date: str) -> list[str]:
        """Delete every partition of a date before ``date``; the dates removed."""
        removed = sorted(day for day in self.dates() if day < date)
        for day in removed:
            for kind in KINDS:
                shutil.rmtree(self.date_dir(kind, day), ignore_errors=True)
        return removed


class Run:
    """One export run's files, landed together by ``land``."""

    def __init__(self, lake: Lake, name: str) -> None:
        self.lake = lake
        self.name = name
        self.dir = lake.own / "runs" / name
        self.staged = self.dir / "staged"  # mirrors the lake's root
        self.work = self.dir / "work"  # the engine's scratch, never landed

    @classmethod
    def begin(cls, lake: Lake) -> Run:
        name = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        run = cls(lake, name)
        try:
            run.staged.mkdir(parents=True)
            run.work.mkdir(parents=True)
        except OSError as error:
            raise LakeUnwritable(f"{lake.root}: cannot be written: {error.strerror}") from None
        return run

    def land(self) -> None:
        """Commit the run, then move its files into place (what ``recover`` would finish)."""
        (self.dir / _COMMITTED).write_bytes(b"")
        sync_directory(self.dir)
        self._move()

    def _move(self) -> None:
        for source in sorted(self.staged.rglob("*")):
            if source.is_file():
                target = self.lake.root / source.relative_to(self.staged)
                target.parent.mkdir(parents=True, exist_ok=True)
                source.rename(target)
        shutil.rmtree(self.dir)

    def abandon(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @classmethod
    def recover(cls, lake: Lake) -> int:
        """Finish the committed runs an earlier export was cut short in, and throw away the
        others; how many were finished."""
        finished = 0
        for directory in sorted((lake.own / "runs").glob("*")):
            run = cls(lake, directory.name)
            if (directory / _COMMITTED).exists():
                run._move()
                finished += 1
            else:
                run.abandon()
        return finished
