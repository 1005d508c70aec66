"""Keeping secrets out of everything flagpost shows: logs, ``GET /v1/config``, metric labels.

    Secret           a setting's value that is never shown: its repr is ``Secret('***')``
    public_url(url)  a URL fit to show: no user or password, every query value masked
    redact(text)     ``text`` with every registered secret replaced by ``***``

Settings type their secrets (API keys, Authorization values, the webhook secret) as
``Secret``, and every URL that is shown goes through ``public_url``. What a library puts in
an error message (a URL with its token, say) is caught by ``redact``, which the log renderer
and the status reports apply: ``register`` gives it every secret of the settings, including
the credentials and query values inside configured URLs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

__all__ = ["MASK", "Secret", "public_url", "redact", "register", "secrets_in_url"]

MASK = "***"
#: Query parameters that are flagpost's own options, shown as they are.
_OPTIONS = frozenset({"format"})
#: Secrets shorter than this are not searched for in free text: masking every "ab" of every
#: log line would hide more than it protects. Settings refuse such short secrets anyway.
_SHORTEST = 4
#: What ``redact`` masks, longest first, so a secret that contains another is masked whole.
_registered: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """A secret setting; ``reveal()`` is the one way to its value."""

    _value: str = field(compare=True)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__


def public_url(url: str) -> str:
    """``url`` without user or password, each query value masked but flagpost's own options."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    query = "&".join(
        f"{quote(name)}={quote(value) if name in _OPTIONS else MASK}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def secrets_in_url(url: str) -> list[str]:
    """The parts of ``url`` that ``public_url`` hides: user, password and query values, as
    written and decoded."""
    parts = urlsplit(url)
    found = [parts.username or "", parts.password or ""]
    for piece in parts.query.split("&"):
        name, _, value = piece.partition("=")
        if unquote(name) not in _OPTIONS:
            found += [value, unquote(value)]
    return [secret for secret in found if secret]


def register(secrets: Iterable[str]) -> None:
    """Have ``redact`` mask these (process-wide; registering never forgets one)."""
    global _registered  # noqa: PLW0603  # one set per process, as logging's configuration is
    known = set(_registered)
    for secret in secrets:
        known.add(secret)
        scheme, _, credentials = secret.partition(" ")  # "Bearer <token>": the token too
        if credentials and scheme.isalpha():
            known.add(credentials.strip())
    usable = (secret for secret in known if len(secret) >= _SHORTEST)
    _registered = tuple(sorted(usable, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _registered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text
