"""Clients that ask before sending a body (``Expect: 100-continue``) are told to go on."""

from __future__ import annotations

import asyncio
import json

from tests.service.conftest import Api


async def test_a_client_that_expects_100_continue_is_answered_at_once(api: Api) -> None:
    """curl sends ``Expect: 100-continue`` with bodies over 1 KiB and waits up to a second
    for the interim answer before sending: it comes before the body is sent, then the
    decision."""
    body = json.dumps({"visitor_code": "v-1", "context": {"note": "x" * 2000}}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", api.client.port)
    try:
        writer.write(
            b"POST /v1/flags/new_checkout/decision HTTP/1.1\r\nHost: t\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        await writer.drain()
        # Without the interim answer nothing comes at all: a generous bound, for slow CI.
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(body)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout=5)
        assert b"HTTP/1.1 200 OK\r\n" == status
    finally:
        writer.close()
