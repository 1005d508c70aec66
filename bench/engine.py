"""Decision speed of the ``rules`` core: ``python bench/engine.py [--quick]``.

Prints decisions per second for a static flag, a 50 % rollout and an experiment behind a
three-condition segment, and the time of ``decide_all`` over the demo rules and over a
generated 350-flag ruleset, each against its target. Every case runs in this one process,
interleaved over several rounds, and the best round is kept, so a noisy neighbour slows all
cases alike instead of one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rules  # noqa: E402
from bench.generate import SEGMENTS, generate  # noqa: E402

CASES_DOC = {
    "format": 1,
    "segments": SEGMENTS,
    "flags": {
        "static": {"variations": {"off": {}, "on": {}}, "default": "on"},
        "rollout": {
            "variations": {"off": {}, "on": {}},
            "default": "off",
            "rules": [
                {"key": "half", "type": "targeted_delivery", "exposure": 50, "variation": "on"}
            ],
        },
        "experiment": {
            "variations": {"a": {}, "b": {}, "c": {}},
            "default": "a",
            "rules": [
                {
                    "key": "abc",
                    "type": "experiment",
                    "segment": "eu_mobile",
                    "exposure": 100,
                    "split": {"a": 34, "b": 33, "c": 33},
                }
            ],
        },
    },
}
CONTEXT: dict[str, object] = {
    "geo": {"country": "FR"},
    "device": "phone",
    "app_version": "4.3.1",
    "plan": "pro",
}


# A case: what to run per pass, over which visitors, and its target (None: informative).
BenchCase = tuple[Callable[[list[str]], None], list[str], "float | None"]


def measure(run: Callable[[list[str]], None], visitors: list[str]) -> float:
    """Seconds per call of one pass of ``run`` over ``visitors``."""
    start = time.perf_counter()
    run(visitors)
    return (time.perf_counter() - start) / len(visitors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run: report only, never fail"
    )
    args = parser.parse_args()
    rounds, size = (2, 20_000) if args.quick else (7, 200_000)

    cases = rules.load(CASES_DOC)
    demo = rules.load((ROOT / "rules/examples/demo.json").read_bytes())
    big = rules.load(generate(350))
    visitors = [f"visitor-{i:08d}" for i in range(size)]
    few = visitors[: size // 20]

    def single(flag: str, context: dict[str, object] | None) -> Callable[[list[str]], None]:
        decide = cases.decide

        def run(codes: list[str]) -> None:
            for code in codes:
                decide(flag, code, context)

        return run

    def every(ruleset: rules.Ruleset) -> Callable[[list[str]], None]:
        decide_all = ruleset.decide_all

        def run(codes: list[str]) -> None:
            for code in codes:
                decide_all(code, CONTEXT)

        return run

    rate_cases: dict[str, BenchCase] = {
        "static flag": (single("static", None), visitors, 1_000_000),
        "50% rollout": (single("rollout", None), visitors, 1_000_000),
        "experiment behind a 3-condition segment": (
            single("experiment", CONTEXT),
            visitors,
            300_000,
        ),
    }
    time_cases: dict[str, BenchCase] = {
        f"decide_all, demo rules ({len(demo.flag_keys)} flags)": (every(demo), few, None),
        "decide_all, generated 350 flags": (every(big), few, 250e-6),
    }
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (run, codes, _target) in {**rate_cases, **time_cases}.items():
            seconds = measure(run, codes)
            best[name] = min(best.get(name, seconds), seconds)

    print(f"python {sys.version.split()[0]}, best of {rounds} rounds")
    failed = False
    for name, (_, _, target) in rate_cases.items():
        rate = 1 / best[name]
        ok = target is not None and rate >= target
        failed |= not ok
        print(
            f"{name:45} {rate:>12,.0f} decisions/s  target >= {target:,}  {'ok' if ok else 'MISS'}"
        )
    for name, (_, _, limit) in time_cases.items():
        micros = best[name] * 1e6
        verdict = (
            ""
            if limit is None
            else f"  target < {limit * 1e6:.0f} us  " + ("ok" if best[name] < limit else "MISS")
        )
        failed |= limit is not None and best[name] >= limit
        print(f"{name:45} {micros:>12.1f} us per visitor{verdict}")
    sys.exit(1 if failed and not args.quick else 0)


if __name__ == "__main__":
    main()
