"""Shared test settings: property tests are judged by their results, never by their timing."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("flagpost", deadline=None, max_examples=200)
settings.register_profile("ci", deadline=None, max_examples=200, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "flagpost")
