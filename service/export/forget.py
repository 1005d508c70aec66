"""``flagpost forget``: erase visitors from the lake (the right to erasure).

Each part holding one of the visitors is written again without their rows, next to itself,
and renamed over the old one (a part left empty is removed): a reader sees the old part or
the new, never half of one. The export's own state (sessions' tails, first decisions) is
rewritten the same way, so their history no longer steers later rows. It runs under the
lake's lock; cut short, it can be run again and finishes the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from service.export import LakeUnwritable
from service.export.lake import KINDS, Lake, literal

__all__ = ["Forgotten", "forget"]


@dataclass(frozen=True, slots=True)
class Forgotten:
    rows: int
    parts_rewritten: int
    parts_removed: int


def forget(lake: Lake, visitors: list[str]) -> Forgotten:
    """Remove every row of ``visitors`` from ``lake``; what was removed."""
    rows = rewritten = removed = 0
    with lake.locked():
        con = duckdb.connect()
        try:
            con.execute("CREATE TEMP TABLE forgotten AS SELECT unnest(?::VARCHAR[]) AS visitor_id",
                        [visitors])  # fmt: skip
            parts = [part for kind in KINDS for part in lake.parts(kind)]
            state = [lake.state / "tails.parquet", *sorted(lake.state.glob("firsts*.parquet"))]
            for path in [*parts, *(path for path in state if path.exists())]:
                found = _count(con, path)
                if not found:
                    continue
                rows += found if path in parts else 0
                kept = _rewrite(con, path)
                if kept == 0 and path in parts:
                    path.unlink()
                    removed += 1
                else:
                    rewritten += 1
        except OSError as error:
            raise LakeUnwritable(f"{lake.root}: cannot be written: {error}") from None
        finally:
            con.close()
    return Forgotten(rows, rewritten, removed)


def _count(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    row = con.execute(
        "SELECT count(*) FROM read_parquet(?) "
        "WHERE visitor_id IN (SELECT visitor_id FROM forgotten)",
        [str(path)],
    ).fetchone()
    return int(row[0]) if row else 0


def _rewrite(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Write ``path`` again without the forgotten visitors' rows; the rows kept."""
    temporary = path.with_name(f".{path.name}.forget")
    con.execute(
        f"COPY (SELECT * FROM read_parquet(?) WHERE visitor_id NOT IN "
        f"(SELECT visitor_id FROM forgotten)) TO {literal(temporary)} (FORMAT parquet)",
        [str(path)],
    )
    kept = con.execute("SELECT count(*) FROM read_parquet(?)", [str(temporary)]).fetchone()
    if kept and kept[0] == 0:
        temporary.unlink()
        return 0
    temporary.rename(path)
    return int(kept[0]) if kept else 0
