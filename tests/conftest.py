"""Shared test settings: property tests are judged by their results, never by their timing,
and every async test runs on both event loops flagpost can serve on."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest
import uvloop
from hypothesis import settings

settings.register_profile("flagpost", deadline=None, max_examples=200)
settings.register_profile("ci", deadline=None, max_examples=200, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "flagpost")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop, flagpost's default, and the standard loop, its fallback where uvloop is not
    installed: each async test runs on both."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
