"""Compiling a validated document into one evaluator per flag and environment.

An *evaluator* is ``(visitor_code, attributes, now) -> Decision``. Everything that does not
depend on the visitor is done here, once: conditions become closures, splits become range
tables, every possible ``Decision`` is built ahead, and a flag whose answer cannot depend on
the visitor becomes a constant (reason STATIC), answered without calling anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from rules.bucketing import BUCKETS, SEPARATOR, SplitTable, hash_bound, hash_prefixed
from rules.conditions import (
    Condition,
    FlagRef,
    Leaf,
    Predicate,
    SegmentRef,
    attribute_getter,
    compile_condition,
    memoized,
    walk,
)
from rules.decision import Decision, Reason
from rules.model import Document, Flag, Rule
from rules.steps import Steps, finish

__all__ = [
    "VISITOR",
    "CompiledEnvironment",
    "Evaluator",
    "compile_document",
    "compile_document_steps",
    "in_visitor",
]

#: The attribute under which a caller puts a visitor's stored data (``visitor.browser``, ...).
#: The rules know only the name: what is stored, and where, is the caller's business.
VISITOR = "visitor"
VISITOR_PREFIX = VISITOR + "."

Attributes = Mapping[str, Any]
Evaluator = Callable[[str, Attributes, "float | None"], Decision]
RuleStep = Callable[[str, Attributes, "float | None"], "Decision | None"]
#: A rule that buckets by the visitor code, as ``decide_all``'s loop reads it: (condition or
#: None, UTF-8 exposure prefix or None when the rule takes everyone it matches, exposure as a
#: hash bound, the decision when the rule gives one variation or None, UTF-8 split prefix, the
#: split's range ends as hash bounds, the split's decisions). The same arithmetic as
#: ``rules.bucketing``: hashes are compared with ``hash_bound``s, never turned into buckets.
VisitorRule = tuple[
    "Predicate | None",
    "bytes | None",
    int,
    "Decision | None",
    bytes,
    tuple[int, ...],
    tuple[Decision, ...],
]
UnitOf = Callable[[str, Attributes], "str | None"]


@dataclass(frozen=True, slots=True)
class CompiledEnvironment:
    """Everything needed to decide every flag in one environment."""

    name: str
    evaluators: Mapping[str, Evaluator]
    #: Decisions of flags that answer every visitor the same, ready to copy.
    constants: Mapping[str, Decision]
    #: (key, evaluator) of every other flag whose answer depends on the visitor. (This and
    #: the next two are lists, never changed once compiled, so ``Ruleset.release_steps`` can
    #: take them apart a piece at a time.)
    dynamic: list[tuple[str, Evaluator]]
    #: Plain percentage rollouts, evaluated in one loop by ``decide_all`` rather than one
    #: call each: (key, UTF-8 salt prefix, exposure as a hash bound, inside, outside).
    rollouts: list[tuple[str, bytes, int, Decision, Decision]]
    #: The other flags whose rules all bucket by the visitor code (segment targeting then a
    #: rollout, experiments, ...), also run by ``decide_all`` in one loop: (key, rules, default).
    bucketed: list[tuple[str, tuple[VisitorRule, ...], Decision]]
    #: Flags whose answer depends on the evaluation time (so only they need the clock).
    clocked: frozenset[str]
    #: Flags that read an attribute under ``visitor`` (the visitor's stored data, which the
    #: caller fetches only for them), directly, through a segment or a prerequisite flag.
    visitor_readers: frozenset[str] = frozenset()
    #: The ``visitor.*`` attribute names those flags read (conditions and bucketing units).
    visitor_attributes: frozenset[str] = frozenset()
    #: The flags not in ``constants`` with an experiment rule: only their decisions can be
    #: experiment exposures (a caller noting those among many decisions looks at these only).
    experiments: tuple[str, ...] = ()


def compile_document(document: Document) -> dict[str, CompiledEnvironment]:
    """Compile every flag of ``document`` for each of its environments."""
    return finish(compile_document_steps(document))


def compile_document_steps(document: Document) -> Steps[dict[str, CompiledEnvironment]]:
    """``compile_document`` in steps: it yields after each flag of each environment."""
    compiled: dict[str, CompiledEnvironment] = {}
    for env in document.environments:
        compiled[env] = yield from _compile_environment(document, env)
    return compiled


class _ConditionCompiler:
    """Compiles the conditions of one environment, each segment once.

    A small object rather than nested closures that call each other: such closures form a
    reference cycle, which would keep a whole replaced ruleset alive until the cyclic garbage
    collector ran (or forever, once the service freezes the heap).
    """

    def __init__(self, document: Document, evaluators: Mapping[str, Evaluator]) -> None:
        self.document = document
        self.evaluators = evaluators
        self.segments: dict[str, Predicate] = {}

    def segment(self, name: str) -> Predicate:
        if name not in self.segments:  # segments are acyclic (checked), so this recursion ends
            compiled = self.compile(self.document.segments[name])
            self.segments[name] = memoized(name, compiled)
        return self.segments[name]

    def prerequisite(self, key: str) -> Callable[[str, Attributes, float | None], str]:
        evaluate = self.evaluators[key]  # flags come prerequisites first, so it is compiled
        return memoized(
            ("flag", key), lambda unit, attrs, now: evaluate(unit, attrs, now).variation
        )

    def compile(self, condition: Condition) -> Predicate:
        return compile_condition(condition, self.segment, self.prerequisite)


def _compile_environment(document: Document, env: str) -> Steps[CompiledEnvironment]:
    evaluators: dict[str, Evaluator] = {}
    constants: dict[str, Decision] = {}
    conditions = _ConditionCompiler(document, evaluators)
    clocked: set[str] = set()
    readers: set[str] = set()
    read_names: set[str] = set()
    rollouts: list[tuple[str, bytes, int, Decision, Decision]] = []
    bucketed: list[tuple[str, tuple[VisitorRule, ...], Decision]] = []
    dynamic: list[tuple[str, Evaluator]] = []
    experiments: list[str] = []
    # Each flag is sorted into its group as it is compiled: after the last one, nothing is
    # left that walks all of them (that walk was a 10 ms step for 10,000 flags).
    for key, flag in document.flags.items():  # in prerequisite order
        compiled = _compile_flag(flag, env, conditions.compile)
        evaluators[key] = compiled.evaluate
        rules = flag.rules[env]
        constant = compiled.constant is not None
        reads = None if constant else _visitor_reads(rules, document.segments, readers)
        if reads is not None:
            readers.add(key)
            read_names.update(reads)
        if compiled.constant is not None:
            constants[key] = compiled.constant
            yield
            continue
        if any(rule.type == "experiment" for rule in rules):
            experiments.append(key)
        if compiled.rollout is not None:
            rollouts.append((key, *compiled.rollout))
        elif compiled.bucketed is not None:
            bucketed.append((key, *compiled.bucketed))
        else:
            dynamic.append((key, compiled.evaluate))
        if compiled.rollout is None and _reads_clock(flag.rules[env], document.segments, clocked):
            clocked.add(key)
        yield
    return CompiledEnvironment(
        env,
        evaluators,
        constants,
        dynamic,
        rollouts,
        bucketed,
        frozenset(clocked),
        frozenset(readers),
        frozenset(read_names),
        tuple(experiments),
    )


def _reads_clock(
    rules: tuple[Rule, ...], segments: Mapping[str, Condition], clocked: set[str]
) -> bool:
    """Whether these rules compare the evaluation time, directly, through a segment, or
    through a prerequisite flag that does (``clocked``: such flags found so far)."""
    return any(
        (isinstance(node, Leaf) and node.attr is None)
        or (isinstance(node, FlagRef) and node.flag in clocked)
        for node in _nodes(rules, segments)
    )


def _visitor_reads(
    rules: tuple[Rule, ...], segments: Mapping[str, Condition], readers: set[str]
) -> set[str] | None:
    """The ``visitor.*`` names these rules read (in a condition or as the bucketing unit),
    directly or through a segment, when they read the visitor's data at all, through a
    prerequisite flag too (``readers``: such flags found so far, their names collected
    with them); None when they do not."""
    names = {r.bucket_by for r in rules if r.bucket_by is not None and in_visitor(r.bucket_by)}
    through_flag = False
    for node in _nodes(rules, segments):
        if isinstance(node, Leaf) and node.attr is not None and in_visitor(node.attr):
            names.add(node.attr)
        elif isinstance(node, FlagRef) and node.flag in readers:
            through_flag = True
    return names if names or through_flag else None


def in_visitor(attribute: str) -> bool:
    """Whether an attribute name is the visitor's stored data or a part of it."""
    return attribute == VISITOR or attribute.startswith(VISITOR_PREFIX)


def _nodes(rules: tuple[Rule, ...], segments: Mapping[str, Condition]) -> Iterator[Condition]:
    """Every node of these rules' conditions, and of the segments they use (each once)."""
    pending = [rule.condition for rule in rules if rule.condition is not None]
    seen: set[str] = set()
    while pending:
        for node in walk(pending.pop()):
            yield node
            if isinstance(node, SegmentRef) and node.name not in seen:
                seen.add(node.name)
                pending.append(segments[node.name])


class _Decisions:
    """Builds each flag's decisions once, sharing the merged variables of each variation."""

    def __init__(self, flag: Flag) -> None:
        self.flag = flag
        defaults = {key: variable.default for key, variable in flag.variables.items()}
        self.variables = {
            key: MappingProxyType({**defaults, **variation.overrides})
            for key, variation in flag.variations.items()
        }
        self.made: dict[tuple[str, str | None, Reason], Decision] = {}

    def make(self, variation_key: str, rule: Rule | None, reason: Reason) -> Decision:
        """The decision, made once: a flag's evaluator and decide_all's batch share it."""
        key = (variation_key, rule.key if rule else None, reason)
        made = self.made.get(key)
        if made is None:
            made = self.made[key] = self._build(variation_key, rule, reason)
        return made

    def _build(self, variation_key: str, rule: Rule | None, reason: Reason) -> Decision:
        variation = self.flag.variations[variation_key]
        active = variation_key != "off"
        return Decision(
            flag=self.flag.key,
            variation=variation_key,
            active=active,
            value=variation.value if variation.has_value else active,
            variables=self.variables[variation_key],
            rule=rule.key if rule else None,
            rule_type=rule.type if rule else None,
            experiment_id=rule.id if rule else None,
            variation_id=variation.id,
            reason=reason,
            flag_id=self.flag.id,
        )


class CompiledFlag(NamedTuple):
    evaluate: Evaluator
    #: The decision for everyone, when the flag's answer cannot depend on the visitor.
    constant: Decision | None = None
    #: The parts of a plain percentage rollout, for decide_all's batch.
    rollout: RolloutParts | None = None
    #: The rules and default of a flag whose rules all bucket by the visitor code, for
    #: decide_all's other batch.
    bucketed: tuple[tuple[VisitorRule, ...], Decision] | None = None


def _compile_flag(
    flag: Flag, env: str, compile_in_env: Callable[[Condition], Predicate]
) -> CompiledFlag:
    """The flag's evaluator in ``env``, with its constant decision or rollout parts."""
    decisions = _Decisions(flag)
    if not flag.enabled[env]:
        return _constant(decisions.make(flag.default, None, Reason.DISABLED))
    rules = [rule for rule in flag.rules[env] if rule.exposure > 0]  # 0 % never applies
    if not rules:
        return _constant(decisions.make(flag.default, None, Reason.STATIC))
    first = rules[0]
    if _applies_to_everyone(first) and (first.variation or len(_shares(first)) == 1):
        variation = first.variation or _shares(first)[0][0]
        return _constant(decisions.make(variation, first, Reason.STATIC))
    default = decisions.make(flag.default, None, Reason.DEFAULT)
    if len(rules) == 1 and _is_plain_rollout(first):
        rollout, parts = _compile_rollout(first, decisions, default)
        return CompiledFlag(rollout, rollout=parts)
    conditions = [compile_in_env(rule.condition) if rule.condition else None for rule in rules]
    steps = tuple(map(_compile_rule, rules, [decisions] * len(rules), conditions))
    bucketed: tuple[tuple[VisitorRule, ...], Decision] | None = None
    if all(rule.bucket_by is None for rule in rules):
        visitor_rules = tuple(map(_visitor_rule, rules, [decisions] * len(rules), conditions))
        bucketed = (visitor_rules, default)
    if len(steps) == 1:
        only = steps[0]
        return CompiledFlag(
            lambda unit, attrs, now: only(unit, attrs, now) or default, bucketed=bucketed
        )

    def evaluate(unit: str, attrs: Attributes, now: float | None) -> Decision:
        for step in steps:
            decision = step(unit, attrs, now)
            if decision is not None:
                return decision
        return default

    return CompiledFlag(evaluate, bucketed=bucketed)


def _is_plain_rollout(rule: Rule) -> bool:
    return rule.condition is None and rule.bucket_by is None and rule.variation is not None


RolloutParts = tuple[bytes, int, Decision, Decision]


def _compile_rollout(
    rule: Rule, decisions: _Decisions, default: Decision
) -> tuple[Evaluator, RolloutParts]:
    """A flag that is just a percentage rollout, the commonest kind: one call per decision
    instead of three, and its parts, so ``decide_all`` can run many in one loop."""
    prefix, bound = rule.exposure_salt + SEPARATOR, hash_bound(rule.exposure)
    inside = decisions.make(rule.variation, rule, Reason.SPLIT)  # type: ignore[arg-type]

    def evaluate(unit: str, attrs: Attributes, now: float | None) -> Decision:
        return inside if hash_prefixed(prefix, unit) < bound else default

    # The bytes hash_prefixed hashes for the prefix, lone surrogates included.
    return evaluate, (prefix.encode("utf-8", "surrogatepass"), bound, inside, default)


def _constant(decision: Decision) -> CompiledFlag:
    return CompiledFlag(lambda unit, attrs, now: decision, decision)


def _applies_to_everyone(rule: Rule) -> bool:
    return rule.condition is None and rule.bucket_by is None and rule.exposure == BUCKETS


def _shares(rule: Rule) -> list[tuple[str, int]]:
    return [(variation, buckets) for variation, buckets in rule.split if buckets > 0]


def _answers(
    rule: Rule, decisions: _Decisions
) -> tuple[Decision | None, SplitTable[Decision] | None]:
    """The rule's decision when it gives one variation (else None), and its split table (None
    when it names its variation)."""
    if rule.variation is not None:
        reason = Reason.TARGETING_MATCH if rule.exposure >= BUCKETS else Reason.SPLIT
        return decisions.make(rule.variation, rule, reason), None
    table = SplitTable([(decisions.make(v, rule, Reason.SPLIT), b) for v, b in _shares(rule)])
    return (table.choices[0] if len(table.choices) == 1 else None), table


def _visitor_rule(rule: Rule, decisions: _Decisions, condition: Predicate | None) -> VisitorRule:
    """A rule that buckets by the visitor code, as ``decide_all``'s loop reads it."""
    exposure = rule.exposure_salt + SEPARATOR if rule.exposure < BUCKETS else None
    split = (rule.split_salt + SEPARATOR).encode("utf-8", "surrogatepass")
    fixed, table = _answers(rule, decisions)
    ends, choices = (table.hash_ends, table.choices) if table is not None else ((), ())
    return (condition, _utf8(exposure), hash_bound(rule.exposure), fixed, split, ends, choices)


def _utf8(text: str | None) -> bytes | None:
    # The bytes hash_prefixed hashes, lone surrogates included.
    return text.encode("utf-8", "surrogatepass") if text is not None else None


def _compile_rule(rule: Rule, decisions: _Decisions, condition: Predicate | None) -> RuleStep:
    """One rule as a step that returns its decision when it applies, else None."""
    unit_of = _unit_getter(rule.bucket_by)
    exposure_bound = hash_bound(rule.exposure) if rule.exposure < BUCKETS else None
    exposure_prefix = rule.exposure_salt + SEPARATOR
    fixed, table = _answers(rule, decisions)
    split_prefix = rule.split_salt + SEPARATOR

    def step(visitor: str, attrs: Attributes, now: float | None) -> Decision | None:
        if condition is not None and not condition(visitor, attrs, now):
            return None
        unit = visitor if unit_of is None else unit_of(visitor, attrs)
        if unit is None:
            return None
        if exposure_bound is not None and hash_prefixed(exposure_prefix, unit) >= exposure_bound:
            return None
        if fixed is not None:
            return fixed
        return table.pick_hash(hash_prefixed(split_prefix, unit))  # type: ignore[union-attr]

    return step


def _unit_getter(attribute: str | None) -> UnitOf | None:
    """How to read a rule's bucketing unit from the attributes; None means the visitor code.

    A string of 1 to 255 characters or an integer is a unit; anything else means the rule
    does not apply to this visitor.
    """
    if attribute is None:
        return None
    lookup = attribute_getter(attribute)

    def unit_of(visitor: str, attrs: Attributes) -> str | None:
        value = lookup(attrs)
        if isinstance(value, str):
            return value if 0 < len(value) <= 255 else None
        if type(value) is int:
            return str(value)
        return None

    return unit_of
