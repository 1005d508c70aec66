"""flagpost's routing finds what aiohttp's own router would, for every path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.keys import SHELL
from service.routing import FOUND_PATHS, Router
from tests.service.conftest import settings_for

TEMPLATES = [
    (resource.template, tuple(resource.methods))
    for resource in create_app(settings_for(Path("/nonexistent")))[SHELL].router.resources()
]


async def _nothing(request: web.BaseRequest, *variables: str) -> web.Response:
    return web.Response()


def both_routers() -> tuple[Router, web.UrlDispatcher]:
    ours, theirs = Router(), web.UrlDispatcher()
    for template, methods in TEMPLATES:
        for method in methods:
            ours.add(method, template, _nothing, needs_key=False)
            theirs.add_route(method, template, _nothing)
    return ours, theirs


OURS, THEIRS = both_routers()


async def aiohttp_match(path: str) -> tuple[str, tuple[str, ...]] | None:
    """The template and variables aiohttp's router finds for a request of ``path``."""
    for method in ("GET", "POST", "PUT", "DELETE"):
        info: Any = await THEIRS.resolve(make_mocked_request(method, path))
        if info.http_exception is None:
            return info.route.resource.canonical, tuple(info.values())
    return None


def our_match(path: str) -> tuple[str, tuple[str, ...]] | None:
    found = OURS.resolve(make_mocked_request("GET", path).rel_url.path_safe)
    return None if found is None else (found[0].template, found[1])


SEGMENTS = st.sampled_from(
    ["v1", "flags", "decision", "active", "variables", "variations", "visitors", "flush",
     "conversions", "ofrep", "evaluate", "healthz", "config", "stream", "banner", "", "a%2Fb",
     "100%25", "x%20y", "caf%C3%A9", "decide", "track", "odp", "events", "webhooks", "refresh",
     "data", "consent", "visitor-code", "tracking-code"]
)  # fmt: skip


VALUES = st.sampled_from(["banner", "", "a%2Fb", "a%2fb", "100%25", "x%20y", "caf%C3%A9", "%"])


@st.composite
def filled_templates(draw: st.DrawFn) -> list[str]:
    """A template's segments with each variable filled in, some of them oddly."""
    template, _ = draw(st.sampled_from(TEMPLATES))
    parts = template.split("/")[1:]
    return [draw(VALUES) if part.startswith("{") else part for part in parts]


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(SEGMENTS, min_size=1, max_size=7), filled_templates()))
async def test_every_path_resolves_as_aiohttps_router_resolves_it(segments: list[str]) -> None:
    """Any path made of the API's words (and empty, encoded or odd segments), or a route's
    template filled in, names the same route and variables, or none, in both routers."""
    path = "/" + "/".join(segments)
    assert await aiohttp_match(path) == our_match(path)


async def test_the_templates_paths_resolve_to_themselves() -> None:
    """Each template with its variables filled in is found, with those values decoded."""
    for template, _ in TEMPLATES:
        path = "/".join("x%2Fy" if part.startswith("{") else part for part in template.split("/"))
        expected = tuple("x/y" for part in template.split("/") if part.startswith("{"))
        assert (template, expected) == our_match(path)
        assert (template, expected) == await aiohttp_match(path)


def test_the_cache_of_found_paths_stays_bounded_and_right() -> None:
    """Past its size the cache starts again; a path found before and after is the same."""
    router, _ = both_routers()
    paths = [f"/v1/visitors/v{n}/flush" for n in range(FOUND_PATHS + 10)]
    found = [router.resolve(path) for path in paths]
    assert [("v" + str(n),) for n in range(FOUND_PATHS + 10)] == [f[1] for f in found if f]
    assert len(router._found) <= FOUND_PATHS
    assert found[0] == router.resolve(paths[0])
    assert None is router.resolve("/v1/visitors//flush")
