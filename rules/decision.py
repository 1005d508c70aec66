"""What a decision says, and why.

Decisions are values, built once per (flag, rule, variation, reason) when the rules are
compiled and shared by every visitor who gets the same answer: deciding allocates nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Any

__all__ = ["Decision", "Reason"]


class Reason(StrEnum):
    """Why a visitor got a decision; the names are OpenFeature's resolution reasons."""

    #: The flag answers every visitor the same in this environment (no rule depends on them).
    STATIC = "STATIC"
    #: A targeted delivery whose condition matched gave the variation.
    TARGETING_MATCH = "TARGETING_MATCH"
    #: The visitor's bucket decided: a partial rollout's exposure or an experiment's split.
    SPLIT = "SPLIT"
    #: The flag has rules, none applied, so the flag's default variation was given.
    DEFAULT = "DEFAULT"
    #: The flag is disabled in this environment; its default variation was given.
    DISABLED = "DISABLED"


@dataclass(frozen=True, slots=True)
class Decision:
    """A visitor's variation of one flag, with its variables and the rule that gave it.

    ``variables`` is a read-only view shared between decisions; treat any ``json`` variable
    value inside it as read-only too.

    ``outcome`` names the answer: the JSON text of ``[flag, rule, variation, flag_id,
    experiment_id, variation_id, rule_type]``. Equal answers have equal outcomes, across
    recompilations too, so a caller can recognize an answer it has seen before with one
    string comparison (the service records an exposure once per visitor session by it). It
    is text, not a tuple, so that whatever keeps it holds no object the garbage collector
    has to track.

    ``fingerprint`` is the outcome followed by the reason: within one ruleset, decisions
    with equal fingerprints are equal, so a caller can keep what it derives from a decision
    under it (a text's hash is kept with it: cheaper to look up than the decision's ``id``).
    """

    flag: str
    variation: str
    active: bool
    value: Any
    variables: Mapping[str, Any]
    rule: str | None
    rule_type: str | None
    experiment_id: int | None
    variation_id: int | None
    reason: Reason
    flag_id: int | None = None
    outcome: str = field(init=False, repr=False, compare=False)
    fingerprint: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = (self.flag, self.rule, self.variation)
        ids = (self.flag_id, self.experiment_id, self.variation_id)
        outcome = "[" + ",".join(map(_json, (*keys, *ids, self.rule_type))) + "]"
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "fingerprint", outcome + self.reason.value)

    def as_dict(self) -> dict[str, Any]:
        """The decision as plain JSON-ready data."""
        return {
            "flag": self.flag,
            "variation": self.variation,
            "active": self.active,
            "value": self.value,
            "variables": dict(self.variables),
            "rule": self.rule,
            "rule_type": self.rule_type,
            "experiment_id": self.experiment_id,
            "variation_id": self.variation_id,
            "reason": self.reason.value,
        }


def _json(value: str | int | None) -> str:
    """A key or an id as JSON (``json.dumps`` makes an encoder per call: too slow here)."""
    if value is None:
        return "null"
    return encode_basestring(value) if isinstance(value, str) else str(value)
