"""Visitor codes as Kameleoon's ``get_visitor_code`` manages them, and their cookie.

The code is the visitor code cookie of the request (an app forwards its browser's ``Cookie``
header), else the ``visitor_code`` query parameter, else ``default_visitor_code``, else a new
random code of 16 hex characters. A cookie value that is not a valid code is ignored. The
cookie lasts 380 days on ``Path=/`` with ``SameSite=Lax``, and ``Domain`` when configured.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from service.errors import ApiError

__all__ = ["COOKIE_DAYS", "CookiePolicy", "choose_code", "is_valid_code"]

COOKIE_DAYS: Final = 380
MAX_CODE: Final = 255
#: What a visitor code must be made of to travel in a cookie unquoted: RFC 6265's
#: cookie-octet (printable ASCII but space, double quote, comma, semicolon and backslash).
_COOKIE_SAFE: Final = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]{1,255}")


def is_valid_code(value: str | None) -> bool:
    return value is not None and _COOKIE_SAFE.fullmatch(value) is not None


def _given(value: str | None, field: str) -> str | None:
    """A code given as a parameter: absent, or valid (else 400 INVALID_VISITOR_CODE)."""
    if value is None:
        return None
    if not is_valid_code(value):
        raise ApiError(
            400,
            "INVALID_VISITOR_CODE",
            f"{field} must be 1 to {MAX_CODE} characters that can travel in a cookie "
            "(printable ASCII but space, quote, comma, semicolon and backslash)",
            field,
        )
    return value


def choose_code(cookie: str | None, query: Mapping[str, str]) -> str:
    """The visitor's code: the cookie's, the query's, the default, or a new one."""
    if is_valid_code(cookie):
        return str(cookie)
    found = _given(query.get("visitor_code"), "visitor_code")
    if found is None:
        found = _given(query.get("default_visitor_code"), "default_visitor_code")
    return found if found is not None else secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    name: str
    domain: str | None

    def set(self, code: str) -> str:
        """The ``Set-Cookie`` value that keeps ``code`` for 380 days."""
        return self._cookie(code, COOKIE_DAYS * 86400)

    def expire(self) -> str:
        """The ``Set-Cookie`` value that removes the cookie."""
        return self._cookie("", 0)

    def _cookie(self, value: str, max_age: int) -> str:
        domain = f"; Domain={self.domain}" if self.domain else ""
        return f"{self.name}={value}; Max-Age={max_age}; Path=/{domain}; SameSite=Lax"
