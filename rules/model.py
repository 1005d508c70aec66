"""The validated form of a rules document: plain frozen data, checked and cross-referenced.

``rules.document.parse_document`` builds it; ``rules.compiler`` turns it into decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rules.conditions import Condition

__all__ = ["Document", "Event", "Flag", "Rule", "RuleType", "Variable", "VariableType", "Variation"]

VariableType = Literal["boolean", "integer", "number", "string", "json"]
RuleType = Literal["targeted_delivery", "experiment"]


@dataclass(frozen=True, slots=True)
class Variable:
    key: str
    type: VariableType
    default: Any


@dataclass(frozen=True, slots=True)
class Variation:
    key: str
    id: int | None
    #: The flag value for OpenFeature clients; ``has_value`` False means "use ``active``".
    value: Any
    has_value: bool
    #: Only the variables this variation overrides.
    overrides: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Rule:
    key: str
    type: RuleType
    id: int | None
    condition: Condition | None
    #: Buckets (of 10000) inside the rule's exposure.
    exposure: int
    #: The variation of a targeted delivery.
    variation: str | None
    #: (variation, buckets) in declaration order, for an experiment.
    split: tuple[tuple[str, int], ...]
    bucket_by: str | None
    exposure_salt: str
    split_salt: str


@dataclass(frozen=True, slots=True)
class Flag:
    key: str
    id: int | None
    description: str | None
    variables: Mapping[str, Variable]
    variations: Mapping[str, Variation]
    default: str
    #: Per declared environment: whether the flag is enabled there, and the rules it uses.
    enabled: Mapping[str, bool]
    rules: Mapping[str, tuple[Rule, ...]]


@dataclass(frozen=True, slots=True)
class Event:
    key: str
    id: int | None


@dataclass(frozen=True, slots=True)
class Document:
    revision: str | None
    environments: tuple[str, ...]
    segments: Mapping[str, Condition]
    events: Mapping[str, Event]
    #: Flags in an order where every prerequisite comes before the flags that depend on it.
    flags: Mapping[str, Flag]
