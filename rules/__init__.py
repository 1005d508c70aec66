"""flagpost's decision core: the rules format, targeting conditions and xxhash bucketing.

Pure and synchronous: data in, decisions out, no I/O, no logging. Decisions carry their
reasons instead of logging them. Typical use::

    import rules
    ruleset = rules.load(open("rules.json", "rb").read())
    decision = ruleset.decide("new_checkout", "visitor-42", {"device": "phone"})
    decision.variation, decision.variables["button_color"], decision.reason
"""

from __future__ import annotations

from rules.bucketing import BUCKETS, bucket
from rules.decision import Decision, Reason
from rules.errors import (
    FlagNotFound,
    InvalidContext,
    InvalidRuleset,
    InvalidVisitorCode,
    Problem,
    RulesError,
    UnknownEnvironment,
    VariableNotFound,
)
from rules.operators import to_instant
from rules.ruleset import Ruleset, load, load_steps

__all__ = [
    "BUCKETS",
    "Decision",
    "FlagNotFound",
    "InvalidContext",
    "InvalidRuleset",
    "InvalidVisitorCode",
    "Problem",
    "Reason",
    "RulesError",
    "Ruleset",
    "UnknownEnvironment",
    "VariableNotFound",
    "bucket",
    "load",
    "load_steps",
    "to_instant",
]
