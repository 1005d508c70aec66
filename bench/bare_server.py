"""The yardstick: a bare aiohttp handler answering a fixed JSON body, one process.

``python bench/bare_server.py PORT [uvloop|asyncio]`` serves POST /decision with the bytes of a
typical flagpost decision, so the load benchmark compares flagpost with aiohttp doing no work,
on the same event loop as flagpost (uvloop unless told otherwise).
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


async def decision(request: web.Request) -> web.Response:
    await request.read()  # like flagpost, take the body off the wire
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/decision", decision)
    # Chosen here rather than with service.server.new_event_loop: importing flagpost would
    # load its modules into the yardstick's process, which should hold aiohttp alone.
    loop: asyncio.AbstractEventLoop
    if (sys.argv[2:] or ["uvloop"])[0] == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
