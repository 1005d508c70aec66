"""The HTTP shell: the one handler aiohttp's low-level server calls for every request.

``Shell.handle`` finds the route (``service.routing``), guards it and answers, in a single
coroutine around the route's handler:

- a request id, the client's ``X-Request-Id`` if it is acceptable, else one made here; set for
  the logs and returned in the ``X-Request-Id`` header;
- API keys (``X-API-Key`` or ``Authorization: Bearer``) on ``/v1`` and ``/ofrep``, except the
  webhook, which proves itself with its signature; health and metrics stay open for probes;
- 404 and 405 (with ``Allow``) for what no route serves, before any key is asked for;
- every failure as the JSON error shape: ``ApiError`` and rules errors as themselves, anything
  else logged and answered 500 ``INTERNAL``;
- the request counted by route, method and status, with its duration.

Why not aiohttp's ``web.Application``: its router tries each dynamic route's regular
expression in turn, and its request handling adds layers (a match-info object, the
middleware chain, a ``web.Request`` per request) that together cost more per request than
deciding does. The low-level server (``web.Server``) is public aiohttp API; everything the
application did for flagpost (its lifecycle, the typed keys) is still a ``web.Application``,
started and stopped by ``service.server`` around the low-level server.
"""

from __future__ import annotations

import hmac
import itertools
import os
import re
from bisect import bisect_left
from time import perf_counter

from aiohttp import web
from aiohttp.hdrs import AUTHORIZATION
from multidict import istr

import rules
from service.errors import ApiError, error_response, from_rules_error
from service.logs import REQUEST_ID, get_logger
from service.metrics import LATENCY_BUCKETS, RequestStats
from service.routing import Handler, Router

__all__ = ["UNMATCHED", "Shell"]

log = get_logger(__name__)
#: The route label metrics give requests no route serves.
UNMATCHED = "unmatched"
#: Header names as istr: looked up without case folding.
X_REQUEST_ID, X_API_KEY = istr("X-Request-Id"), istr("X-API-Key")
_ACCEPTABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_PROCESS_PREFIX = os.urandom(4).hex()
_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE"}


class Shell:
    """Routes and their guard; ``handle`` is the low-level server's handler."""

    def __init__(self, api_keys: tuple[bytes, ...], stats: RequestStats) -> None:
        self.router = Router()
        self.keys = api_keys
        self.stats = stats
        self.durations = stats.durations
        self._counter = itertools.count(1)

    def add(self, method: str, template: str, handler: Handler) -> None:
        """Route ``method`` on ``template`` to ``handler(request, *variables)``."""
        needs_key = bool(self.keys) and _needs_key(template)
        self.router.add(method, template, handler, needs_key=needs_key)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = perf_counter()
        request_id = request.headers.get(X_REQUEST_ID)
        if request_id is None or not _ACCEPTABLE_REQUEST_ID.fullmatch(request_id):
            request_id = f"{_PROCESS_PREFIX}-{next(self._counter):x}"
        # Not reset afterwards: aiohttp writes the access log line (when enabled) after the
        # handler returns, and it should carry the id too. The next request overwrites it.
        REQUEST_ID.set(request_id)
        label = UNMATCHED
        method = request.method
        try:
            # The request target as sent, which is the path as decoded unless it has a % or
            # is not a plain path (then yarl decodes it, as aiohttp's router would).
            path = request.raw_path
            query = path.find("?")
            if query >= 0:
                path = path[:query]
            if "%" in path or path[:1] != "/":
                path = request.rel_url.path_safe
            found = self.router.resolve(path)
            if found is None:
                raise ApiError(404, "NOT_FOUND", f"no such resource: {request.path}")
            resource, variables = found
            target = resource.methods.get(method)
            if target is None:
                raise ApiError(
                    405,
                    "METHOD_NOT_ALLOWED",
                    f"{method} is not allowed here",
                    headers={"Allow": ", ".join(sorted(resource.methods))},
                )
            label = target.label
            if target.needs_key and not _has_key(request, self.keys):
                raise ApiError(
                    401,
                    "UNAUTHORIZED",
                    "a valid API key is required",
                    headers={"WWW-Authenticate": 'Bearer realm="flagpost"'},
                )
            response = await target.handler(request, *variables)
        except ApiError as error:
            response = error_response(error)
        except rules.RulesError as error:
            response = error_response(from_rules_error(error))
        except web.HTTPException as error:  # raised by aiohttp itself, e.g. reading a body
            code = _HTTP_CODES.get(error.status, "INVALID_REQUEST")
            response = error_response(ApiError(error.status, code, error.reason))
        except Exception:
            log.exception("request_failed", path=request.path, method=method)
            response = error_response(ApiError(500, "INTERNAL", "an internal error occurred"))
        if not response.prepared:
            response.headers[X_REQUEST_ID] = request_id
        # RequestStats.record, inline: a call costs more than the counting.
        status = response.status
        histogram = self.durations.get((label, method, status))
        if histogram is None:
            histogram = self.stats.histogram((label, method, status))
        seconds = perf_counter() - started
        histogram[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        histogram[-1] += seconds
        return response


def _needs_key(template: str) -> bool:
    return template.startswith(("/v1/", "/ofrep/")) and not template.startswith("/v1/webhooks/")


def _has_key(request: web.BaseRequest, keys: tuple[bytes, ...]) -> bool:
    presented = request.headers.get(X_API_KEY)
    if presented is None:
        scheme, _, credentials = request.headers.get(AUTHORIZATION, "").partition(" ")
        presented = credentials.strip() if scheme.lower() == "bearer" else ""
    # Header bytes that are not UTF-8 arrive as surrogates: they match no key, never crash.
    offered = presented.encode(errors="replace")
    found = False
    for key in keys:  # every key is compared, so timing does not tell which one nearly matched
        found |= hmac.compare_digest(offered, key)
    return found
