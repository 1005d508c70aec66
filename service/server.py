"""Running the service: logging, the app, the listening socket, and a graceful stop on SIGTERM
or SIGINT.

Requests are answered by the application's shell (``service.shell``) on aiohttp's low-level
server, which ``ShellRunner`` runs with the application's lifecycle around it: what
``web.AppRunner`` does for an application, without the application's request handling.

flagpost listens itself, rather than through a ``web.TCPSite``, for two reasons. Each
connection is handled by ``ConnectionHandler``, which answers a request aiohttp cannot even
parse (a bad header byte, a broken Content-Length) with flagpost's JSON error shape instead of
aiohttp's plain text that echoes the offending bytes. And only a failure to listen is reported
as one: an error while stopping is told as itself.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from service.app import create_app
from service.errors import ApiError, error_response
from service.keys import SHELL
from service.logs import configure_logging, get_logger
from service.settings import Settings

__all__ = [
    "SHUTDOWN_TIMEOUT",
    "ConnectionHandler",
    "ListenError",
    "ShellRunner",
    "accept_on",
    "new_event_loop",
    "run",
]

#: Seconds open requests (and change streams) get to finish when flagpost is stopped.
SHUTDOWN_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection is kept open (aiohttp's ``run_app`` default).
KEEPALIVE_TIMEOUT = 75.0
log = get_logger(__name__)


class ListenError(OSError):
    """The address could not be listened on."""


class ShellRunner(web.ServerRunner):
    """Runs an application's shell (``app[SHELL].handle``) on aiohttp's low-level server, with
    the application's lifecycle around it.

    ``setup`` starts the application (its cleanup contexts, in order); ``cleanup`` stops taking
    requests, closes idle connections, ends the change streams (``on_shutdown``), gives the
    requests under way ``shutdown_timeout`` seconds, and then stops the application (its
    cleanup contexts, in reverse: the events are drained last). ``server_options`` go to
    ``web.Server`` and from it to each connection's handler.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
        **server_options: Any,
    ) -> None:
        super().__init__(
            web.Server(app[SHELL].handle, **server_options), shutdown_timeout=shutdown_timeout
        )
        self.app = app

    async def setup(self) -> None:
        app = self.app
        for signal_ in (app.on_startup, app.on_shutdown, app.on_cleanup):
            signal_.freeze()  # aiosignal sends frozen signals only
        try:
            await app.startup()
        except BaseException:
            await app.cleanup()  # the contexts already started are stopped
            raise
        await super().setup()

    async def shutdown(self) -> None:
        await self.app.shutdown()

    async def cleanup(self) -> None:
        try:
            await super().cleanup()
        finally:
            await self.app.cleanup()


class ConnectionHandler(web.RequestHandler):
    """aiohttp's handler of one connection, with flagpost's answer to what it cannot parse.

    ``handle_error`` is aiohttp's own hook for those requests (``tests/service/
    test_hostile_http.py`` holds it to the JSON shape through a real process)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("request_crashed", exc_info=exc)
            error = ApiError(500, "INTERNAL", "an internal error occurred")
        else:  # the client's doing: one quiet line, and nothing of what it sent is echoed
            log.info("request_malformed", status=status, error=type(exc).__name__)
            error = ApiError(status, "MALFORMED_HTTP", "the request is not well-formed HTTP/1.1")
        if request.writer.output_size > 0:  # a response is under way: the connection is lost
            raise ConnectionError("a response was already being sent")
        response = error_response(error)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # aiohttp reports a body it could not decode (a bogus Content-Encoding) again when it
        # discards the rest after the answer: that is the client's doing, not flagpost's.
        error = kwargs.get("exc_info")
        if isinstance(error, web.RequestPayloadError | HttpProcessingError):
            log.info("request_body_unreadable", error=type(error).__name__)
            return
        super().log_exception(*args, **kwargs)


def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT; raises ``ListenError`` if the address cannot be used."""
    configure_logging(settings.log_format, settings.log_level)
    log.info("flagpost_starting", settings=settings.public())
    with asyncio.Runner(loop_factory=lambda: new_event_loop(settings.event_loop)) as runner:
        runner.run(serve(settings))
    log.info("flagpost_stopped")


async def serve(settings: Settings) -> None:
    """Start the app, listen, and on a stop signal stop listening, finish open requests
    (``SHUTDOWN_TIMEOUT``), then stop the app's resources (events drained last)."""
    access_log = logging.getLogger("flagpost.access") if settings.access_log else None
    runner = ShellRunner(create_app(settings), shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        listener = await listen(runner, settings.host, settings.port, access_log=access_log)
        log.info(
            "flagpost_listening",
            host=settings.host,
            port=settings.port,
            event_loop=settings.event_loop,
        )
        await stopping.wait()
        log.info("flagpost_stopping")
        listener.close()
    finally:
        await runner.cleanup()


async def listen(
    runner: web.BaseRunner, host: str, port: int, *, access_log: logging.Logger | None
) -> asyncio.AbstractServer:
    """Accept connections for ``runner``'s (set up) server, each handled by a
    ``ConnectionHandler``; ``runner.cleanup()`` later closes them gracefully."""
    connection = _connections(runner, access_log)
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(connection, host, port, reuse_address=True, backlog=128)
    except OSError as error:
        raise ListenError(error.errno, error.strerror) from None


async def accept_on(
    runner: web.BaseRunner, sock: socket.socket, *, access_log: logging.Logger | None
) -> asyncio.AbstractServer:
    """``listen``, on a socket already listening (one a process manager hands over)."""
    connection = _connections(runner, access_log)
    return await asyncio.get_running_loop().create_server(connection, sock=sock, backlog=128)


def _connections(
    runner: web.BaseRunner, access_log: logging.Logger | None
) -> Callable[[], ConnectionHandler]:
    """What makes each connection's handler for ``runner``'s server."""
    manager = runner.server
    assert manager is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    # As web.run_app sets them up; aiohttp takes access_log=None for "off", as run_app does.
    options: dict[str, Any] = {"access_log": access_log, "keepalive_timeout": KEEPALIVE_TIMEOUT}

    def connection() -> ConnectionHandler:
        return ConnectionHandler(manager, loop=loop, **options)

    return connection


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind settings name: ``uvloop`` or ``asyncio``."""
    if kind == "uvloop":
        import uvloop  # noqa: PLC0415  # optional: not installed on Windows

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
