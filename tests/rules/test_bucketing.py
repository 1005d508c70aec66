"""Bucketing: determinism, uniformity, independence, stable ramps and splits, pinned vectors."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import chi2_contingency, chisquare
from xxhash import xxh3_64_intdigest

import rules
from rules.bucketing import BUCKETS, SplitTable, exposure_salt, hash_bound, split_salt
from tests.rules.helpers import DEMO_PATH, one_flag, visitors

# Pinned buckets: any change to the hash, the separator or the scaling re-buckets real users,
# so it must fail here first. Never update these without a migration plan.
GOLDEN_BUCKETS = [
    ("salt", "unit", 4801),
    ("new_checkout:checkout_ab:exposure", "visitor-1", 7917),
    ("new_checkout:checkout_ab:split", "visitor-1", 8995),
    ("", "x", 38),
    ("flag:rule", "élodie-✓", 1295),
    ("x", "0" * 255, 6133),
]

# Pinned decisions of the bundled demo rules, one per visitor, for flags that bucket.
GOLDEN_DECISIONS = {
    "search_ranking": {"v-0": "off", "v-1": "on", "v-2": "off", "v-3": "off", "v-4": "on"},
    "recommendations": {
        "v-0": "carousel",
        "v-1": "carousel",
        "v-2": "control",
        "v-3": "control",
        "v-4": "grid",
    },
}
MODERN_APP = {"platform": "ios", "app_version": "5.0.0"}


@pytest.mark.parametrize(("salt", "unit", "expected"), GOLDEN_BUCKETS)
def test_golden_buckets(salt: str, unit: str, expected: int) -> None:
    """Known inputs keep their known buckets."""
    assert expected == rules.bucket(salt, unit)


def test_bucket_is_xxh3_of_salt_nul_unit_scaled_by_multiply_shift() -> None:
    """The documented formula is the implemented one."""
    data = b"salt\x00unit"
    assert (xxh3_64_intdigest(data) * BUCKETS) >> 64 == rules.bucket("salt", "unit")


def test_golden_decisions_of_the_demo_rules() -> None:
    """The demo's rollout and experiment keep assigning the pinned variations."""
    ruleset = rules.load(DEMO_PATH.read_bytes())
    for flag, expected in GOLDEN_DECISIONS.items():
        got = {v: ruleset.decide(flag, v, MODERN_APP).variation for v in expected}
        assert expected == got


@given(st.text(max_size=50).filter(lambda s: "\x00" not in s), st.text(max_size=300))
def test_same_inputs_same_bucket_in_range(salt: str, unit: str) -> None:
    """A bucket is a pure function of salt and unit, always in [0, 10000)."""
    first = rules.bucket(salt, unit)
    assert first == rules.bucket(salt, unit)
    assert 0 <= first < BUCKETS


def test_salt_with_nul_is_refused() -> None:
    """A salt holding the separator would make two inputs hash alike, so it is refused."""
    with pytest.raises(ValueError, match="NUL"):
        rules.bucket("a\x00b", "c")


def test_lone_surrogates_are_hashed_not_raised() -> None:
    """A unit that is not encodable UTF-8 still gets a bucket."""
    assert 0 <= rules.bucket("s", "\ud800") < BUCKETS


def test_buckets_are_uniform_over_100000_units() -> None:
    """Chi-square over 100,000 units finds no departure from uniform, fine or coarse."""
    counts = Counter(rules.bucket("uniformity", unit) for unit in visitors(100_000))
    fine = [counts.get(b, 0) for b in range(BUCKETS)]
    coarse = [sum(fine[i : i + 100]) for i in range(0, BUCKETS, 100)]
    assert chisquare(fine).pvalue > 0.001
    assert chisquare(coarse).pvalue > 0.001


def test_two_rules_assign_independently() -> None:
    """Deciles of two rules' exposure hashes are independent (chi-square contingency)."""
    salt_a, salt_b = exposure_salt("f", "a"), exposure_salt("f", "b")
    table = [[0] * 10 for _ in range(10)]
    for unit in visitors(100_000):
        table[rules.bucket(salt_a, unit) // 1000][rules.bucket(salt_b, unit) // 1000] += 1
    assert chi2_contingency(table).pvalue > 0.001


def test_exposure_and_split_hashes_are_independent() -> None:
    """Within one rule, who is exposed says nothing about which variation they get."""
    table = [[0] * 10 for _ in range(10)]
    for unit in visitors(100_000):
        exposed = rules.bucket(exposure_salt("f", "r"), unit) // 1000
        table[exposed][rules.bucket(split_salt("f", "r"), unit) // 1000] += 1
    assert chi2_contingency(table).pvalue > 0.001


def test_salt_and_respool_reshuffle() -> None:
    """A new respool count or salt moves about half the visitors of a 50 % rollout."""
    base = {"key": "r", "type": "targeted_delivery", "exposure": 50, "variation": "on"}
    units = visitors(20_000)
    before = one_flag([base])
    for changed in (one_flag([{**base, "respool": 1}]), one_flag([{**base, "salt": "other"}])):
        moved = sum(
            before.decide("f", u).variation != changed.decide("f", u).variation for u in units
        )
        assert 0.45 < moved / len(units) < 0.55


@given(
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.sampled_from([{"off": 34, "on": 33, "bold": 33}, {"off": 50, "on": 50}, {"bold": 100}]),
)
def test_raising_exposure_keeps_everyone_exposed_in_the_same_variation(
    low: int, high: int, split: dict[str, float]
) -> None:
    """Going from X % to Y % exposure (X <= Y) only adds visitors; none changes variation."""
    low, high = sorted((low, high))
    rule = {"key": "r", "type": "experiment", "split": split}
    at_low = one_flag([{**rule, "exposure": low / 100}])
    at_high = one_flag([{**rule, "exposure": high / 100}])
    for unit in visitors(500):
        before = at_low.decide("f", unit)
        if before.rule is not None:
            assert before.variation == at_high.decide("f", unit).variation
            assert at_high.decide("f", unit).rule == "r"


@given(st.integers(1, 3300), st.sampled_from([("off", "on"), ("on", "bold")]))
def test_moving_share_between_neighbours_moves_exactly_that_share(
    moved: int, pair: tuple[str, str]
) -> None:
    """Moving p % between neighbouring variations reassigns exactly the visitors in those buckets."""
    giver, taker = pair
    shares = {"off": 3400, "on": 3300, "bold": 3300}
    after_shares = {**shares, giver: shares[giver] - moved, taker: shares[taker] + moved}

    def make(buckets: dict[str, int]) -> dict[str, Any]:
        split = {k: v / 100 for k, v in buckets.items()}
        return {"key": "r", "type": "experiment", "split": split}

    before, after = one_flag([make(shares)]), one_flag([make(after_shares)])
    giver_end = sum(
        shares[k] for k in ("off", "on", "bold")[: ("off", "on", "bold").index(giver) + 1]
    )
    salt = split_salt("f", "r")
    for unit in visitors(2_000):
        old, new = before.decide("f", unit).variation, after.decide("f", unit).variation
        in_moved_range = giver_end - moved <= rules.bucket(salt, unit) < giver_end
        assert (old, new) == ((giver, taker) if in_moved_range else (old, old))


def test_moved_fraction_matches_the_percentage_changed() -> None:
    """Moving 10 % from 'off' to 'on' changes the variation of about 10 % of visitors."""
    before = one_flag([{"key": "r", "type": "experiment", "split": {"off": 50, "on": 50}}])
    after = one_flag([{"key": "r", "type": "experiment", "split": {"off": 40, "on": 60}}])
    units = visitors(50_000)
    moved = sum(before.decide("f", u).variation != after.decide("f", u).variation for u in units)
    assert 0.095 < moved / len(units) < 0.105


def test_split_table_ranges_are_half_open_and_skip_empty_shares() -> None:
    """Buckets map to consecutive half-open ranges; a 0 % choice owns none."""
    table = SplitTable([("a", 2500), ("none", 0), ("b", 7500)])
    assert ["a", "a", "b", "b"] == [table.pick(b) for b in (0, 2499, 2500, 9999)]


def test_split_table_refuses_weights_not_summing_to_all_buckets() -> None:
    """A table that would leave buckets unassigned cannot be built."""
    with pytest.raises(ValueError, match="sum"):
        SplitTable([("a", 5000)])


HASHES = st.integers(0, 2**64 - 1)


@given(HASHES, st.integers(0, BUCKETS))
def test_hash_bound_answers_as_the_bucket_would(hash_value: int, buckets: int) -> None:
    """Comparing a hash with a bound is comparing its bucket with the range end."""
    assert ((hash_value * BUCKETS) >> 64 < buckets) == (hash_value < hash_bound(buckets))


@pytest.mark.parametrize("buckets", [1, 1234, 3333, 5000, 9999])
def test_hash_bound_is_the_first_hash_of_its_bucket(buckets: int) -> None:
    """The bound's hash is the first in bucket ``buckets``; the hash before it is not."""
    bound = hash_bound(buckets)
    assert (buckets, buckets - 1) == (
        (bound * BUCKETS) >> 64,
        ((bound - 1) * BUCKETS) >> 64,
    )


@given(
    HASHES,
    st.lists(st.integers(0, 4000), min_size=1, max_size=6).filter(lambda w: 0 < sum(w) <= BUCKETS),
)
def test_split_table_picks_the_same_by_hash_and_by_bucket(
    hash_value: int, weights: list[int]
) -> None:
    """``pick_hash`` of a hash is ``pick`` of its bucket."""
    shares = [(index, weight) for index, weight in enumerate(weights)]
    shares.append((len(weights), BUCKETS - sum(weights)))
    table = SplitTable(shares)
    assert table.pick((hash_value * BUCKETS) >> 64) == table.pick_hash(hash_value)


@pytest.mark.parametrize(
    "rule",
    [
        {"key": "r", "type": "experiment", "exposure": 33.33, "split": {"on": 25, "bold": 75}},
        {"key": "r", "type": "targeted_delivery", "exposure": 33.33, "variation": "bold"},
    ],
)
def test_compiled_rules_follow_the_documented_buckets(rule: dict[str, Any]) -> None:
    """Deciding one flag or all of them gives, visitor by visitor, what the bucket formula says
    for a 33.33 % split experiment and a 33.33 % rollout."""
    ruleset = one_flag([rule])
    expected, by_flag, by_batch = [], [], []
    for unit in visitors(5_000):
        if rules.bucket(exposure_salt("f", "r"), unit) >= 3333:
            expected.append("off")
        elif "variation" in rule:
            expected.append(rule["variation"])
        else:
            expected.append("on" if rules.bucket(split_salt("f", "r"), unit) < 2500 else "bold")
        by_flag.append(ruleset.decide("f", unit).variation)
        by_batch.append(ruleset.decide_all(unit)["f"].variation)
    assert expected == by_flag
    assert expected == by_batch
