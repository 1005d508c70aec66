"""``flagpost query``: SQL over the lake with DuckDB, on the tables ``decisions`` and ``events``.

The tables hold exactly the specification's columns (the partition values are in them
already: ``experiment_id``, ``event_name``, the date of ``timestamp``). An account with no
parts yet has the two tables, empty, so a query still runs.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import orjson

from service.export import ExportError
from service.export.engines import DuckEngine, Engine, SparkEngine, to_spark
from service.export.lake import SCHEMAS, Lake, names

__all__ = ["FORMATS", "account_of", "connect", "run_query", "spark_answer"]

FORMATS = ("table", "csv", "json")


def account_of(root: Path, account_id: str | None) -> str:
    """The account to query: the one given, else the lake's only one."""
    if account_id:
        return account_id
    found = sorted(
        path.name.removeprefix("account_id=") for path in (root / "v1").glob("account_id=*")
    )
    if len(found) != 1:
        held = ", ".join(found) or "none"
        raise ExportError(f"{root}: name the account with --account-id (the lake has: {held})")
    return found[0]


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the tables ``decisions`` and ``events`` over ``lake``."""
    if not lake.root.is_dir():
        raise ExportError(f"{lake.root}: no lake there")
    con = duckdb.connect()
    define_tables(DuckEngine(lake.root, connection=con), lake)
    return con


def define_tables(engine: Engine, lake: Lake) -> None:
    """``decisions`` and ``events`` over ``lake``'s parts, the specification's columns only."""
    for table, schema in SCHEMAS.items():
        parts = lake.parts(table)
        engine.parquet(table, parts, schema, columns=names(schema) if parts else "*")


def run_query(con: duckdb.DuckDBPyConnection, text: str, format: str) -> str:
    """The answer to ``text`` in ``format`` (``table``, ``csv`` or ``json``)."""
    try:
        relation = con.sql(text)
    except duckdb.Error as error:
        raise ExportError(f"the query failed: {str(error).splitlines()[0]}") from None
    if relation is None:
        return ""
    if format == "table":
        return str(relation)
    columns = relation.columns
    rows = relation.fetchall()
    if format == "json":
        objects = [dict(zip(columns, row, strict=True)) for row in rows]
        return orjson.dumps(objects, default=_plain, option=orjson.OPT_INDENT_2).decode() + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def _plain(value: Any) -> Any:
    return str(value)


def spark_answer(lake: Lake, text: str, format: str) -> str:
    """``text`` (DuckDB's dialect, which takes the specification's Presto-style SQL) run on
    Spark, translated by sqlglot, over the same tables; answered as ``run_query`` does."""
    with tempfile.TemporaryDirectory(prefix="flagpost-query-") as scratch:
        engine = SparkEngine(Path(scratch))
        try:
            define_tables(engine, lake)
            try:
                frame = engine.spark.sql(to_spark(text)).toPandas()
            except Exception as error:  # Spark's errors have no common base worth naming
                reason = str(error).splitlines()[0]
                raise ExportError(f"the query failed on Spark: {reason}") from None
        finally:
            engine.close()
    con = duckdb.connect()
    try:
        con.register("answer", frame)
        return run_query(con, "SELECT * FROM answer", format)
    finally:
        con.close()
