"""Flagpost's HTTP shell with no decision work: a diagnostic for the load benchmark.

``python bench/shell_server.py serve ...`` runs ``flagpost serve`` unchanged (routing, the
guard with its request id, API keys and metrics, the app and its background tasks) except that
the single-decision route reads the body and answers the bare handler's fixed bytes. Its rate
next to the bare handler's and flagpost's splits the gap between them into what the shell
costs and what deciding costs (reading and checking the query, deciding, counting, encoding).
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bare_server import BODY
from service import api
from service.cli import main


async def fixed_answer(self: api.Serving, request: web.BaseRequest, flag: str) -> web.Response:
    orjson.loads(await request.read())  # like the bare handler, parse the body
    return web.Response(body=BODY, content_type="application/json")


if __name__ == "__main__":
    api.Serving.decide_one = fixed_answer  # type: ignore[method-assign]
    sys.exit(main())
