"""The README's rules examples are valid rules, so the documentation cannot drift from the code."""

from __future__ import annotations

import json
import re

import rules
from rules.operators import OPERATORS
from tests.rules.helpers import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_example_document_loads() -> None:
    """The format section's example document is a valid ruleset."""
    block = re.search(r"```json\n(.*?)```", README, re.S)
    assert block is not None
    assert ("2026-11-22.3", ("new_checkout",)) == (
        (ruleset := rules.load(block.group(1))).revision,
        ruleset.flag_keys,
    )


def test_every_operator_has_a_valid_readme_example() -> None:
    """The operator table names every operator once, each row with an example that validates."""
    rows = re.findall(
        r'^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \| `(\{"(?:attr|op)".*?\})` \|', README, re.M
    )
    named: list[str] = []
    for names, example in rows:
        ops = re.findall(r"`([a-z_]+)`", names)
        condition = json.loads(example)
        assert condition["op"] in ops
        flag = {"variations": {"on": {}}, "default": "on",
                "rules": [{"key": "r", "type": "targeted_delivery", "variation": "on", "condition": condition}]}  # fmt: skip
        rules.load({"format": 1, "flags": {"f": flag}})
        named += ops
    assert sorted(OPERATORS) == sorted(named)
