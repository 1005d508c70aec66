"""Settings: read from ``FLAGPOST_*`` environment variables, each overridable by a flag.

Every setting is validated once, at start; a bad one stops flagpost with one line naming the
variable and what it expects (``SettingsError``), before anything listens. Secrets are typed
as ``Secret`` and URLs are shown through ``public_url``: ``Settings.public()`` is what may be
logged, and nothing else of the settings is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import rules
from service.events.sinks import parse_sink
from service.redaction import MASK, Secret, public_url, secrets_in_url

__all__ = ["DEFAULT_LOOP", "DEFAULT_RULES", "Settings", "SettingsError", "load_settings"]

DEFAULT_RULES = str(Path(rules.__file__).resolve().parent / "examples" / "demo.json")
#: uvloop where it is installed (a dependency everywhere but Windows): it takes a fifth off
#: the per-request cost of aiohttp's transport and scheduling (bench/service.py --loop).
DEFAULT_LOOP = "uvloop" if find_spec("uvloop") is not None else "asyncio"
T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is invalid; the message names it and says what it expects."""


def _text(raw: str) -> str:
    return raw


def _optional(raw: str) -> str | None:
    return raw or None


def _secret(raw: str) -> Secret | None:
    if not raw:
        return None
    if len(raw) < 8:
        raise ValueError("must be at least 8 characters long")
    return Secret(raw)


def _number(
    convert: Callable[[str], T], ok: Callable[[T], bool], expects: str
) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        try:
            value = convert(raw.strip())
        except ValueError:
            raise ValueError(f"must be {expects}") from None
        if not ok(value):
            raise ValueError(f"must be {expects}")
        return value

    return parse


_positive = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_port = _number(int, lambda v: 0 <= v <= 65535, "a port number from 0 to 65535")
_size = _number(int, lambda v: v >= 1024, "a number of bytes, at least 1024")
_count = _number(int, lambda v: v >= 1, "a whole number of at least 1")


def _flag(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _keys(raw: str) -> tuple[Secret, ...]:
    keys = tuple(key.strip() for key in raw.split(",") if key.strip())
    if any(len(key) < 16 for key in keys):
        raise ValueError("each API key must be at least 16 characters long")
    return tuple(map(Secret, keys))


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _event_loop(raw: str) -> str:
    value = _choice("uvloop", "asyncio")(raw)
    if value == "uvloop" and find_spec("uvloop") is None:
        raise ValueError("asks for uvloop, which is not installed (install it, or use asyncio)")
    return value


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a container's cpuset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _workers(raw: str) -> int:
    value = raw.strip().lower()
    if value == "auto":
        return usable_cpus()
    return _number(int, lambda v: 1 <= v <= 256, "auto or a whole number from 1 to 256")(value)


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "redis://", "rediss://"))


def _public_text(raw: str) -> str:
    """A setting's raw text as it may be shown: each URL in it (comma-separated) public."""
    parts = raw.split(",")
    return ",".join(public_url(part.strip()) if _is_url(part.strip()) else part for part in parts)


def _url_secrets(raw: str) -> list[str]:
    """The credentials and tokens of every URL in a setting's raw text (comma-separated)."""
    return [secret for part in raw.split(",") for secret in secrets_in_url(part.strip())]


def _rules_source(raw: str) -> str:
    scheme = urlsplit(raw).scheme
    if scheme in ("http", "https"):
        if not urlsplit(raw).netloc:
            raise ValueError("is a URL without a host")
        return raw
    if scheme and len(scheme) > 1:
        raise ValueError("must be a file path or an http(s) URL")
    return raw


def _cookie_name(raw: str) -> str:
    value = raw.strip()
    if not value or any(c in value for c in '()<>@,;:\\"/[]?={} \t') or not value.isprintable():
        raise ValueError("must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)")
    return value


def _redis_url(raw: str) -> str | None:
    value = raw.strip()
    return _visitor_store(value) if value else None


def _visitor_store(raw: str) -> str:
    value = raw.strip()
    if value == "memory":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("must be memory or a redis://host:port/db (or rediss://) URL")
    try:
        parts.port  # noqa: B018 (a bad port raises here, not at the first request)
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value


def _sinks(raw: str) -> tuple[str, ...]:
    specs = tuple(spec.strip() for spec in raw.split(",") if spec.strip())
    if specs in ((), ("off",)):
        return ()
    for spec in specs:
        parse_sink(spec, file_max_bytes=1024, timeout=1.0, authorization=None, source_id="")
    if len({public_url(spec) for spec in specs}) != len(specs):
        raise ValueError("names the same sink twice")
    return specs


def _setting(
    env: str, parse: Callable[[str], Any], default: Any, help: str, *, secret: bool = False
) -> Any:
    """A setting; ``secret``: its raw text is never shown, not even when it is refused."""
    metadata = {"env": env, "parse": parse, "help": help, "secret": secret}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Everything flagpost can be told, with its defaults."""

    rules: str = _setting(
        "FLAGPOST_RULES", _rules_source, DEFAULT_RULES, "rules file path or http(s) URL"
    )
    rules_auth: Secret | None = _setting(
        "FLAGPOST_RULES_AUTH",
        _secret,
        None,
        "Authorization header value for an http(s) source",
        secret=True,
    )
    rules_timeout: float = _setting(
        "FLAGPOST_RULES_TIMEOUT", _positive, 10.0, "seconds allowed for fetching the rules"
    )
    workers: int = _setting(
        "FLAGPOST_WORKERS",
        _workers,
        1,
        "processes answering on the port (auto: one per usable CPU), under gunicorn",
    )
    host: str = _setting("FLAGPOST_HOST", _text, "127.0.0.1", "address to listen on")
    port: int = _setting("FLAGPOST_PORT", _port, 8080, "port to listen on")
    environment: str | None = _setting(
        "FLAGPOST_ENVIRONMENT", _optional, None, "default environment (the rules' first if unset)"
    )
    max_rules_bytes: int = _setting(
        "FLAGPOST_MAX_RULES_BYTES",
        _size,
        16 * 1024**2,
        "largest rules document loaded, in bytes (a larger one is refused, the last kept)",
    )
    max_flags: int = _setting(
        "FLAGPOST_MAX_FLAGS",
        _count,
        20_000,
        "most flags in a rules document (more are refused, the last rules kept)",
    )
    refresh_interval: float = _setting(
        "FLAGPOST_REFRESH_INTERVAL", _positive, 60.0, "seconds between rules refreshes"
    )
    webhook_secret: Secret | None = _setting(
        "FLAGPOST_WEBHOOK_SECRET",
        _secret,
        None,
        "HMAC secret of the refresh webhook, 8 characters or more (off if unset)",
        secret=True,
    )
    api_keys: tuple[Secret, ...] = _setting(
        "FLAGPOST_API_KEYS",
        _keys,
        (),
        "comma-separated API keys, 16 characters or more (no auth if unset)",
        secret=True,
    )
    log_format: str = _setting(
        "FLAGPOST_LOG_FORMAT", _choice("json", "console"), "json", "json or console"
    )
    log_level: str = _setting(
        "FLAGPOST_LOG_LEVEL",
        _choice("debug", "info", "warning", "error"),
        "info",
        "debug, info, warning or error",
    )
    event_loop: str = _setting(
        "FLAGPOST_EVENT_LOOP", _event_loop, DEFAULT_LOOP, "uvloop or asyncio (the standard one)"
    )
    access_log: bool = _setting(
        "FLAGPOST_ACCESS_LOG", _flag, False, "log every request (off: keeps the hot path lean)"
    )
    cache_dir: str = _setting(
        "FLAGPOST_CACHE_DIR", _text, ".flagpost/cache", "where the last good rules are kept"
    )
    max_body: int = _setting(
        "FLAGPOST_MAX_BODY", _size, 64 * 1024, "largest request body accepted, in bytes"
    )
    body_timeout: float = _setting(
        "FLAGPOST_BODY_TIMEOUT",
        _positive,
        10.0,
        "seconds a client has to send a request's body (408 after that)",
    )
    max_attributes: int = _setting(
        "FLAGPOST_MAX_ATTRIBUTES", _count, 200, "most context attributes (all levels) per request"
    )
    max_depth: int = _setting(
        "FLAGPOST_MAX_DEPTH", _count, 5, "deepest nesting of context attributes"
    )
    events: tuple[str, ...] = _setting(
        "FLAGPOST_EVENTS",
        _sinks,
        ("file:.flagpost/events",),
        "comma-separated event sinks: file:<dir>, http(s)://...[?format=native|tracker|odp], off",
    )
    events_auth: Secret | None = _setting(
        "FLAGPOST_EVENTS_AUTH",
        _secret,
        None,
        "Authorization header value for http(s) sinks",
        secret=True,
    )
    tracker_source: str = _setting(
        "FLAGPOST_TRACKER_SOURCE", _text, "flagpost", "source.id of tracker-format payloads"
    )
    session_ttl: float = _setting(
        "FLAGPOST_SESSION_TTL", _positive, 1800.0, "seconds a visitor session lasts when idle"
    )
    session_limit: int = _setting(
        "FLAGPOST_SESSION_LIMIT",
        _count,
        500_000,
        "most visitor sessions in memory (a 64th per table)",
    )
    batch_size: int = _setting(
        "FLAGPOST_BATCH_SIZE", _count, 500, "most events per batch: as many queued are flushed"
    )
    flush_interval: float = _setting(
        "FLAGPOST_FLUSH_INTERVAL", _positive, 1.0, "seconds before a partial batch is flushed"
    )
    queue_size: int = _setting(
        "FLAGPOST_QUEUE_SIZE",
        _count,
        100_000,
        "events queued before they go to the flusher at once",
    )
    sink_timeout: float = _setting(
        "FLAGPOST_SINK_TIMEOUT",
        _positive,
        10.0,
        "seconds a batch is retried before the sink is down",
    )
    spool_dir: str = _setting(
        "FLAGPOST_SPOOL_DIR", _text, ".flagpost/spool", "where undeliverable batches are kept"
    )
    spool_max_bytes: int = _setting(
        "FLAGPOST_SPOOL_MAX_BYTES", _size, 1024**3, "largest spool per sink, in bytes"
    )
    events_file_max_bytes: int = _setting(
        "FLAGPOST_EVENTS_FILE_MAX_BYTES", _size, 64 * 1024**2, "file sink rotation size, in bytes"
    )
    events_file_max_age: float = _setting(
        "FLAGPOST_EVENTS_FILE_MAX_AGE",
        _positive,
        300.0,
        "seconds a file sink's file stays open before it is closed for readers (also when idle)",
    )
    drain_timeout: float = _setting(
        "FLAGPOST_DRAIN_TIMEOUT", _positive, 10.0, "seconds to deliver queued events on stop"
    )
    visitors: str = _setting(
        "FLAGPOST_VISITORS",
        _visitor_store,
        "memory",
        "visitor data store: memory (one process) or redis[s]://[:password@]host:port/db",
    )
    visitor_limit: int = _setting(
        "FLAGPOST_VISITOR_LIMIT",
        _count,
        100_000,
        "most visitors the memory store keeps (the least recently active is evicted)",
    )
    visitor_retention: float = _setting(
        "FLAGPOST_VISITOR_RETENTION",
        _positive,
        30 * 86400.0,
        "seconds a visitor's visit history is kept after its last activity",
    )
    visitor_timeout: float = _setting(
        "FLAGPOST_VISITOR_TIMEOUT",
        _positive,
        0.05,
        "seconds a decision waits for visitor data (then decides without it)",
    )
    visitor_write_timeout: float = _setting(
        "FLAGPOST_VISITOR_WRITE_TIMEOUT",
        _positive,
        2.0,
        "seconds a visitor data write may take (503 STORE_UNAVAILABLE after that)",
    )
    redis_url: str | None = _setting(
        "FLAGPOST_REDIS_URL",
        _redis_url,
        None,
        "Redis the replicas share, redis[s]://[:password@]host:port/db: refreshes and webhooks",
    )
    consent_required: bool = _setting(
        "FLAGPOST_CONSENT_REQUIRED",
        _flag,
        False,
        "record experiment exposures, attributes and cookies only for visitors who consented",
    )
    visitor_cookie: str = _setting(
        "FLAGPOST_VISITOR_COOKIE",
        _cookie_name,
        "kameleoonVisitorCode",
        "name of the visitor code cookie (GET /v1/visitor-code)",
    )
    cookie_domain: str | None = _setting(
        "FLAGPOST_COOKIE_DOMAIN", _optional, None, "Domain of the visitor code cookie (unset: none)"
    )
    visitor_max_items: int = _setting(
        "FLAGPOST_VISITOR_MAX_ITEMS", _count, 100, "most visitor data items per request"
    )
    visitor_max_url: int = _setting(
        "FLAGPOST_VISITOR_MAX_URL", _count, 2048, "longest page view URL, in characters"
    )
    visitor_max_cookies: int = _setting(
        "FLAGPOST_VISITOR_MAX_COOKIES", _count, 50, "most cookies in one cookie item"
    )

    def __repr__(self) -> str:
        return f"Settings({self.public()})"

    def public(self) -> dict[str, Any]:
        """Every setting as it may be shown: secrets masked, URLs without their credentials."""
        shown: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.metadata["secret"]:
                value = None if value in (None, ()) else MASK
            elif spec.name in {"rules", "visitors"}:
                value = public_url(value) if _is_url(value) else value
            elif spec.name == "events":
                value = [public_url(sink) if _is_url(sink) else sink for sink in value]
            shown[spec.name] = value
        return shown

    def secrets(self) -> list[str]:
        """Every secret these settings hold, URL credentials and tokens included."""
        found: list[str] = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, Secret):
                    found.append(item.reveal())
                elif isinstance(item, str):
                    found += _url_secrets(item)
        return found

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """(attribute, variable, default, help) of every setting, for --help and the README."""
        return [
            (f.name, f.metadata["env"], repr(f.default), f.metadata["help"]) for f in fields(cls)
        ]


def load_settings(
    environ: Mapping[str, str], overrides: Mapping[str, str | None] | None = None
) -> Settings:
    """Settings from ``environ``, with ``overrides`` (attribute name -> raw text) taking precedence.

    Raises ``SettingsError`` naming the first invalid setting.
    """
    values: dict[str, Any] = {}
    for spec in fields(Settings):
        variable = spec.metadata["env"]
        raw = (overrides or {}).get(spec.name)
        origin = f"--{spec.name.replace('_', '-')}"
        if raw is None:
            raw, origin = environ.get(variable), variable
        if raw is None:
            continue
        try:
            values[spec.name] = spec.metadata["parse"](raw)
        except ValueError as error:
            why = str(error)
            shown = MASK if spec.metadata["secret"] else _public_text(raw)
            raise SettingsError(f"{origin}={shown!r} {why}") from None
    settings = Settings(**values)
    _refuse_two_credentials(settings)
    _refuse_per_worker_state(settings)
    return settings


def _refuse_two_credentials(settings: Settings) -> None:
    """A URL with a user and password, and an Authorization setting for it too: an HTTP
    request can carry only one, so say so now rather than fail at every fetch."""
    pairs = [("FLAGPOST_RULES", settings.rules, "FLAGPOST_RULES_AUTH", settings.rules_auth)]
    pairs += [("FLAGPOST_EVENTS", sink, "FLAGPOST_EVENTS_AUTH", settings.events_auth)
              for sink in settings.events]  # fmt: skip
    for variable, url, auth_variable, auth in pairs:
        parts = urlsplit(url)
        if auth is not None and _is_url(url) and (parts.username or parts.password):
            raise SettingsError(
                f"{variable}={public_url(url)!r} carries a user and password and "
                f"{auth_variable} is set too: use one of them"
            )


def _refuse_per_worker_state(settings: Settings) -> None:
    """State that must be one for the whole server, kept by each worker on its own: refused,
    since answers would then depend on which worker a request reached."""
    if settings.workers == 1:
        return
    workers = f"FLAGPOST_WORKERS={settings.workers}"
    if settings.visitors == "memory":
        raise SettingsError(
            f"{workers} with FLAGPOST_VISITORS=memory: each worker would keep visitor data of "
            "its own; set FLAGPOST_VISITORS to a redis:// URL, or run one worker"
        )
    if settings.webhook_secret is not None and settings.redis_url is None:
        raise SettingsError(
            f"{workers} with FLAGPOST_WEBHOOK_SECRET and no FLAGPOST_REDIS_URL: a webhook "
            "would refresh one worker and be guarded against replays in that one alone; set "
            "FLAGPOST_REDIS_URL, or run one worker"
        )
