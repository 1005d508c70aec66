"""Errors raised by the decision core.

Every error the package raises derives from one base, so a caller can catch them all::

    RulesError
    ├── InvalidRuleset        the document is not a valid rules document (.errors lists why)
    ├── FlagNotFound          no flag with that key (.flag)
    ├── VariableNotFound      the flag has no variable with that key (.flag, .variable)
    ├── InvalidVisitorCode    empty, not a string, or longer than 255 characters (.visitor_code)
    ├── InvalidContext        the context is not a mapping of attributes (.context_type)
    └── UnknownEnvironment    the environment is not declared by the rules (.environment, .known)

Bad *attribute values* are never errors: a targeting condition that cannot read an attribute
simply does not match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "FlagNotFound",
    "InvalidContext",
    "InvalidRuleset",
    "InvalidVisitorCode",
    "Problem",
    "RulesError",
    "UnknownEnvironment",
    "VariableNotFound",
]

MAX_VISITOR_CODE_LENGTH = 255


class RulesError(Exception):
    """Base of every error raised by the ``rules`` package."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a rules document is invalid, with the path of the offending part."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path or '(document)'}: {self.reason}"


class InvalidRuleset(RulesError):
    """The rules document is invalid; ``errors`` lists every problem found, in document order."""

    def __init__(self, errors: Sequence[Problem]) -> None:
        self.errors: tuple[Problem, ...] = tuple(errors)
        count = len(self.errors)
        head = f"invalid rules document: {count} problem{'s' if count != 1 else ''}"
        super().__init__("\n  ".join([head, *map(str, self.errors)]))


class FlagNotFound(RulesError):
    """No flag with this key exists in the ruleset."""

    def __init__(self, flag: object) -> None:
        self.flag = flag
        super().__init__(f"flag {flag!r} not found")


class VariableNotFound(RulesError):
    """The flag exists but declares no variable with this key."""

    def __init__(self, flag: str, variable: object) -> None:
        self.flag = flag
        self.variable = variable
        super().__init__(f"flag {flag!r} has no variable {variable!r}")


class InvalidVisitorCode(RulesError):
    """The visitor code is not a string of 1 to 255 characters."""

    def __init__(self, visitor_code: object) -> None:
        self.visitor_code = visitor_code
        if not isinstance(visitor_code, str):
            why = f"must be a string, not {type(visitor_code).__name__}"
        elif not visitor_code:
            why = "must not be empty"
        else:
            why = f"is {len(visitor_code)} characters long; the limit is {MAX_VISITOR_CODE_LENGTH}"
        super().__init__(f"visitor code {why}")


class InvalidContext(RulesError):
    """The context passed for targeting is not a mapping of attribute names to values."""

    def __init__(self, context: object) -> None:
        self.context_type = type(context).__name__
        super().__init__(f"context must be a mapping of attributes, not {self.context_type}")


class UnknownEnvironment(RulesError):
    """The environment is not one the rules document declares."""

    def __init__(self, environment: object, known: Sequence[str]) -> None:
        self.environment = environment
        self.known = tuple(known)
        super().__init__(
            f"environment {environment!r} is not declared; known: {', '.join(self.known)}"
        )
