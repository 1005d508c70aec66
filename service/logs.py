"""Logging, configured in one place: structlog for flagpost, stdlib records (aiohttp's) alike.

Every line is one JSON object (or a readable console line), carries ``request_id`` when it
was written while a request was being handled, and goes to stderr. Nothing is logged per
request unless the access log is asked for. No line carries a configured secret: each is
masked in the finished line (``service.redaction``), whoever wrote it.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import orjson
import structlog

from service.redaction import redact

__all__ = ["REQUEST_ID", "configure_logging", "get_logger"]

#: The id of the request being handled; set by the app's middleware for each request.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def _add_request_id(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    # A plain ContextVar read: cheaper per request than binding structlog context vars.
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    _add_request_id,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _redacted(logger: Any, method: str, line: Any) -> str:
    return redact(line)


def _json(data: Any, **_: Any) -> str:
    return orjson.dumps(data, default=str).decode()


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Send structlog and stdlib logging through one renderer at one level."""
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
                _redacted,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """A structlog logger named after its module."""
    return structlog.get_logger(name)
