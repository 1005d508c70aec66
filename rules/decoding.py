"""Decoding a rules document a piece at a time.

A large document (10,000 flags is a few megabytes) takes tens of milliseconds to decode in one
call. Here the top-level object and its sections (``flags``, ``segments``, ...) are walked
member by member, each value decoded on its own, and the walk yields between members, so
whoever drives it can do other work in between. Duplicate keys are refused at every level;
NaN and Infinity are not JSON and are refused too.

Two things could still take one long step: turning the bytes into text, and decoding one
huge value. The text is decoded a ``PIECE`` at a time. A piece with no quote at all can only
lie inside one string (or a run of digits or blanks), so a document with such a piece holds a
value longer than any rules document needs, and is refused before any value is decoded.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Generator
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

from rules.errors import InvalidRuleset, Problem

__all__ = ["decode_steps"]

Steps = Generator[None, None, Any]
_SPACE = re.compile(r"[ \t\n\r]*")
#: Characters of text decoded per step; any single value is shorter than two of them.
PIECE = 1 << 20


class _Duplicates(ValueError):
    def __init__(self, keys: list[str]) -> None:
        super().__init__(", ".join(sorted(set(map(repr, keys)))))


def _build_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    built = dict(pairs)
    if len(built) != len(pairs):
        seen: set[str] = set()
        raise _Duplicates([key for key, _ in pairs if key in seen or seen.add(key)])  # type: ignore[func-returns-value]
    return built


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(object_pairs_hook=_build_object, parse_constant=_refuse_constant)


def decode_steps(data: bytes | bytearray | str) -> Steps:
    """Decode ``data``, yielding between members; returns the value or raises InvalidRuleset."""
    try:
        text = (yield from _text_steps(data)) if isinstance(data, (bytes, bytearray)) else data
        text = text.removeprefix("\ufeff")
        _refuse_huge_values(text)
        start = _SPACE.match(text, 0).end()  # type: ignore[union-attr]
        if text.startswith("{", start):
            value, end = yield from _walk(text, start, depth=0)
        else:
            value, end = _DECODER.raw_decode(text, start)
        end = _SPACE.match(text, end).end()  # type: ignore[union-attr]
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
        return value
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise InvalidRuleset([Problem("", f"not valid JSON: {error.msg} ({where})")]) from None
    except _Duplicates as error:
        raise InvalidRuleset([Problem("", f"duplicate keys in one object: {error}")]) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidRuleset([Problem("", f"not valid JSON: {error}")]) from None
    except RecursionError:
        raise InvalidRuleset([Problem("", "the document nests too deeply")]) from None


def _text_steps(data: bytes | bytearray) -> Generator[None, None, str]:
    """``data`` decoded from UTF-8, ``PIECE`` bytes a step."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    pieces = []
    for start in range(0, len(view), PIECE):
        pieces.append(decoder.decode(view[start : start + PIECE]))
        yield
    pieces.append(decoder.decode(b"", final=True))
    return "".join(pieces)


def _refuse_huge_values(text: str) -> None:
    """Refuse a document with a piece of text that holds no quote (a value over ``PIECE``
    characters long) before any of it is decoded: decoding it would be one long step."""
    for start in range(0, len(text) - PIECE + 1, PIECE):
        if text.find('"', start, start + PIECE) < 0:
            raise ValueError(
                f"a value near character {start} is longer than {PIECE} characters "
                "(no rules document needs one)"
            )


def _walk(text: str, index: int, depth: int) -> Generator[None, None, tuple[dict[str, Any], int]]:
    """Decode the object at ``text[index] == "{"``: the top level and, one level down, its
    sections are walked member by member; anything deeper is decoded in one call."""
    members: dict[str, Any] = {}
    index = _SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
    if text.startswith("}", index):
        return members, index + 1
    while True:
        if not text.startswith('"', index):
            raise json.JSONDecodeError(
                "Expecting property name enclosed in double quotes", text, index
            )
        key, index = scanstring(text, index + 1)
        if key in members:
            raise _Duplicates([key])
        index = _SPACE.match(text, index).end()  # type: ignore[union-attr]
        if not text.startswith(":", index):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, index)
        index = _SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
        if depth == 0 and text.startswith("{", index):
            members[key], index = yield from _walk(text, index, depth + 1)
        else:
            members[key], index = _DECODER.raw_decode(text, index)
            yield
        index = _SPACE.match(text, index).end()  # type: ignore[union-attr]
        if text.startswith("}", index):
            return members, index + 1
        if not text.startswith(",", index):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
        index = _SPACE.match(text, index + 1).end()  # type: ignore[union-attr]
