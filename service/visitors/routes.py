"""The visitor routes: data (add, read, forget), consent, and the visitor code cookie."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

from service.errors import invalid, json_response
from service.payloads import Limits, check_visitor_code, read_json, refuse_unknown
from service.visitors.changes import add_data, forget, set_consent
from service.visitors.codes import CookiePolicy, choose_code, is_valid_code
from service.visitors.items import KINDS, ItemLimits, read_items
from service.visitors.recent import Assignment, RecentExposures, tracking_code
from service.visitors.records import KEPT_VISITS, Record, view
from service.visitors.stores import VisitorStore, now_ms

if TYPE_CHECKING:
    from service.shell import Shell
    from service.tracking import Tracking

__all__ = ["VisitorData", "VisitorIdentity"]

#: Previous visits a read includes unless told (as Kameleoon's RemoteVisitorDataFilter).
DEFAULT_PREVIOUS_VISITS: Final = 1


class VisitorData:
    def __init__(
        self,
        store: VisitorStore,
        limits: Limits,
        items: ItemLimits,
        ttl: float,
        tracking: Tracking,
    ) -> None:
        self.store = store
        #: Records a conversion item as POST .../conversions records it.
        self.tracking = tracking
        self.limits = limits
        self.items = items
        self.ttl = int(ttl * 1000)

    def add_routes(self, router: Shell) -> None:
        path = "/v1/visitors/{visitor_code}/data"
        router.add("POST", path, self.add)
        router.add("GET", path, self.read)
        router.add("DELETE", path, self.forget)

    def _answer(
        self,
        code: str,
        link: str | None,
        record: Record | None,
        *,
        kinds: frozenset[str] | None = None,
        previous_visits: int = 0,
    ) -> web.Response:
        shown = view(record, now_ms(), self.ttl, kinds=kinds, previous_visits=previous_visits)
        return json_response({"visitor_code": code, "user_id": link, **shown})

    async def add(self, request: web.BaseRequest, visitor_code: str) -> web.Response:
        code = check_visitor_code(visitor_code)
        items = read_items(await read_json(request, self.limits), self.items)
        goals = [  # every goal checked before anything is stored
            self.tracking.goal(item["goal_id"], f"data[{index}].goal_id")
            for index, item in enumerate(items)
            if item["type"] == "conversion"
        ]
        change = await self.store.write(code, add_data(items))
        conversions = (item for item in items if item["type"] == "conversion")
        for (event, revision), item in zip(goals, conversions, strict=True):
            self.tracking.accept(
                self.tracking.goal_record(
                    request,
                    code,
                    event,
                    revision,
                    item.get("revenue"),
                    item.get("negative", False),
                )
            )
        link = change.id if change.id != code else None
        return self._answer(code, link, change.record())

    async def read(self, request: web.BaseRequest, visitor_code: str) -> web.Response:
        code = check_visitor_code(visitor_code)
        kinds, previous = _read_filter(request)
        code, link, record = await self.store.read(code)
        return self._answer(code, link, record, kinds=kinds, previous_visits=previous)

    async def forget(self, request: web.BaseRequest, visitor_code: str) -> web.Response:
        code = check_visitor_code(visitor_code)
        change = await self.store.write(code, forget())
        return json_response({"visitor_code": code, "forgotten": bool(change.result)})


class VisitorIdentity:
    """Consent, the visitor code cookie and the engine tracking code."""

    def __init__(
        self,
        store: VisitorStore,
        limits: Limits,
        cookies: CookiePolicy,
        recent: RecentExposures,
        *,
        consent_required: bool,
    ) -> None:
        self.store = store
        self.recent = recent
        self.limits = limits
        self.cookies = cookies
        self.consent_required = consent_required

    def add_routes(self, router: Shell) -> None:
        router.add("PUT", "/v1/visitors/{visitor_code}/consent", self.consent)
        router.add("GET", "/v1/visitor-code", self.visitor_code)
        router.add("GET", "/v1/visitors/{visitor_code}/tracking-code", self.tracking_code)

    async def tracking_code(self, request: web.BaseRequest, visitor_code: str) -> web.Response:
        code = check_visitor_code(visitor_code)
        for name in request.query:
            raise invalid(f"unknown query parameter {name!r} (expected none)", field=name)
        assignments: list[Assignment] = []
        if not self.consent_required or await self._consented(code):
            assignments = await self.recent.assignments(code)
        return web.Response(text=tracking_code(assignments), content_type="application/javascript")

    async def consent(self, request: web.BaseRequest, visitor_code: str) -> web.Response:
        code = check_visitor_code(visitor_code)
        body = await read_json(request, self.limits)
        refuse_unknown(body, frozenset({"consent"}))
        consent = body.get("consent")
        if not isinstance(consent, bool):
            raise invalid("consent must be true or false", field="consent")
        await self.store.write(code, set_consent(consent))
        cookie: str | None = self.cookies.expire()
        if consent:  # a code that cannot travel in a cookie (a space, say) gets none
            cookie = self.cookies.set(code) if is_valid_code(code) else None
        return json_response(
            {"visitor_code": code, "consent": consent, "set_cookie": cookie},
            headers={"Set-Cookie": cookie} if cookie else None,
        )

    async def visitor_code(self, request: web.BaseRequest) -> web.Response:
        query = request.query
        for name in query:
            if name not in ("visitor_code", "default_visitor_code"):
                raise invalid(
                    f"unknown query parameter {name!r} "
                    "(expected: default_visitor_code, visitor_code)",
                    field=name,
                )
        code = choose_code(request.cookies.get(self.cookies.name), query)
        cookie: str | None = self.cookies.set(code)
        if self.consent_required and not await self._consented(code):
            cookie = None
        body = {"visitor_code": code, "set_cookie": cookie}
        return json_response(body, headers={"Set-Cookie": cookie} if cookie else None)

    async def _consented(self, code: str) -> bool:
        _, _, record = await self.store.read(code)
        return record is not None and record["consent"] is True


def _read_filter(request: web.BaseRequest) -> tuple[frozenset[str] | None, int]:
    query = request.query
    for name in query:
        if name not in ("types", "previous_visits"):
            raise invalid(
                f"unknown query parameter {name!r} (expected: previous_visits, types)", name
            )
    kinds: frozenset[str] | None = None
    if "types" in query:
        kinds = frozenset(kind.strip() for kind in query["types"].split(",") if kind.strip())
        unknown = kinds - frozenset(KINDS)
        if unknown:
            raise invalid(
                f"types names unknown types {', '.join(sorted(unknown))} "
                f"(expected: {', '.join(KINDS)})",
                field="types",
            )
    raw = query.get("previous_visits", str(DEFAULT_PREVIOUS_VISITS))
    if not (raw.isascii() and raw.isdigit()) or not 0 <= int(raw) <= KEPT_VISITS:
        raise invalid(f"previous_visits must be a whole number from 0 to {KEPT_VISITS}",
                      field="previous_visits")  # fmt: skip
    return kinds, int(raw)
