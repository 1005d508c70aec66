"""Where the enrichment runs: DuckDB, embedded (the default), or Apache Spark.

Both take the export's queries in DuckDB's dialect (``service.export.sql``); Spark's
engine translates each with sqlglot, so there is one text of the enrichment. The interface is
small: make a table of a query, read Parquet files as a table, count, and write a query's
rows as one Parquet file or as Hive partitions.

Spark runs in local mode bound to 127.0.0.1 (``pip install 'flagpost[spark]'`` and a Java
runtime): the same SQL on a cluster is a matter of the session's master.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Protocol

import duckdb

from service.export import ExportError
from service.export.lake import Schema, literal

__all__ = ["ENGINES", "DuckEngine", "Engine", "SparkEngine", "open_engine", "to_spark"]

ENGINES = ("duckdb", "spark")


class Engine(Protocol):
    def table(self, name: str, query: str) -> None:
        """Make ``query``'s rows the table ``name``."""

    def view(self, name: str, query: str) -> None:
        """Make ``query`` the view ``name`` (computed where it is read)."""

    def parquet(self, name: str, files: list[Path], schema: Schema, columns: str = "*") -> None:
        """The table ``name``: ``columns`` of ``files`` (empty with ``schema`` when there
        are none)."""

    def count(self, query: str) -> int: ...

    def write_file(self, query: str, path: Path) -> None:
        """``query``'s rows as the one Parquet file ``path``."""

    def write_partitioned(self, query: str, target: Path, by: tuple[str, ...]) -> None:
        """``query``'s rows as Hive partitions under ``target`` (which does not exist yet),
        the ``by`` columns in the directory names only. In ``query``, the rows written come
        first in each join, the tables joined to them after."""

    def close(self) -> None: ...


def open_engine(name: str, scratch: Path) -> Engine:
    if name == "spark":
        return SparkEngine(scratch)
    return DuckEngine(scratch)


class DuckEngine:
    def __init__(self, scratch: Path, connection: duckdb.DuckDBPyConnection | None = None) -> None:
        self.con = connection or duckdb.connect(
            config={
                "temp_directory": str(scratch / "spill"),
                "memory_limit": "1GB",
                "preserve_insertion_order": False,
                # A partitioned write holds each open partition's rows until this many: the
                # default (half a million) times a week of dates and experiments does not
                # fit under the memory limit.
                "partitioned_write_flush_threshold": 65536,
            }
        )

    def table(self, name: str, query: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {query}")

    def view(self, name: str, query: str) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {query}")

    def parquet(self, name: str, files: list[Path], schema: Schema, columns: str = "*") -> None:
        if files:
            listed = ", ".join(literal(path) for path in files)
            self.con.execute(
                f"CREATE OR REPLACE TEMP VIEW {name} AS "
                f"SELECT {columns} FROM read_parquet([{listed}], union_by_name = true)"
            )
        else:
            columns = ", ".join(f"{column} {kind}" for column, kind in schema)
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} ({columns})")

    def count(self, query: str) -> int:
        row = self.con.execute(f"SELECT count(*) FROM ({query})").fetchone()
        return int(row[0]) if row else 0

    def write_file(self, query: str, path: Path) -> None:
        self.con.execute(f"COPY ({query}) TO {literal(path)} (FORMAT parquet)")

    def write_partitioned(self, query: str, target: Path, by: tuple[str, ...]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        # The written rows are wide and stream from the left of each join; the tables joined
        # to them (sessions, attribution) are narrow. DuckDB's estimate of the rows left after
        # de-duplication is far too low, and it would build its hash table on the wide side
        # (3 times slower at 5 million rows, spilling), so its joins build on the right here.
        self.con.execute("SET disabled_optimizers = 'build_side_probe_side'")
        try:
            self.con.execute(
                f"COPY ({query}) TO {literal(target)} (FORMAT parquet, "
                f"PARTITION_BY ({', '.join(by)}), FILENAME_PATTERN 'part-{{uuid}}')"
            )
        finally:
            self.con.execute("RESET disabled_optimizers")

    def close(self) -> None:
        self.con.close()


def to_spark(query: str) -> str:
    """``query`` (DuckDB's dialect) in Spark SQL."""
    import sqlglot  # noqa: PLC0415  # the spark extra's

    return str(sqlglot.transpile(query, read="duckdb", write="spark")[0])


class SparkEngine:
    def __init__(self, scratch: Path) -> None:
        try:
            from pyspark.sql import SparkSession  # noqa: PLC0415  # the optional extra
        except ImportError:
            raise ExportError(
                "--engine spark needs the spark extra: pip install 'flagpost[spark]'"
            ) from None
        self.scratch = scratch
        self.spark: Any = (
            SparkSession.builder.master("local[2]")
            .appName("flagpost-export")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", "4")
            .getOrCreate()
        )
        self.spark.sparkContext.setLogLevel("ERROR")

    def table(self, name: str, query: str) -> None:
        frame = self.spark.sql(to_spark(query)).cache()
        frame.createOrReplaceTempView(name)

    def view(self, name: str, query: str) -> None:
        self.spark.sql(to_spark(query)).createOrReplaceTempView(name)

    def parquet(self, name: str, files: list[Path], schema: Schema, columns: str = "*") -> None:
        if files:
            frame = self.spark.read.parquet(*(str(path) for path in files))
            if columns != "*":
                frame = frame.select(*(column.strip() for column in columns.split(",")))
        else:  # Spark's names for the types from sqlglot too
            nulls = ", ".join(f"CAST(NULL AS {kind}) AS {column}" for column, kind in schema)
            frame = self.spark.sql(to_spark(f"SELECT {nulls} WHERE false"))
        frame.createOrReplaceTempView(name)

    def count(self, query: str) -> int:
        return int(self.spark.sql(to_spark(f"SELECT count(*) FROM ({query})")).collect()[0][0])

    def write_file(self, query: str, path: Path) -> None:
        out = self.scratch / f"spark-{path.name}"
        self.spark.sql(to_spark(query)).coalesce(1).write.parquet(str(out))
        (part,) = out.glob("part-*.parquet")
        part.rename(path)
        shutil.rmtree(out)

    def write_partitioned(self, query: str, target: Path, by: tuple[str, ...]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.spark.sql(to_spark(query)).write.partitionBy(*by).parquet(str(target))
        for path in [*target.rglob("_SUCCESS"), *target.rglob(".*.crc")]:
            path.unlink()  # Spark's own markers: the lake's _SUCCESS means a complete day

    def close(self) -> None:
        self.spark.catalog.clearCache()
