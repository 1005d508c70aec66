"""Generate realistic rules documents of any size, for benchmarks and load tests.

The mix follows what production flag sets look like: many flags are plain on/off switches,
a third are percentage rollouts, some target segments, a few run experiments, and a handful
depend on another flag. ``python bench/generate.py 10000 > big.json`` writes one.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

SEGMENTS: dict[str, Any] = {
    "eu_mobile": {
        "all": [
            {"attr": "geo.country", "op": "in", "value": ["FR", "BE", "DE", "ES", "IT", "NL"]},
            {"attr": "device", "op": "eq", "value": "phone"},
            {"attr": "app_version", "op": "semver_gte", "value": "4.2.0"},
        ]
    },
    "paying": {"all": [{"attr": "plan", "op": "in", "value": ["pro", "team", "enterprise"]}]},
    "staff": {"any": [{"attr": "email", "op": "ends_with", "value": "@example.com"}]},
}


def generate(count: int, seed: int = 7) -> dict[str, Any]:
    """A valid rules document with ``count`` flags."""
    rng = random.Random(seed)
    flags: dict[str, Any] = {}
    for index in range(count):
        key = f"flag_{index:05d}"
        kind = 0.9 if index == 0 else rng.random()  # flag 0 is the experiment others need
        flag: dict[str, Any] = {
            "id": 10_000 + index,
            "variables": {"limit": {"type": "integer", "default": 10}},
            "variations": {"off": {}, "on": {"variables": {"limit": 20}}},
            "default": "off",
        }
        if kind < 0.40:  # a plain switch, on or off for everyone
            flag["default"] = rng.choice(["off", "on"])
        elif kind < 0.70:  # a percentage rollout
            flag["rules"] = [
                {
                    "key": "rollout",
                    "type": "targeted_delivery",
                    "exposure": rng.choice([1, 5, 10, 25, 50, 75]),
                    "variation": "on",
                }
            ]
        elif kind < 0.88:  # targeted to a segment, then a rollout for the rest
            flag["rules"] = [
                {
                    "key": "target",
                    "type": "targeted_delivery",
                    "segment": rng.choice(list(SEGMENTS)),
                    "variation": "on",
                },
                {"key": "rest", "type": "targeted_delivery", "exposure": 10, "variation": "on"},
            ]
        elif kind < 0.97:  # an A/B/n experiment
            flag["variations"]["bold"] = {"variables": {"limit": 30}}
            flag["rules"] = [
                {
                    "key": "abn",
                    "type": "experiment",
                    "id": 90_000 + index,
                    "exposure": 50,
                    "split": {"off": 34, "on": 33, "bold": 33},
                }
            ]
        else:  # depends on an earlier flag
            flag["rules"] = [
                {
                    "key": "prereq",
                    "type": "targeted_delivery",
                    "variation": "on",
                    "condition": {"flag": "flag_00000", "variations": ["on", "bold"]},
                }
            ]
        flags[key] = flag
    return {
        "format": 1,
        "revision": f"generated-{count}-{seed}",
        "segments": SEGMENTS,
        "flags": flags,
    }


if __name__ == "__main__":
    json.dump(generate(int(sys.argv[1]) if len(sys.argv) > 1 else 350), sys.stdout)
