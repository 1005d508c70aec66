"""flagpost reads a GET decision's query parameters as ``request.query`` would."""

from __future__ import annotations

import asyncio
from unittest import mock

from aiohttp.http import HttpRequestParser
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from service.payloads import query_values

PIECES = st.sampled_from(
    ["visitor_code", "track", "environment", "=", "&", "&&", "+", "v-1", "true", "false",
     "a b", "%20", "%2B", "%", "%ZZ", "caf%C3%A9", "café", "#", "?", ";", "x=y", ""]
)  # fmt: skip


def parsed_query(target: str) -> dict[str, str] | None:
    """What aiohttp's own parser and yarl make of ``target``: each name's first value; None
    if the parser refuses the request line (it is answered 400 before any handler)."""
    loop = asyncio.new_event_loop()
    request = f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
    try:
        parser = HttpRequestParser(mock.Mock(), loop, 2**16, max_line_size=8190)
        messages, _, _ = parser.feed_data(request)
    except HttpProcessingError:
        return None
    finally:
        loop.close()
    query = messages[0][0].url.query
    return {name: query[name] for name in query}


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(["/v1/flags/banner/decision", "/v1/decide", "http://h/v1/decide"]),
    st.lists(PIECES, max_size=8),
)
def test_query_values_are_the_first_of_each_name_as_yarl_decodes_them(
    path: str, pieces: list[str]
) -> None:
    """Any query of parameter words, separators, escapes and odd characters reads the same as
    through aiohttp's parser and yarl, or is left to them (None)."""
    target = f"{path}?{''.join(pieces)}" if pieces else path
    parsed = parsed_query(target)
    assume(parsed is not None)
    values = query_values(target)
    if values is not None:
        assert parsed == values


def test_plain_queries_are_read_without_yarl() -> None:
    """A query with no escape, fragment or host is read here, '+' as a space, duplicates
    first-wins, empty pairs skipped."""
    assert {"visitor_code": "a b", "track": "false", "x": ""} == query_values(
        "/v1/flags/banner/decision?visitor_code=a+b&&track=false&x&track=true"
    )
    assert {} == query_values("/v1/flags/banner/decision")
    assert None is query_values("/v1/flags/banner/decision?visitor_code=caf%C3%A9")
    assert None is query_values("http://h/v1/flags/banner/decision?visitor_code=v")
