"""The yardsticks: aiohttp answering a fixed decision body, doing no flag work, one process.

``python bench/bare_server.py PORT [uvloop|asyncio] [app|low-level]`` serves
``POST /v1/flags/{flag}/decision``: it parses the JSON body and answers the bytes of a typical
flagpost decision, on the same event loop as flagpost (uvloop unless told otherwise).

- ``app`` (the default): a ``web.Application`` with that one dynamic route, the shape of an
  ordinary aiohttp service. This is the yardstick flagpost's ratio is measured against.
- ``low-level``: aiohttp's low-level server (``web.Server`` run by ``web.ServerRunner``)
  calling the same handler with no routing at all: what aiohttp can do below its application
  layer.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from aiohttp import web

BODY = orjson.dumps(
    {
        "flag": "new_checkout", "variation": "on", "active": True, "value": True,
        "variables": {"button_color": "green", "max_items": 3}, "rule": "beta",
        "rule_type": "targeted_delivery", "experiment_id": None, "variation_id": 1,
        "reason": "TARGETING_MATCH",
    }
)  # fmt: skip


async def decision(request: web.BaseRequest) -> web.Response:
    orjson.loads(await request.read())  # like flagpost, take the body off the wire and parse it
    return web.Response(body=BODY, content_type="application/json")


async def serve_low_level(port: int) -> None:
    runner = web.ServerRunner(web.Server(decision, access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        await asyncio.Event().wait()  # until SIGTERM ends the process
    finally:
        await runner.cleanup()


def main() -> None:
    port = int(sys.argv[1])
    loop_kind, shape = (sys.argv[2:] + ["uvloop", "app"][len(sys.argv[2:]) :])[:2]
    # Chosen here rather than with service.server.new_event_loop: importing flagpost would
    # load its modules into the yardstick's process, which should hold aiohttp alone.
    loop: asyncio.AbstractEventLoop
    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    if shape == "low-level":
        loop.run_until_complete(serve_low_level(port))
        return
    app = web.Application()
    app.router.add_post("/v1/flags/{flag}/decision", decision)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
