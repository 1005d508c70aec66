"""Deterministic bucketing: a visitor (or any unit) and a salt map to a bucket in [0, 10000).

The hash is xxh3_64 over the UTF-8 bytes of ``salt + "\\x00" + unit``. Salts never contain
NUL (validation refuses one), so the first NUL splits the input unambiguously: no pair of
different (salt, unit) pairs hash the same bytes. The 64-bit hash is scaled to the bucket
range by multiply-and-shift, which unlike ``hash % 10000`` has no modulo bias.

A bucket is a basis point: 10000 buckets make 100.00 %, so percentages with two decimals
map exactly onto whole buckets and every range is a half-open integer interval.

The compiled rules never compute a bucket: a range's end ``b`` in buckets becomes the least
hash whose bucket is ``b`` or more (``hash_bound``), and the raw hash is compared with that.
``(h * 10000) >> 64 < b`` holds exactly when ``h * 10000 < b * 2**64``, that is when
``h < ceil(b * 2**64 / 10000)``: the same answer without a big-integer multiply and shift.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Generic, TypeVar

from xxhash import xxh3_64_intdigest

__all__ = [
    "BUCKETS",
    "SplitTable",
    "bucket",
    "exposure_salt",
    "hash_bound",
    "hash_prefixed",
    "percent_to_buckets",
    "split_salt",
]

BUCKETS = 10_000
SEPARATOR = "\x00"
T = TypeVar("T")


def bucket(salt: str, unit: str) -> int:
    """The bucket in [0, 10000) of ``unit`` under ``salt``; equal inputs give equal buckets.

    Raises ``ValueError`` for a salt containing NUL, which would make the input ambiguous.
    """
    if SEPARATOR in salt:
        raise ValueError("a salt must not contain NUL")
    return (hash_prefixed(salt + SEPARATOR, unit) * BUCKETS) >> 64


def hash_prefixed(prefix: str, unit: str) -> int:
    """The 64-bit hash of ``unit`` under a salt already joined with its separator: the
    bucket's source (the compiled hot path compares it with ``hash_bound``s instead of
    computing the bucket)."""
    text = prefix + unit
    try:
        data = text.encode()
    except UnicodeEncodeError:
        # A lone surrogate cannot come from JSON, but a Python caller may pass one; hash its
        # code units rather than fail, since bad input must never raise on the decision path.
        data = text.encode("utf-8", "surrogatepass")
    return xxh3_64_intdigest(data)


def hash_bound(buckets: int) -> int:
    """The least 64-bit hash whose bucket is ``buckets`` or more: for every hash ``h``,
    ``bucket(h) < buckets`` exactly when ``h < hash_bound(buckets)``."""
    return -(-(buckets << 64) // BUCKETS)


def base_salt(flag_key: str, rule_key: str, salt: str | None, respool: int) -> str:
    """The salt both hashes of a rule start from: its own or ``flag:rule``, plus any respool."""
    base = salt if salt is not None else f"{flag_key}:{rule_key}"
    return f"{base}:respool={respool}" if respool else base


def exposure_salt(flag_key: str, rule_key: str, salt: str | None = None, respool: int = 0) -> str:
    """The salt of the hash that decides whether a unit falls inside a rule's exposure."""
    return base_salt(flag_key, rule_key, salt, respool) + ":exposure"


def split_salt(flag_key: str, rule_key: str, salt: str | None = None, respool: int = 0) -> str:
    """The salt of the hash that picks a unit's variation from a rule's split."""
    return base_salt(flag_key, rule_key, salt, respool) + ":split"


def percent_to_buckets(percent: float) -> int:
    """Convert a percentage with at most two decimals to a whole number of buckets."""
    return round(percent * 100)


class SplitTable(Generic[T]):
    """Half-open bucket ranges laid end to end in declaration order, one per weighted choice.

    Ranges are ``[0, w0)``, ``[w0, w0 + w1)``, ...; moving weight between two neighbours moves
    exactly that many buckets, and appending a choice at the end takes only from the last one.
    """

    __slots__ = ("choices", "ends", "hash_ends")

    def __init__(self, weighted: Sequence[tuple[T, int]]) -> None:
        ends: list[int] = []
        choices: list[T] = []
        total = 0
        for choice, weight in weighted:
            if weight <= 0:
                continue  # a 0 % choice owns no bucket
            total += weight
            ends.append(total)
            choices.append(choice)
        if total != BUCKETS:
            raise ValueError(f"weights sum to {total} buckets, not {BUCKETS}")
        #: Read-only: where each choice's range ends, and the choices, in the same order.
        self.ends = tuple(ends)
        self.choices = tuple(choices)
        #: The ends as hash bounds: ``pick_hash`` finds a hash's choice without its bucket.
        self.hash_ends = tuple(hash_bound(end) for end in ends)

    def pick(self, bucket_value: int) -> T:
        """Return the choice whose range holds ``bucket_value``."""
        return self.choices[bisect_right(self.ends, bucket_value)]

    def pick_hash(self, hash_value: int) -> T:
        """Return the choice whose range holds the bucket of the 64-bit ``hash_value``."""
        return self.choices[bisect_right(self.hash_ends, hash_value)]
