"""A real HTTP server on 127.0.0.1 serving a rules document that tests can change or break."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from xxhash import xxh3_64_hexdigest

from tests.service.conftest import DEMO


@dataclass
class RulesServer:
    """The served document and how the server misbehaves; ``gets`` counts full answers."""

    document: bytes = field(default_factory=DEMO.read_bytes)
    fail_with: int | None = None
    hang: bool = False
    gets: int = 0
    not_modified: int = 0
    authorizations: list[str | None] = field(default_factory=list)
    url: str = ""

    def set_revision(self, revision: str, **flag_defaults: str) -> None:
        """Serve the demo rules under a new revision, with some flags' defaults changed."""
        doc: dict[str, Any] = json.loads(DEMO.read_text())
        doc["revision"] = revision
        for key, default in flag_defaults.items():
            doc["flags"][key]["default"] = default
        self.document = json.dumps(doc).encode()

    async def handle(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail_with is not None:
            return web.Response(status=self.fail_with, text="broken on purpose")
        etag = f'"{xxh3_64_hexdigest(self.document)}"'
        if request.headers.get("If-None-Match") == etag:
            self.not_modified += 1
            return web.Response(status=304, headers={"ETag": etag})
        self.gets += 1
        return web.Response(
            body=self.document, content_type="application/json", headers={"ETag": etag}
        )


@asynccontextmanager
async def serve_rules() -> AsyncIterator[RulesServer]:
    state = RulesServer()
    app = web.Application()
    app.router.add_get("/rules.json", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/rules.json"))
    try:
        yield state
    finally:
        await server.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    """Wait until ``check`` holds; fail if it never does (a bound, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.05)
