"""Running the service: logging, the app, and a graceful stop on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from service.app import create_app
from service.logs import configure_logging, get_logger
from service.settings import Settings

__all__ = ["SHUTDOWN_TIMEOUT", "new_event_loop", "run"]

#: Seconds open requests (and change streams) get to finish when flagpost is stopped.
SHUTDOWN_TIMEOUT = 10.0
log = get_logger(__name__)


def run(settings: Settings) -> None:
    """Serve until stopped; raises OSError if the address cannot be listened on."""
    configure_logging(settings.log_format, settings.log_level)
    log.info("flagpost_starting", settings=repr(settings))
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=logging.getLogger("flagpost.access") if settings.access_log else None,
        print=lambda message: log.info(
            "flagpost_listening",
            host=settings.host,
            port=settings.port,
            event_loop=settings.event_loop,
        ),
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        loop=new_event_loop(settings.event_loop),
    )
    log.info("flagpost_stopped")


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new event loop of the kind settings name: ``uvloop`` or ``asyncio``."""
    if kind == "uvloop":
        import uvloop  # noqa: PLC0415  # optional: not installed on Windows

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()
