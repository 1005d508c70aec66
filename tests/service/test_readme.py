"""README, settings and the OpenAPI document name the same things."""

from __future__ import annotations

import re

from service.settings import Settings
from tests.service.conftest import ROOT, SPEC

README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_with_its_flag() -> None:
    """Each FLAGPOST_* variable has a README row naming its command-line flag."""
    rows = dict(re.findall(r"^\| `(FLAGPOST_[A-Z_]+)` \| `(--[a-z-]+)` \|", README, re.M))
    expected = {
        variable: f"--{name.replace('_', '-')}" for name, variable, _, _ in Settings.describe()
    }
    assert expected == rows


def test_every_endpoint_is_in_the_readme() -> None:
    """Each path of the OpenAPI document appears in the README, with its parameters filled in."""
    missing = []
    for path in SPEC["paths"]:
        pattern = re.sub(r"\\\{[a-z_]+\\\}", "[^/ ?']+", re.escape(path)) + r"(?![\w/])"
        if not re.search(pattern, README):
            missing.append(path)
    assert [] == missing
