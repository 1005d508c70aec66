"""Long work in slices lets requests that arrived during a slice go before the next slice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from service.sharing import give_way


async def order_of_events(pause: Callable[[], Awaitable[None]]) -> list[str]:
    """Bytes reach a waiting server connection during a slice; what runs first afterwards."""
    order: list[str] = []
    waiting = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        waiting.set()
        await reader.readexactly(1)
        order.append("request")
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await asyncio.open_connection("127.0.0.1", port)
    await waiting.wait()
    client.write(b"x")  # on loopback, in the server's socket buffer before write returns
    order.append("slice 1")
    await pause()
    order.append("slice 2")
    await asyncio.sleep(0.05)  # whatever has not run yet
    client.close()
    server.close()
    await server.wait_closed()
    return order


async def test_giving_way_answers_a_request_that_arrived_during_a_slice_first() -> None:
    """The waiting connection's handler runs between the two slices."""
    assert ["slice 1", "request", "slice 2"] == await order_of_events(give_way)


async def test_a_bare_yield_runs_the_next_slice_first() -> None:
    """Why give_way exists: with ``asyncio.sleep(0)`` the next slice runs before the handler
    the bytes woke, so that request waits out two slices."""
    assert ["slice 1", "slice 2", "request"] == await order_of_events(lambda: asyncio.sleep(0))


async def test_a_task_cancelled_while_giving_way_ends_quietly() -> None:
    """Cancelling a task that is giving way neither fails the loop nor reports an error."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        waiting = asyncio.create_task(give_way())
        await asyncio.sleep(0)  # the task is now waiting for its timer
        waiting.cancel()
        await asyncio.sleep(0.01)  # the timer has fired by now
        assert waiting.cancelled()
    finally:
        loop.set_exception_handler(None)
    assert [] == reported
