"""Fixtures for the visitor tests: a real Redis server when a test needs one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.visitors.redis_server import running_redis


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh ``redis-server`` on a free loopback port."""
    with running_redis(tmp_path / "redis") as url:
        yield url
