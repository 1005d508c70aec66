"""The export's SQL, in DuckDB's dialect: checking raw lines, typing them, and the enrichment
(de-duplication, sessionization, attribution) over the typed rows.

Checking and typing run on DuckDB. The enrichment is written once, as queries over tables,
and runs on the engine chosen (``service.export.engines``): as it is on DuckDB, translated
by sqlglot on Spark. Names in braces (``{gap}``) are filled in with numbers the caller
checked, never with text from the input. Tables the enrichment expects:

- ``lines(file, line_no, line)``: the raw lines of the new input files;
- ``lake_uuids(uuid)``: the uuids already in the lake on the dates the new rows fall on;
- ``tails(visitor_id, session_start, last_timestamp)``: each visitor's latest session;
- ``firsts(visitor_id, campaign_id, experiment_id, variation_id, timestamp, uuid)``: each
  visitor's first decision in each experiment, from earlier runs.
"""

from __future__ import annotations

__all__ = [
    "ATTRIBUTED",
    "CHECKED",
    "CONVERSION_ROWS",
    "DECISION_ROWS",
    "DEDUPLICATED",
    "FIRSTS",
    "SESSIONS",
    "TAILS",
]

_ATTRIBUTES = '\'[{"id":"VARCHAR","name":"VARCHAR","type":"VARCHAR","value":"VARCHAR"}]\''
_TAGS = "'\"MAP(VARCHAR, VARCHAR)\"'"
_TEXT = "('VARCHAR')"
_INTEGER = "('UBIGINT', 'BIGINT')"
_NUMBER = "('UBIGINT', 'BIGINT', 'DOUBLE')"
#: Every field the export reads, extracted from a line in one parse (``v[i]``, 1-based).
FIELDS = (
    "kind", "uuid", "timestamp", "process_timestamp", "visitor_id", "user_ip", "user_agent",
    "referer", "revision", "client_engine", "client_version", "attributes", "campaign_id",
    "experiment_id", "variation_id", "is_holdback", "entity_id", "event_name", "event_type",
    "revenue", "value", "quantity", "tags",
)  # fmt: skip
_PATHS = "[" + ", ".join(f"'$.{name}'" for name in FIELDS) + "]"


def _field(name: str) -> str:
    return f"v[{FIELDS.index(name) + 1}]"


#: What a JSON value's text looks like, by the JSON types a field may have: checked on the
#: text ``json_extract`` gives (valid JSON already), cheaper than parsing it again.
_SHAPES = {
    _TEXT: "starts_with({value}, '\"')",
    # At most 18 digits: every such number fits a BIGINT, so a longer one is refused here
    # rather than failing the cast (and the run) later.
    _INTEGER: "regexp_full_match({value}, '-?[0-9]{{1,18}}')",
    _NUMBER: "regexp_full_match({value}, '-?[0-9]+([.][0-9]+)?([eE][-+]?[0-9]+)?')",
    "('BOOLEAN')": "{value} IN ('true', 'false')",
}


def _is(name: str, types: str) -> str:
    return _SHAPES[types].format(value=_field(name))


def _required(name: str, types: str) -> str:
    return f"CASE WHEN NOT coalesce({_is(name, types)}, false) THEN '{name}' END"


def _optional(name: str, types: str) -> str:
    value = _field(name)
    return f"CASE WHEN {value} <> 'null' AND NOT {_is(name, types)} THEN '{name}' END"


def _structured(name: str, shape: str) -> str:
    value = _field(name)
    return (
        f"CASE WHEN {value} <> 'null' "
        f"AND try(json_transform_strict({value}, {shape})) IS NULL THEN '{name}' END"
    )


_COMMON = [
    _required("uuid", _TEXT),
    _required("timestamp", _INTEGER),
    _required("process_timestamp", _INTEGER),
    _required("visitor_id", _TEXT),
    _optional("user_ip", _TEXT),
    _optional("user_agent", _TEXT),
    _optional("referer", _TEXT),
    _optional("revision", _TEXT),
    _optional("client_engine", _TEXT),
    _optional("client_version", _TEXT),
    _structured("attributes", _ATTRIBUTES),
]
_DECISION = [
    *_COMMON,
    _required("campaign_id", _TEXT),
    _required("experiment_id", _TEXT),
    _required("variation_id", _TEXT),
    _optional("is_holdback", "('BOOLEAN')"),
]
_CONVERSION = [
    *_COMMON,
    _required("entity_id", _TEXT),
    _required("event_name", _TEXT),
    _optional("event_type", _TEXT),
    _optional("revenue", _INTEGER),
    _optional("value", _NUMBER),
    _optional("quantity", _INTEGER),
    _structured("tags", _TAGS),
]


def _problems(checks: list[str]) -> str:
    listed = ", ".join(checks)
    return f"array_to_string(list_filter([{listed}], lambda x: x IS NOT NULL), ', ')"


#: Each line's fields (``v``, from one parse), its kind and, if it cannot be exported, why
#: (``reason``). Kinds the lake does not hold (``odp``, ``visitor_data``) are let through as
#: such, to be counted.
CHECKED = f"""
CREATE OR REPLACE TEMP TABLE checked AS
WITH parsed AS (
    SELECT file, line_no, v,
           CASE WHEN starts_with({_field("kind")}, '"')
                THEN {_field("kind")} ->> '$' END AS kind
    FROM (  -- NULL for a line that is not JSON: one parse, and an error only for those
        SELECT file, line_no, try(json_extract(line, {_PATHS})) AS v
        FROM lines
        WHERE line <> ''
    )
)
SELECT file, line_no, v, kind,
    CASE
        WHEN v IS NULL THEN 'not JSON (a truncated line, say)'
        WHEN kind IS NULL THEN 'not an object with a kind'
        WHEN kind = 'decision' AND {_problems(_DECISION)} <> ''
            THEN 'decision: missing or mistyped ' || {_problems(_DECISION)}
        WHEN kind = 'conversion' AND {_problems(_CONVERSION)} <> ''
            THEN 'conversion: missing or mistyped ' || {_problems(_CONVERSION)}
        WHEN kind NOT IN ('decision', 'conversion', 'odp', 'visitor_data')
            THEN 'unknown kind ' || kind
    END AS reason
FROM parsed
"""


def _text(name: str) -> str:
    return f"{_field(name)} ->> '$' AS {name}"


_COMMON_COLUMNS = f"""
    {_text("uuid")},
    {_field("timestamp")}::BIGINT AS timestamp,
    {_field("process_timestamp")}::BIGINT AS process_timestamp,
    {_text("visitor_id")}"""
_CONTEXT_COLUMNS = f"""
    coalesce(json_transform_strict({_field("attributes")}, {_ATTRIBUTES}), [])
        AS attributes,
    {_text("user_ip")}, {_text("user_agent")}, {_text("referer")}"""
_CLIENT_COLUMNS = f"""
    {_text("revision")}, {_text("client_engine")}, {_text("client_version")},
    file, line_no"""

#: The typed decision rows of the checked lines.
DECISION_ROWS = f"""
SELECT {_COMMON_COLUMNS},
    {_text("campaign_id")}, {_text("experiment_id")}, {_text("variation_id")},
    {_CONTEXT_COLUMNS},
    coalesce({_field("is_holdback")}::BOOLEAN, false) AS is_holdback,
    {_CLIENT_COLUMNS}
FROM checked WHERE kind = 'decision' AND reason IS NULL
"""

#: The typed conversion rows of the checked lines.
CONVERSION_ROWS = f"""
SELECT {_COMMON_COLUMNS},
    {_text("entity_id")},
    {_CONTEXT_COLUMNS},
    coalesce({_field("event_type")} ->> '$', 'custom') AS event_type,
    {_text("event_name")},
    {_field("revenue")}::BIGINT AS revenue,
    {_field("value")}::DOUBLE AS value,
    {_field("quantity")}::BIGINT AS quantity,
    coalesce(json_transform_strict({_field("tags")}, {_TAGS}), MAP {{}}) AS tags,
    {_CLIENT_COLUMNS}
FROM checked WHERE kind = 'conversion' AND reason IS NULL
"""

#: ``{table}`` without the rows whose uuid came before (in an earlier line, file or run):
#: the first line of a uuid is kept, in the order of process time, file and line.
DEDUPLICATED = """
SELECT * FROM {raw}
WHERE uuid NOT IN (SELECT uuid FROM lake_uuids)
QUALIFY row_number() OVER (PARTITION BY uuid ORDER BY process_timestamp, file, line_no) = 1
"""

#: Sessions of every new row: a visitor's events (decisions and conversions) form a session
#: until ``{gap}`` ms pass without one; a session longer than a day is cut each day from its
#: start, a new one beginning at the first event after the cut. A visitor's latest session
#: from earlier runs (``tails``) takes part as a row that fixes its start, so a session
#: spanning two runs keeps its id. The id is derived from the visitor and the session's
#: start: the same events give the same id in every run.
SESSIONS = """
WITH events AS (
    SELECT visitor_id, timestamp, uuid, NULL::BIGINT AS fixed_start FROM new_decisions
    UNION ALL
    SELECT visitor_id, timestamp, uuid, NULL::BIGINT FROM new_conversions
    UNION ALL
    SELECT visitor_id, last_timestamp, NULL, session_start FROM tails
    WHERE visitor_id IN (SELECT visitor_id FROM new_decisions
                         UNION SELECT visitor_id FROM new_conversions)
), gaps AS (
    SELECT *,
        CASE WHEN timestamp - lag(timestamp) OVER visit <= {gap} THEN 0 ELSE 1 END AS begins
    FROM events
    WINDOW visit AS (PARTITION BY visitor_id ORDER BY timestamp, uuid NULLS FIRST)
), runs AS (
    SELECT *, sum(begins) OVER (PARTITION BY visitor_id ORDER BY timestamp, uuid NULLS FIRST
                                ROWS UNBOUNDED PRECEDING) AS run
    FROM gaps
), started AS (
    SELECT *, coalesce(min(fixed_start) OVER (PARTITION BY visitor_id, run),
                       min(timestamp) OVER (PARTITION BY visitor_id, run)) AS run_start
    FROM runs
), days AS (
    SELECT *, (timestamp - run_start) // {longest} AS day FROM started
)
SELECT visitor_id, timestamp, uuid,
    CASE WHEN day = 0 THEN run_start
         ELSE min(timestamp) OVER (PARTITION BY visitor_id, run, day) END AS session_start
FROM days
"""

#: Each visitor's latest session after this run, for the next: the tails of visitors not seen
#: now are kept unless they ended too long ago to be continued by an event near the newest.
TAILS = """
SELECT visitor_id, max(session_start) AS session_start, max(timestamp) AS last_timestamp
FROM sessions GROUP BY visitor_id
UNION ALL
SELECT * FROM tails
WHERE visitor_id NOT IN (SELECT visitor_id FROM sessions)
  AND last_timestamp >= (SELECT max(timestamp) FROM sessions) - {keep}
"""

#: Each visitor's first decision in each experiment, over earlier runs and this one.
FIRSTS = """
SELECT visitor_id, experiment_id, campaign_id, variation_id, timestamp, uuid
FROM (
    SELECT visitor_id, campaign_id, experiment_id, variation_id, timestamp, uuid FROM firsts
    UNION ALL
    SELECT visitor_id, campaign_id, experiment_id, variation_id, timestamp, uuid
    FROM new_decisions
)
QUALIFY row_number() OVER (PARTITION BY visitor_id, experiment_id ORDER BY timestamp, uuid) = 1
"""

#: Every new conversion with the experiments it is attributed to: each experiment the
#: visitor had a decision in at or before it, with the first variation given there; sorted,
#: so that every engine lists them in one order.
ATTRIBUTED = """
SELECT c.uuid,
    coalesce(
        list_sort(
            list(struct_pack(campaign_id := f.campaign_id, experiment_id := f.experiment_id,
                             variation_id := f.variation_id, is_holdback := false))
            FILTER (WHERE f.experiment_id IS NOT NULL)),
        []) AS experiments
FROM new_conversions c
LEFT JOIN merged_firsts f ON f.visitor_id = c.visitor_id AND f.timestamp <= c.timestamp
GROUP BY c.uuid
"""
