"""Event records: the decision and conversion rows of the enriched-events export, and ODP events.

Every record is a plain dict, ready for ``orjson``, carrying ``kind`` (``decision``,
``conversion`` or ``odp``) so one JSON Lines file can hold all three. Identifiers are strings,
as in the export schema; where the rules give no numeric id, the key stands in for it, so a
row can always be joined. Exposures are queued as cheap tuples on the hot path and become
records here, in the background flusher.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import orjson

from rules import Decision
from service.events.sessions import ExposureKey

__all__ = [
    "CLIENT_ENGINE",
    "CLIENT_VERSION",
    "Batch",
    "Exposure",
    "attribute_list",
    "conversion_record",
    "exposure_records",
    "new_uuids",
    "odp_record",
    "tag_map",
]

CLIENT_ENGINE = "flagpost"
try:
    CLIENT_VERSION = metadata.version("flagpost")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    CLIENT_VERSION = "0+unknown"

#: What the hot path queues for an exposure: (seconds since the epoch, visitor, session
#: number, decision, context, request headers, revision). A plain tuple: it is built per
#: decision, and everything else is worked out when the record is built.
Exposure = tuple[float, str, int, Decision, Mapping[str, Any], Mapping[str, str], str]


@dataclass(frozen=True, slots=True)
class Batch:
    """Records delivered together, and how many of each kind they hold (for the metrics)."""

    records: list[dict[str, Any]]
    kinds: Counter[str]

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> Batch:
        return cls(records, Counter(record["kind"] for record in records))


def new_uuids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs, from one read of the system's random source.

    ``str(uuid.uuid4())`` costs microseconds per call, which a batch of thousands notices."""
    raw = os.urandom(16 * count).hex()
    uuids = []
    for start in range(0, 32 * count, 32):
        h = raw[start : start + 32]
        variant = "89ab"[int(h[16], 16) & 3]
        uuids.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
    return uuids


def _text(value: Any) -> str:
    """A value as the export schema's string: text as is, anything else as its JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def attribute_list(context: Mapping[str, Any]) -> list[dict[str, str]]:
    """Targeting attributes as export rows; the name is the only id an attribute has here."""
    return [
        {"id": name, "name": name, "type": "custom", "value": _text(value)}
        for name, value in context.items()
    ]


def tag_map(tags: Mapping[str, Any]) -> dict[str, str]:
    return {name: _text(value) for name, value in tags.items()}


def _id(number: int | None, key: str | None) -> str | None:
    return str(number) if number is not None else key


def exposure_records(
    exposures: list[Exposure], process_ms: int, session_prefix: str
) -> list[dict[str, Any]]:
    """The decision rows of queued exposures.

    The part that depends only on the decision (ids, keys) and the attribute rows of one
    context are built once per batch and shared: a batch is mostly a few decisions and the
    contexts of a few requests, and building a record is most of what the flusher does. (The
    batch's items keep those decisions and contexts alive, so their ids cannot be reused.)
    """
    uuids = new_uuids(len(exposures))
    fixed_parts: dict[int, dict[str, Any]] = {}
    attribute_rows: dict[int, list[dict[str, str]]] = {}
    records = []
    for (seconds, visitor, session, decision, context, headers, revision), uuid in zip(
        exposures, uuids, strict=True
    ):
        fixed = fixed_parts.get(id(decision))
        if fixed is None:
            fixed = fixed_parts[id(decision)] = _decision_part(decision)
        attributes = attribute_rows.get(id(context))
        if attributes is None:
            attributes = attribute_rows[id(context)] = attribute_list(context)
        records.append(
            {
                "kind": "decision",
                "uuid": uuid,
                "timestamp": int(seconds * 1000),
                "process_timestamp": process_ms,
                "visitor_id": visitor,
                "session_id": f"{session_prefix}-{session:x}",
                **fixed,
                "attributes": attributes,
                "user_agent": headers.get("User-Agent"),
                "referer": headers.get("Referer"),
                "revision": revision,
            }
        )
    return records


def _decision_part(decision: Decision) -> dict[str, Any]:
    return {
        "campaign_id": _id(decision.flag_id, decision.flag),
        "experiment_id": _id(decision.experiment_id, decision.rule),
        "variation_id": _id(decision.variation_id, decision.variation),
        "flag": decision.flag,
        "rule": decision.rule,
        "variation": decision.variation,
        "is_holdback": False,
        "client_engine": CLIENT_ENGINE,
        "client_version": CLIENT_VERSION,
    }


def attribution(keys: Iterable[ExposureKey]) -> list[dict[str, Any]]:
    """The ``experiments`` a conversion is attributed to: the session's exposures."""
    return [
        {
            "campaign_id": _id(flag_id, flag),
            "experiment_id": _id(experiment_id, rule),
            "variation_id": _id(variation_id, variation),
            "is_holdback": False,
        }
        for flag, rule, variation, flag_id, experiment_id, variation_id in keys
    ]


def conversion_record(
    *,
    uuid: str,
    seconds: float,
    visitor: str,
    session: str,
    exposures: Iterable[ExposureKey],
    event_key: str,
    event_id: int | None,
    attributes: Mapping[str, Any],
    user_agent: str | None,
    referer: str | None,
    revenue: int | None,
    value: float | None,
    quantity: int,
    tags: Mapping[str, Any],
    revision: str,
) -> dict[str, Any]:
    """The conversion row of one tracked event or goal conversion."""
    return {
        "kind": "conversion",
        "uuid": uuid,
        "timestamp": int(seconds * 1000),
        "process_timestamp": int(seconds * 1000),
        "visitor_id": visitor,
        "session_id": session,
        "experiments": attribution(exposures),
        "entity_id": _id(event_id, event_key),
        "attributes": attribute_list(attributes),
        "user_agent": user_agent,
        "referer": referer,
        "event_type": "custom",
        "event_name": event_key,
        "revenue": revenue,
        "value": value,
        "quantity": quantity,
        "tags": tag_map(tags),
        "revision": revision,
        "client_engine": CLIENT_ENGINE,
        "client_version": CLIENT_VERSION,
    }


def odp_record(
    *,
    uuid: str,
    seconds: float,
    type: str,
    action: str,
    identifiers: Mapping[str, str],
    data: Mapping[str, Any],
) -> dict[str, Any]:
    """An ODP event: the defaults first, so that the caller's own keys override them."""
    return {
        "kind": "odp",
        "uuid": uuid,
        "timestamp": int(seconds * 1000),
        "type": type,
        "action": action,
        "identifiers": dict(identifiers),
        "data": {
            "idempotence_id": uuid,
            "data_source_type": "sdk",
            "data_source": CLIENT_ENGINE,
            "data_source_version": CLIENT_VERSION,
            **data,
        },
    }
