"""What each write does to the stored records, as pure functions every store runs the same.

A write reads the visitor code's link (its signed-in user id, if any) and then the records it
needs (``needed``); ``apply`` turns what it read into a ``Change``: records to write (None:
delete) and the link's new value. The memory store applies a change at once; the Redis store
applies it in one transaction, retried if another process changed what it read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from service.visitors.records import Record, add_items, merge_records, touch, unflushed

__all__ = ["KEEP", "Change", "Write", "add_data", "forget", "set_consent", "take_unflushed"]


class _Keep:
    """The link is left as it is."""

    __slots__ = ()


KEEP: Final = _Keep()


@dataclass(frozen=True, slots=True)
class Change:
    """The outcome of a write: ``id`` the record the visitor code now resolves to."""

    id: str
    records: dict[str, Record | None]
    link: str | _Keep | None = KEEP
    #: What the caller asked for besides (the items taken by a flush).
    result: Any = None

    def record(self) -> Record | None:
        return self.records.get(self.id)


@dataclass(frozen=True, slots=True)
class Write:
    """A write: which records it reads (given the code and its link) and what it makes."""

    kind: str
    items: Sequence[Mapping[str, Any]] = ()
    consent: bool | None = None

    def needed(self, code: str, link: str | None) -> list[str]:
        target = _linked_to(self.items)
        if target is not None and target not in (code, link):
            return list(dict.fromkeys([target, code]))  # the code's own data joins the user's
        return list(dict.fromkeys([link or code, code]))

    def apply(
        self, code: str, link: str | None, records: Mapping[str, Record | None], now: int, ttl: int
    ) -> Change:
        return _APPLY[self.kind](self, code, link, dict(records), now, ttl)


def add_data(items: Sequence[Mapping[str, Any]]) -> Write:
    return Write("add", items=items)


def forget() -> Write:
    return Write("forget")


def set_consent(consent: bool) -> Write:
    return Write("consent", consent=consent)


def take_unflushed() -> Write:
    return Write("flush")


def _linked_to(items: Sequence[Mapping[str, Any]]) -> str | None:
    """The user id the last ``unique_identifier`` item names, if any."""
    found = None
    for item in items:
        if item["type"] == "unique_identifier":
            found = item["value"]
    return found


def _add(write: Write, code: str, link: str | None, records: dict[str, Record | None],
         now: int, ttl: int) -> Change:  # fmt: skip
    target = _linked_to(write.items)
    if target is not None and target not in (code, link):
        own = records.get(code) if link is None else None  # linked elsewhere: not moved
        joined = merge_records(records.get(target), own)
        record = add_items(joined, write.items, now, ttl)
        changed: dict[str, Record | None] = {target: record}
        if own is not None:
            changed[code] = None
        return Change(target, changed, target)
    identity = link or code
    return Change(identity, {identity: add_items(records.get(identity), write.items, now, ttl)})


def _forget(write: Write, code: str, link: str | None, records: dict[str, Record | None],
            now: int, ttl: int) -> Change:  # fmt: skip
    erased = dict.fromkeys(records)
    return Change(link or code, erased, None, result=any(r is not None for r in records.values()))


def _consent(write: Write, code: str, link: str | None, records: dict[str, Record | None],
             now: int, ttl: int) -> Change:  # fmt: skip
    identity = link or code
    record = records.get(identity)
    if write.consent is False and record is not None:
        record = None  # withdrawn: the data goes, only the answer is kept
    record = touch(record, now, ttl)
    record["consent"] = write.consent
    return Change(identity, {identity: record})


def _flush(write: Write, code: str, link: str | None, records: dict[str, Record | None],
           now: int, ttl: int) -> Change:  # fmt: skip
    identity = link or code
    record = records.get(identity)
    if record is None:
        return Change(identity, {}, result=[])
    taken = unflushed(record)
    if not taken:
        return Change(identity, {}, result=[])
    record["flushed"] = record["seq"]
    return Change(identity, {identity: record}, result=taken)


_APPLY = {"add": _add, "forget": _forget, "consent": _consent, "flush": _flush}
