"""Fixtures for the service: an app on the demo rules, and a client that checks the OpenAPI
document on every response it receives."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient

from service.app import create_app
from service.ops import OPENAPI_PATH
from service.server import ShellRunner
from service.settings import Settings
from tests.service.redis_server import running_redis

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "rules" / "examples" / "demo.json"
SPEC: dict[str, Any] = json.loads(OPENAPI_PATH.read_text())


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    headers: Any


class Api:
    """Calls the service and checks each answer against the OpenAPI document."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    async def call(
        self, method: str, route: str, path: dict[str, str] | None = None, **kwargs: Any
    ) -> Reply:
        url = route.format(**(path or {}))
        async with self.client.request(method, url, **kwargs) as response:
            raw = await response.read()
            kind = response.headers.get("Content-Type", "")
            body = json.loads(raw) if kind.startswith("application/json") else raw
            check_against_openapi(method, route, response.status, body, kind)
            return Reply(response.status, body, response.headers)

    async def get(self, route: str, path: dict[str, str] | None = None, **kw: Any) -> Reply:
        return await self.call("GET", route, path, **kw)

    async def post(self, route: str, path: dict[str, str] | None = None, **kw: Any) -> Reply:
        return await self.call("POST", route, path, **kw)


def check_against_openapi(method: str, route: str, status: int, body: Any, kind: str) -> None:
    """Fail unless the status is documented for the route and the JSON body fits its schema."""
    operation = SPEC["paths"].get(route, {}).get(method.lower())
    if operation is None:  # an undocumented route must still answer with the error shape
        assert kind.startswith("application/json"), (route, status)
        _validate(body, "#/components/schemas/Error")
        return
    documented = operation["responses"]
    assert str(status) in documented, f"{method} {route} answered undocumented {status}"
    response = documented[str(status)]
    if "$ref" in response:
        response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[-1]]
    content = response.get("content", {})
    if "application/json" in content:
        assert kind.startswith("application/json"), (route, status, kind)
        _validate(body, content["application/json"]["schema"])


def _validate(body: Any, schema: Any) -> None:
    target = schema if isinstance(schema, str) else None
    root = {**SPEC, "$ref": target} if target else {**SPEC, **schema}
    jsonschema.Draft202012Validator(root).validate(body)


def settings_for(tmp_path: Path, **changes: Any) -> Settings:
    """Settings on the demo rules with private cache, events and spool directories."""
    values: dict[str, Any] = {
        "rules": str(DEMO),
        "cache_dir": str(tmp_path / "cache"),
        "events": (f"file:{tmp_path / 'events'}",),
        "spool_dir": str(tmp_path / "spool"),
    }
    values.update(changes)
    return Settings(**values)


AppFactory = Callable[..., AbstractAsyncContextManager[Api]]


class ShellTestServer(BaseTestServer):
    """aiohttp's test server running an application as flagpost runs it (``ShellRunner``)."""

    def __init__(self, app: web.Application) -> None:
        super().__init__()
        self.app = app

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        return ShellRunner(self.app, **kwargs)


@pytest.fixture
def start(tmp_path: Path) -> AppFactory:
    """Start the app with settings changed as given; yields an OpenAPI-checking client."""

    @asynccontextmanager
    async def started(**changes: Any) -> AsyncIterator[Api]:
        app = create_app(settings_for(tmp_path, **changes))
        client: TestClient[web.BaseRequest, None]
        async with TestClient(ShellTestServer(app)) as client:
            yield Api(client)

    return started


@pytest.fixture
async def api(start: AppFactory) -> AsyncIterator[Api]:
    """A running app on the demo rules."""
    async with start() as client:
        yield client


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh ``redis-server`` on a free loopback port."""
    with running_redis(tmp_path / "redis") as url:
        yield url
