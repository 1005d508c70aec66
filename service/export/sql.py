"""The export's SQL, in DuckDB's dialect: checking raw lines, typing them, and the enrichment
(de-duplication, sessionization, attribution) over the typed rows.

Checking and typing run on DuckDB. The enrichment is written once, as queries over tables,
and runs on the engine chosen (``service.export.engines``): as it is on DuckDB, translated
by sqlglot on Spark. Names in braces (``{gap}``) are filled in with numbers the caller
checked, never with text from the input. Tables the enrichment expects:

- ``staged``: the new input files' lines, checked and typed (``staged``);
- ``lake_uuids(uuid)``: the uuids already in the lake on the dates the new rows fall on;
- ``tails(visitor_id, session_start, last_timestamp)``: each visitor's latest session;
- ``firsts(visitor_id, campaign_id, experiment_id, variation_id, timestamp, uuid)``: each
  visitor's first decision in each experiment, from earlier runs.
"""

from __future__ import annotations

import json

__all__ = [
    "ATTRIBUTED",
    "CHOSEN",
    "CONVERSION_COLUMNS",
    "CONVERSION_ROWS",
    "DECISION_COLUMNS",
    "DECISION_ROWS",
    "FIRSTS",
    "KNOWN",
    "NEW_ROWS",
    "REPEATED",
    "SEEN_NOW",
    "SESSIONS",
    "TAILS",
    "staged",
]

_ATTRIBUTES = '[{"id":"VARCHAR","name":"VARCHAR","type":"VARCHAR","value":"VARCHAR"}]'
_TAGS = '"MAP(VARCHAR, VARCHAR)"'

# Each line is parsed once, by ``json_transform`` into the JSON text of each field (NULL when
# the field is absent or null), and each field's type is checked on that text, which is
# cheaper than parsing the line again: ``json_transform`` into typed values would convert
# what it can (a number into text, "7" into 7), and ``json_type`` costs a second parse.
_IS = {
    "text": "starts_with({raw}, '\"')",
    # At most 18 digits: every such number fits a BIGINT, so a longer one is refused here
    # rather than failing the cast (and the run) later.
    "integer": "regexp_full_match({raw}, '-?[0-9]{{1,18}}')",
    "number": "TRY_CAST({raw} AS DOUBLE) IS NOT NULL",  # text, quoted, is not a number
    "boolean": "{raw} IN ('true', 'false')",
    # and its elements converted (a list of objects, an object of scalars)
    "list": "starts_with({raw}, '[') AND {name} IS NOT NULL",
    "object": "starts_with({raw}, '{{') AND {name} IS NOT NULL",
}


def _escaped(text: str) -> str:
    """``text`` as a literal part of a ``str.format`` template."""
    return text.replace("{", "{{").replace("}", "}}")


_TEXT_VALUE = (  # a string's text with its quotes off, unless it holds an escape
    "CASE WHEN starts_with({raw}, '\"') THEN CASE WHEN contains({raw}, '\\') "
    "THEN v.{name} ->> '$' ELSE {raw}[2:-2] END END"
)
_VALUE = {
    "text": _TEXT_VALUE,
    "integer": "TRY_CAST({raw} AS BIGINT)",
    "number": "TRY_CAST({raw} AS DOUBLE)",
    "boolean": "CASE {raw} WHEN 'true' THEN true WHEN 'false' THEN false END",
    "list": "CASE WHEN {raw} = '[]' THEN [] "
    f"ELSE try(json_transform(v.{{name}}, '{_escaped(_ATTRIBUTES)}')) END",
    "object": "CASE WHEN {raw} = '{{}}' THEN MAP {{}} "
    f"ELSE try(json_transform(v.{{name}}, '{_escaped(_TAGS)}')) END",
}
#: Every field the export reads, and its type.
FIELDS = {
    "kind": "text", "uuid": "text", "timestamp": "integer", "process_timestamp": "integer",
    "visitor_id": "text", "user_ip": "text", "user_agent": "text", "referer": "text",
    "revision": "text", "client_engine": "text", "client_version": "text",
    "attributes": "list", "campaign_id": "text", "experiment_id": "text",
    "variation_id": "text", "is_holdback": "boolean", "entity_id": "text",
    "event_name": "text", "event_type": "text", "revenue": "integer", "value": "number",
    "quantity": "integer", "tags": "object",
}  # fmt: skip
_RAW_SHAPE = json.dumps(dict.fromkeys(FIELDS, "JSON"), separators=(",", ":"))


def _raw(name: str) -> str:
    return f"raw_{name}"


def _is(name: str) -> str:
    return _IS[FIELDS[name]].format(raw=_raw(name), name=name)


def _required(name: str) -> str:
    return f"coalesce({_is(name)}, false)"


def _optional(name: str) -> str:
    return f"({_raw(name)} IS NULL OR {_is(name)})"


#: A list of attributes, each with an id and a name (its type and value may be null).
_ATTRIBUTES_OK = (
    f"({_optional('attributes')} AND coalesce(list_bool_and(list_transform(attributes, "
    "lambda a: a.id IS NOT NULL AND a.name IS NOT NULL)), true))"
)
_COMMON = {
    "uuid": _required("uuid"),
    "timestamp": _required("timestamp"),
    "process_timestamp": _required("process_timestamp"),
    "visitor_id": _required("visitor_id"),
    **{name: _optional(name) for name in (
        "user_ip", "user_agent", "referer", "revision", "client_engine", "client_version")},
    "attributes": _ATTRIBUTES_OK,
}  # fmt: skip
_DECISION = {
    **_COMMON,
    "campaign_id": _required("campaign_id"),
    "experiment_id": _required("experiment_id"),
    "variation_id": _required("variation_id"),
    "is_holdback": _optional("is_holdback"),
}
_CONVERSION = {
    **_COMMON,
    "entity_id": _required("entity_id"),
    "event_name": _required("event_name"),
    "event_type": _optional("event_type"),
    "revenue": _optional("revenue"),
    "value": _optional("value"),
    "quantity": _optional("quantity"),
    "tags": _optional("tags"),
}


def _all(checks: dict[str, str]) -> str:
    return " AND ".join(checks.values())


def _problems(checks: dict[str, str]) -> str:
    """The names of the fields that fail their checks, listed (only for a line that fails:
    CASE evaluates a branch for the rows that take it)."""
    listed = ", ".join(f"CASE WHEN NOT {check} THEN '{name}' END" for name, check in checks.items())
    return f"array_to_string(list_filter([{listed}], lambda x: x IS NOT NULL), ', ')"


_DEFAULTS = {"attributes": "[]", "is_holdback": "false", "event_type": "'custom'", "tags": "MAP {}"}
#: Each field's JSON text, then its value (NULL if it has not the field's type).
_RAW_COLUMNS = ", ".join(f"CAST(v.{name} AS VARCHAR) AS {_raw(name)}" for name in FIELDS)
_VALUE_COLUMNS = ", ".join(
    _VALUE[kind].format(raw=_raw(name), name=name) + f" AS {name}" for name, kind in FIELDS.items()
)
#: The columns a line is staged with: its typed fields, defaults filled in.
_STAGED_COLUMNS = ", ".join(
    f"coalesce({name}, {_DEFAULTS[name]}) AS {name}" if name in _DEFAULTS else name
    for name in FIELDS
    if name != "kind"
)


def staged(source: str) -> str:
    """The lines of ``source`` (a table or query with ``file``, ``line_no`` and ``line``),
    parsed once into the JSON text of each field, checked and typed: each line's file
    and number (NULL when the source does not know it), a hash of its text (to break ties
    between lines of one uuid), its kind, why it cannot be exported if it cannot
    (``reason``), and its typed fields. Kinds the lake does not hold
    (``odp``, ``visitor_data``) are let through as such, to be counted."""
    return f"""
SELECT file, line_no, line_hash, kind,
    CASE
        WHEN v IS NULL THEN 'not JSON (a truncated line, say)'
        WHEN kind IS NULL THEN 'not an object with a kind'
        WHEN kind = 'decision' AND NOT ({_all(_DECISION)})
            THEN 'decision: missing or mistyped ' || {_problems(_DECISION)}
        WHEN kind = 'conversion' AND NOT ({_all(_CONVERSION)})
            THEN 'conversion: missing or mistyped ' || {_problems(_CONVERSION)}
        WHEN kind NOT IN ('decision', 'conversion', 'odp', 'visitor_data')
            THEN 'unknown kind ' || kind
    END AS reason,
    {_STAGED_COLUMNS}
FROM (
    SELECT *, {_VALUE_COLUMNS}
    FROM (
        SELECT file, line_no, line_hash, v, {_RAW_COLUMNS}
        FROM (  -- NULL for a line that is not JSON: the error only for those
            SELECT file, line_no, (hash(line) >> 1)::BIGINT AS line_hash,
                   try(json_transform(line, '{_RAW_SHAPE}')) AS v
            FROM {source}
            WHERE line <> ''
        )
    )
)
"""


#: The columns of the decision rows and the conversion rows of the staged lines.
DECISION_COLUMNS = ", ".join((
    "uuid", "timestamp", "process_timestamp", "visitor_id", "campaign_id", "experiment_id",
    "variation_id", "attributes", "user_ip", "user_agent", "referer", "is_holdback",
    "revision", "client_engine", "client_version", "file", "line_hash",
))  # fmt: skip
CONVERSION_COLUMNS = ", ".join((
    "uuid", "timestamp", "process_timestamp", "visitor_id", "entity_id", "attributes",
    "user_ip", "user_agent", "referer", "event_type", "event_name", "revenue", "value",
    "quantity", "tags", "revision", "client_engine", "client_version", "file", "line_hash",
))  # fmt: skip
#: The decision rows of the staged lines (``staged``, the table).
DECISION_ROWS = f"SELECT {DECISION_COLUMNS} FROM staged WHERE kind = 'decision' AND reason IS NULL"
#: The conversion rows of the staged lines.
CONVERSION_ROWS = (
    f"SELECT {CONVERSION_COLUMNS} FROM staged WHERE kind = 'conversion' AND reason IS NULL"
)

#: De-duplication, in three steps that keep only small tables: duplicates are few (replays
#: of a batch, at-least-once delivery), so the full rows are never copied to find them.
#: ``REPEATED``: the uuids that more than one line of a kind (``{kind}``) holds.
REPEATED = """
SELECT uuid FROM staged
WHERE reason IS NULL AND kind = '{kind}'
GROUP BY uuid HAVING count(*) > 1
"""

#: ``CHOSEN``: the line kept of each repeated uuid of ``{raw}``: the first in the order of
#: process time, file and text. Its ``{columns}`` are listed, so that no engine adds its own
#: (Spark's translation of QUALIFY would add the row number).
CHOSEN = """
SELECT {columns} FROM {raw}
WHERE uuid IN (SELECT uuid FROM {repeated})
QUALIFY row_number() OVER (PARTITION BY uuid ORDER BY process_timestamp, file, line_hash) = 1
"""

#: ``KNOWN``: the uuids of ``{raw}`` that an earlier run exported already (a replay that
#: reached the lake before): a join, so that the engine builds on the smaller side.
KNOWN = """
SELECT DISTINCT r.uuid FROM {raw} r JOIN lake_uuids l ON l.uuid = r.uuid
"""

#: ``NEW_ROWS``: ``{raw}`` de-duplicated: each uuid once, none the lake has.
NEW_ROWS = """
SELECT * FROM (
    SELECT * FROM {raw} WHERE uuid NOT IN (SELECT uuid FROM {repeated})
    UNION ALL
    SELECT * FROM {chosen}
)
WHERE uuid NOT IN (SELECT uuid FROM {known})
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
), gaps AS (  -- the timestamp of each event that begins a run (no event within the gap before)
    SELECT *,
        CASE WHEN timestamp - lag(timestamp) OVER visit <= {gap} THEN NULL
             ELSE timestamp END AS begins_at
    FROM events
    WINDOW visit AS (PARTITION BY visitor_id ORDER BY timestamp, uuid NULLS FIRST)
), runs AS (  -- each event's run, named by when it began: the latest beginning so far
    SELECT *, max(begins_at) OVER (PARTITION BY visitor_id ORDER BY timestamp, uuid NULLS FIRST
                                   ROWS UNBOUNDED PRECEDING) AS run_begin
    FROM gaps
), continued AS (  -- the runs that continue an earlier session, and its start
    SELECT visitor_id, run_begin, min(fixed_start) AS fixed_start
    FROM runs WHERE fixed_start IS NOT NULL GROUP BY visitor_id, run_begin
), days AS (
    SELECT r.visitor_id, r.timestamp, r.uuid, r.run_begin,
           coalesce(c.fixed_start, r.run_begin) AS run_start,
           (r.timestamp - coalesce(c.fixed_start, r.run_begin)) // {longest} AS day
    FROM runs r LEFT JOIN continued c
        ON c.visitor_id = r.visitor_id AND c.run_begin = r.run_begin
)
SELECT visitor_id, timestamp, uuid, run_start AS session_start FROM days WHERE day = 0
UNION ALL  -- the rare run longer than a day: a session begins again each day of it
SELECT visitor_id, timestamp, uuid,
    min(timestamp) OVER (PARTITION BY visitor_id, run_begin, day) AS session_start
FROM days WHERE day <> 0
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

#: Each visitor's first decision in each experiment, over earlier runs (``firsts``, from
#: ``{kept_from}`` on: older ones went with their partitions) and this one; ``{visitors}``
#: narrows the earlier ones to some visitors (``AND visitor_id IN ...``), or is empty.
FIRSTS = """
SELECT visitor_id, experiment_id, campaign_id, variation_id, timestamp, uuid
FROM (
    SELECT visitor_id, campaign_id, experiment_id, variation_id, timestamp, uuid FROM firsts
    WHERE timestamp >= {kept_from} {visitors}
    UNION ALL
    SELECT visitor_id, campaign_id, experiment_id, variation_id, timestamp, uuid
    FROM new_decisions
)
QUALIFY row_number() OVER (PARTITION BY visitor_id, experiment_id ORDER BY timestamp, uuid) = 1
"""

#: ``{visitors}`` for the visitors of this run's rows, the only ones attribution asks about.
SEEN_NOW = (
    "AND visitor_id IN (SELECT visitor_id FROM new_decisions "
    "UNION SELECT visitor_id FROM new_conversions)"
)

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
