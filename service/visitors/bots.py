"""Is this user agent a bot? The patterns of the crawler-user-agents list, matched with RE2.

The list (monperrus/crawler-user-agents, on PyPI as ``crawler-user-agents``) tags generic HTTP
client libraries (``http-library``: curl, python-requests, okhttp, Go-http-client, aiohttp,
...). A request's ``User-Agent`` header from one of those is an app calling its sidecar, not a
bot; a ``user_agent`` the app *stored* for the visitor is judged by every pattern (Kameleoon's
convention: an app marks its own bots as ``curl/8.0``). Each distinct user agent is judged
once; the answers are kept in a bounded cache.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import crawleruseragents
import re2

__all__ = ["BotJudge"]

LIBRARY_TAG: Final = "http-library"
#: Distinct user agents whose verdict is kept (each judgement is a few microseconds).
CACHED: Final = 8192
#: Memory RE2 may use for the combined pattern (its default is too small for 1,500
#: alternatives: it would fall back to a slower engine and say so on stderr).
MAX_MEMORY: Final = 64 << 20


def _compiled(patterns: list[str]) -> Any:
    options = re2.Options()
    options.max_mem = MAX_MEMORY
    options.never_capture = True
    return re2.compile("|".join(f"(?:{pattern})" for pattern in patterns), options=options)


class BotJudge:
    def __init__(self) -> None:
        entries = crawleruseragents.CRAWLER_USER_AGENTS_DATA
        every = _compiled([entry["pattern"] for entry in entries])
        crawlers = _compiled(
            [entry["pattern"] for entry in entries if LIBRARY_TAG not in entry.get("tags", ())]
        )
        self.stored_is_bot = lru_cache(CACHED)(lambda agent: every.search(agent) is not None)
        self.header_is_bot = lru_cache(CACHED)(lambda agent: crawlers.search(agent) is not None)

    def is_bot(self, stored: str | None, header: str | None) -> bool:
        """Whether the visitor is a bot: by the stored user agent when there is one, else by
        the request's header (where generic HTTP clients are not bots)."""
        if stored:
            return bool(self.stored_is_bot(stored))
        if header:
            return bool(self.header_is_bot(header))
        return False
