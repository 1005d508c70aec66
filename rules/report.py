"""Collecting validation problems with their paths, so one pass reports every one of them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from rules.errors import Problem

__all__ = ["KEY_PATTERN", "Report", "join", "key_path"]

#: Keys of flags, rules, variations, variables, segments, events and environments.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
KEY_RULE = "must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"


def key_path(parent: str, key: str) -> str:
    """The path of a mapping member; keys that could be misread are quoted."""
    member = key if KEY_PATTERN.fullmatch(key) else repr(key)
    return f"{parent}.{member}" if parent else member


def join(parent: str, index: int) -> str:
    """The path of a list item."""
    return f"{parent}[{index}]"


class Report:
    """Problems found so far, in the order they were found."""

    __slots__ = ("problems",)

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, reason: str) -> None:
        self.problems.append(Problem(path, reason))

    def mapping(self, value: object, path: str) -> Mapping[str, Any] | None:
        """``value`` if it is a JSON object, else None with a problem recorded."""
        if isinstance(value, Mapping):
            return value
        self.add(path, f"must be an object, not {describe(value)}")
        return None

    def fields(self, value: Mapping[str, Any], path: str, allowed: frozenset[str]) -> None:
        """Record every member of ``value`` that is not among the ``allowed`` field names."""
        for name in value:
            if name not in allowed:
                expected = ", ".join(sorted(allowed))
                self.add(key_path(path, str(name)), f"unknown field (expected one of: {expected})")

    def entries(
        self, section: Mapping[str, Any] | None, path: str, allowed: frozenset[str]
    ) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
        """(key, path, entry) of each well-keyed object member of ``section`` whose value is
        an object; bad keys, non-objects and unknown fields are recorded on the way."""
        for key, spec in (section or {}).items():
            here = key_path(path, str(key))
            entry = self.mapping(spec, here) if self.key(key, here) else None
            if entry is not None:
                self.fields(entry, here, allowed)
                yield key, here, entry

    def key(self, key: object, path: str) -> bool:
        """Whether ``key`` is a well-formed key; records a problem when it is not."""
        if isinstance(key, str) and KEY_PATTERN.fullmatch(key):
            return True
        self.add(path, f"key {key!r} {KEY_RULE}")
        return False

    def identifier(self, value: object, path: str) -> int | None:
        """A non-negative integer id, or None (recording a problem unless it was absent)."""
        if value is None:
            return None
        if type(value) is int and value >= 0:
            return value
        self.add(path, f"must be a non-negative integer, not {describe(value)}")
        return None

    def text(self, value: object, path: str, *, limit: int = 1024) -> str | None:
        """An optional string of at most ``limit`` characters."""
        if value is None:
            return None
        if type(value) is str and len(value) <= limit:
            return value
        self.add(path, f"must be a string of at most {limit} characters, not {describe(value)}")
        return None


def describe(value: object) -> str:
    """Name a JSON value's type the way a rules author would."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    if type(value) in (int, float):
        return f"the number {value!r}"
    if type(value) is str:
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
