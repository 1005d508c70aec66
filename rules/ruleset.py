"""``rules.load`` and the compiled, immutable ``Ruleset`` it returns."""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Mapping
from datetime import UTC, datetime
from time import time
from types import MappingProxyType
from typing import Any

from xxhash import xxh3_64_intdigest, xxh3_128

from rules.compiler import CompiledEnvironment, compile_document_steps
from rules.conditions import memoize_segments
from rules.decision import Decision
from rules.decoding import decode_steps
from rules.document import parse_document_steps
from rules.errors import (
    MAX_VISITOR_CODE_LENGTH,
    FlagNotFound,
    InvalidContext,
    InvalidRuleset,
    InvalidVisitorCode,
    Problem,
    UnknownEnvironment,
    VariableNotFound,
)
from rules.model import Document, Event, Flag
from rules.steps import Steps, finish

__all__ = ["Ruleset", "load", "load_steps"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_MAX_CODE = MAX_VISITOR_CODE_LENGTH
Now = float | datetime | None


def load(data: bytes | str | Mapping[str, Any], *, max_flags: int | None = None) -> Ruleset:
    """Validate and compile a rules document given as JSON bytes, JSON text or decoded data.

    Raises ``InvalidRuleset`` listing every problem when the document is not valid, or when
    it holds more than ``max_flags`` flags (no limit when None).
    """
    return finish(load_steps(data, max_flags=max_flags))


def load_steps(
    data: bytes | str | Mapping[str, Any], *, max_flags: int | None = None
) -> Steps[Ruleset]:
    """``load`` in small steps: decoding, validation and compilation yield between flags.

    Nothing happens until the generator is advanced; drive it with ``next()`` and pause
    between steps as you need (``rules.load`` runs it straight through). It returns the
    ``Ruleset`` or raises ``InvalidRuleset``.
    """
    decoded: Any
    if isinstance(data, (bytes, bytearray, str)):
        decoded, owned = (yield from decode_steps(data)), True  # ours to free when done
    else:
        decoded, owned = data, False
    try:
        document = yield from parse_document_steps(decoded, max_flags)
    except RecursionError:
        raise InvalidRuleset([Problem("", "the document nests too deeply")]) from None
    revision = document.revision or (yield from _content_revision(decoded))
    if owned:
        yield from _release_steps(decoded)
    compiled = yield from compile_document_steps(document)
    return Ruleset(document, revision, compiled)


#: Items (flags, or compiled pieces of them) freed per step of ``Ruleset.release_steps``
#: and of a load's release of the document it decoded.
RELEASED_PER_STEP = 50


def _release_steps(decoded: Any) -> Steps[None]:
    """Free a decoded document a few members at a time. Left to go at once when loading
    ends, a 10,000-flag document took 10 ms or more to free in one piece: the longest step."""
    if isinstance(decoded, dict):
        yield from _emptying_steps([*decoded.values(), decoded])


def _emptying_steps(parts: list[Any]) -> Steps[None]:
    """Empty each dict or list of ``parts`` (anything else is left alone), popping
    ``RELEASED_PER_STEP`` items a step: what they alone hold is freed a little at a time."""
    for part in parts:
        if not isinstance(part, (dict, list)):
            continue
        while part:
            for _ in range(min(len(part), RELEASED_PER_STEP)):
                part.popitem() if isinstance(part, dict) else part.pop()
            yield


def _content_revision(decoded: Mapping[str, Any]) -> Steps[str]:
    """A revision for a document that names none: a hash of its canonical JSON, member by
    member (and flag by flag), so unchanged rules keep their revision."""
    digest = xxh3_128()
    for key in sorted(decoded):
        value = decoded[key]
        parts = sorted(value.items()) if isinstance(value, Mapping) else [("", value)]
        digest.update(_canonical(key))
        for name, part in parts:
            digest.update(_canonical(name) + b":" + _canonical(part))
            yield
    return "sha-" + digest.hexdigest()[:16]


def _canonical(value: Any) -> bytes:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


class Ruleset:
    """Compiled flag rules: ask it for decisions. Immutable, and safe to share across threads."""

    __slots__ = (
        "_by_name",
        "_default",
        "_document",
        "environments",
        "events",
        "flag_keys",
        "revision",
    )

    def __init__(
        self, document: Document, revision: str, compiled: Mapping[str, CompiledEnvironment]
    ) -> None:
        self._document = document
        self.revision = revision
        self.environments: tuple[str, ...] = document.environments
        self.flag_keys: tuple[str, ...] = tuple(sorted(document.flags))
        self.events: Mapping[str, Event] = MappingProxyType(dict(document.events))
        self._default = compiled[document.environments[0]]
        self._by_name: dict[str | None, CompiledEnvironment] = {None: self._default}
        self._by_name.update(compiled)

    def __repr__(self) -> str:
        return f"<Ruleset revision={self.revision!r} flags={len(self.flag_keys)}>"

    def release_steps(self) -> Steps[None]:
        """Take this ruleset apart a few flags at a time, yielding in between.

        Freed in one piece, a 10,000-flag ruleset holds its caller for tens of
        milliseconds; taken apart in steps, no step takes long. Afterwards the ruleset knows
        no flag: call this only on a ruleset nothing will ask again.
        """
        environments = {id(env): env for env in self._by_name.values()}.values()
        parts: list[Any] = [self._document.flags, self._document.segments]
        for env in environments:
            parts += [env.evaluators, env.constants, env.dynamic, env.rollouts, env.bucketed]
        yield from _emptying_steps(parts)

    # -- decisions ------------------------------------------------------------------------

    def decide(
        self,
        flag_key: str,
        visitor_code: str,
        context: Mapping[str, Any] | None = None,
        environment: str | None = None,
        now: Now = None,
    ) -> Decision:
        """The visitor's decision for one flag.

        Raises ``FlagNotFound``, ``InvalidVisitorCode``, ``InvalidContext`` or
        ``UnknownEnvironment``; a flag disabled in the environment is not an error.
        """
        # The checks are written out here rather than shared with decide_all: this is the
        # hot path, and each helper call costs about what a simple decision does.
        try:
            env = self._by_name[environment]
        except (KeyError, TypeError):
            raise UnknownEnvironment(environment, self.environments) from None
        try:
            evaluate = env.evaluators[flag_key]
        except (KeyError, TypeError):
            raise FlagNotFound(flag_key) from None
        if visitor_code.__class__ is not str or not 0 < len(visitor_code) <= _MAX_CODE:
            raise InvalidVisitorCode(visitor_code)
        if context is None:
            context = _EMPTY
        elif context.__class__ is not dict and not isinstance(context, Mapping):
            raise InvalidContext(context)
        if now is None:
            if flag_key in env.clocked:
                now = time()
        else:
            now = _seconds(now)
        return evaluate(visitor_code, context, now)

    def decide_all(
        self,
        visitor_code: str,
        context: Mapping[str, Any] | None = None,
        environment: str | None = None,
        now: Now = None,
    ) -> dict[str, Decision]:
        """The visitor's decisions for every flag, keyed by flag key, all at one instant."""
        env = self._environment(environment)
        return self._decide_varying_into(dict(env.constants), env, visitor_code, context, now)

    def constant_decisions(self, environment: str | None = None) -> Mapping[str, Decision]:
        """The decisions that are the same for every visitor in this environment (flags that
        are disabled or have no rule depending on the visitor), keyed by flag. A caller may
        cache whatever it derives from them for as long as it keeps this ruleset."""
        return MappingProxyType(self._environment(environment).constants)

    def decide_varying(
        self,
        visitor_code: str,
        context: Mapping[str, Any] | None = None,
        environment: str | None = None,
        now: Now = None,
    ) -> dict[str, Decision]:
        """The visitor's decisions for every flag *not* in ``constant_decisions``; together
        they are ``decide_all``."""
        env = self._environment(environment)
        return self._decide_varying_into({}, env, visitor_code, context, now)

    def _decide_varying_into(
        self,
        decisions: dict[str, Decision],
        env: CompiledEnvironment,
        visitor_code: str,
        context: Mapping[str, Any] | None,
        now: Now,
    ) -> dict[str, Decision]:
        attrs, moment = self._check(visitor_code, context, now, env.clocked)
        unit = visitor_code.encode("utf-8", "surrogatepass")
        _decide_rollouts(env, unit, decisions)
        _decide_bucketed(env, visitor_code, unit, attrs, moment, decisions)
        for key, evaluate in env.dynamic:
            decisions[key] = evaluate(visitor_code, attrs, moment)
        return decisions

    def visitor_readers(self, environment: str | None = None) -> frozenset[str]:
        """The flags whose decision reads the visitor's stored data (attributes under
        ``visitor``) in this environment. A caller that stores such data needs to fetch it
        only for these flags: for every other flag it cannot change the answer."""
        return self._environment(environment).visitor_readers

    def visitor_attributes(self, environment: str | None = None) -> frozenset[str]:
        """The ``visitor.*`` attribute names ``visitor_readers`` read: all a caller needs
        to put in their context (merging more changes nothing)."""
        return self._environment(environment).visitor_attributes

    def experiment_flags(self, environment: str | None = None) -> tuple[str, ...]:
        """The flags not in ``constant_decisions`` that have an experiment rule in this
        environment: among a visitor's varying decisions, only theirs can be experiment
        exposures."""
        return self._environment(environment).experiments

    def variable(
        self,
        flag_key: str,
        variable_key: str,
        visitor_code: str,
        context: Mapping[str, Any] | None = None,
        environment: str | None = None,
        now: Now = None,
    ) -> Any:
        """The value of one variable in the visitor's variation of a flag."""
        flag = self._flag(flag_key)
        if not isinstance(variable_key, str) or variable_key not in flag.variables:
            raise VariableNotFound(flag_key, variable_key)
        decision = self.decide(flag_key, visitor_code, context, environment, now)
        return decision.variables[variable_key]

    def variations(self, flag_key: str) -> dict[str, dict[str, Any]]:
        """Every variation of a flag with its full set of variable values."""
        flag = self._flag(flag_key)
        defaults = {key: variable.default for key, variable in flag.variables.items()}
        return {
            key: {**defaults, **variation.overrides} for key, variation in flag.variations.items()
        }

    def flag(self, flag_key: str) -> Flag:
        """The validated definition of one flag."""
        return self._flag(flag_key)

    # -- checks ---------------------------------------------------------------------------

    def _flag(self, flag_key: str) -> Flag:
        try:
            return self._document.flags[flag_key]
        except (KeyError, TypeError):
            raise FlagNotFound(flag_key) from None

    def _environment(self, environment: str | None) -> CompiledEnvironment:
        try:
            return self._by_name[environment]
        except (KeyError, TypeError):
            raise UnknownEnvironment(environment, self.environments) from None

    def _check(
        self,
        visitor_code: str,
        context: Mapping[str, Any] | None,
        now: Now,
        clocked: frozenset[str],
    ) -> tuple[Mapping[str, Any], float | None]:
        if (
            visitor_code.__class__ is not str
            or not 0 < len(visitor_code) <= MAX_VISITOR_CODE_LENGTH
        ):
            raise InvalidVisitorCode(visitor_code)
        if context is None:
            context = _EMPTY
        elif context.__class__ is not dict and not isinstance(context, Mapping):
            raise InvalidContext(context)  # (dict first: an ABC check costs a microsecond)
        if self._document.segments:  # many flags, few segments: evaluate each segment once
            context = memoize_segments(context)
        if now is None:
            return context, time() if clocked else None
        return context, _seconds(now)


def _decide_rollouts(env: CompiledEnvironment, unit: bytes, into: dict[str, Decision]) -> None:
    """Every plain rollout of ``env`` in one loop: the visitor code is encoded once, and no
    function is called per flag but the hash. The same arithmetic as ``rules.bucketing``."""
    for key, prefix, bound, inside, outside in env.rollouts:
        into[key] = inside if xxh3_64_intdigest(prefix + unit) < bound else outside


def _decide_bucketed(
    env: CompiledEnvironment,
    visitor_code: str,
    unit: bytes,
    attrs: Mapping[str, Any],
    now: float | None,
    into: dict[str, Decision],
) -> None:
    """Every flag whose rules all bucket by the visitor code, in one loop: what each flag's
    evaluator does rule by rule, without the calls (only a rule's condition is called)."""
    for key, visitor_rules, default in env.bucketed:
        for (
            condition,
            exposure_prefix,
            exposure_bound,
            fixed,
            split_prefix,
            hash_ends,
            choices,
        ) in visitor_rules:
            if condition is not None and not condition(visitor_code, attrs, now):
                continue
            if (
                exposure_prefix is not None
                and xxh3_64_intdigest(exposure_prefix + unit) >= exposure_bound
            ):
                continue
            if fixed is not None:
                into[key] = fixed
            else:
                hashed = xxh3_64_intdigest(split_prefix + unit)
                into[key] = choices[bisect_right(hash_ends, hashed)]
            break
        else:
            into[key] = default


def _seconds(now: float | datetime) -> float:
    """An evaluation time as seconds since the epoch; a naive datetime is taken as UTC."""
    if isinstance(now, datetime):
        return (now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp()
    if isinstance(now, (int, float)) and not isinstance(now, bool):
        return float(now)
    raise TypeError(f"now must be a datetime or seconds since the epoch, not {type(now).__name__}")
