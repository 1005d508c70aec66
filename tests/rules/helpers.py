"""Small builders for rules documents used across the core's tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import rules

ROOT = Path(__file__).resolve().parents[2]
DEMO_PATH = ROOT / "rules" / "examples" / "demo.json"


def demo_document() -> dict[str, Any]:
    """The bundled example rules, decoded."""
    document: dict[str, Any] = json.loads(DEMO_PATH.read_text())
    return document


def one_flag(rules_list: list[dict[str, Any]], **flag: Any) -> rules.Ruleset:
    """A ruleset with one flag ``f`` (variations off/on/bold) and the given rules."""
    doc = {
        "format": 1,
        "flags": {
            "f": {
                "variations": {"off": {}, "on": {}, "bold": {}},
                "default": "off",
                "rules": rules_list,
                **flag,
            }
        },
    }
    return rules.load(doc)


def visitors(count: int, prefix: str = "visitor") -> list[str]:
    """Deterministic visitor codes, so statistical tests give the same verdict every run."""
    return [f"{prefix}-{index}" for index in range(count)]
