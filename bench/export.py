"""The export: ``python bench/export.py [--events N] [--quick] [--examples]``.

Generates the raw event files of two replicas (the file sink's format): N events over the
week of the specification's examples (2020-01-14 to 2020-01-21), 70 % decisions in three
experiments (two of them the examples' ids) and 30 % conversions on the examples' events,
1 % of them written twice (a replay), files of 100,000 lines. Then, each in a fresh process
so its peak resident set is its own:

1. the full export: raw events per second end to end, and peak RSS (target: 250,000
   events/s for 5 million events, 1.5 GB at most whatever the size);
2. an incremental run after 1 % more files are added: its time against the full run's
   (target: 5 % at most);
3. with ``--examples``, the specification's six SQL examples as written, and their answers.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_MS = 1579039200000  # 2020-01-14T22:00:00Z, the examples' window
WEEK_MS = 7 * 86_400_000
EXPERIMENTS = {"17287133690": ("1001", ["A", "B"]), "10757480886": ("1002", ["on", "off"]),
               "555": ("1003", ["x", "y", "z"])}  # fmt: skip
EVENTS = {"11795515443": "signup", "11099710611": "add_to_cart", "17281432226": "purchase"}
LINES_PER_FILE = 100_000

EXAMPLES = {
    "Unique visitors (full stack)": """SELECT COUNT(distinct visitor_id)
FROM decisions
WHERE experiment_id = '17287133690'
AND timestamp between 1579039200000 AND 1579644000000
AND is_holdback = false""",
    "Unique visitors (web)": """SELECT COUNT (distinct visitor_id)
FROM
(
     SELECT visitor_id
     FROM events
     CROSS JOIN UNNEST(experiments) as t(exp)
     WHERE exp.experiment_id='17287133690'
     AND timestamp between 1579039200000 AND 1579644000000
     UNION
     SELECT visitor_id
     FROM decisions
     WHERE experiment_id = '17287133690'
     AND timestamp between 1579039200000 AND 1579644000000
     AND is_holdback = false
)""",
    "Unique conversions": """SELECT COUNT(distinct visitor_id)
FROM events
CROSS JOIN UNNEST(experiments) as t(exp)
WHERE exp.experiment_id='10757480886'
   AND timestamp between 1579039200000 and 1579644000000
   AND entity_id = '11795515443'""",
    "Total conversions": """SELECT COUNT(*)
FROM events
CROSS JOIN UNNEST(experiments) as t(exp)
WHERE
exp.experiment_id='17287133690'
AND timestamp between 1579039200000 and 1579644000000
AND entity_id = '11099710611'""",
    "Total revenue": """SELECT
   SUM(revenue)
FROM events
CROSS JOIN UNNEST(experiments) as t(exp)
WHERE
exp.experiment_id='17287133690'
AND timestamp between 1579039200000 and 1579644000000
AND entity_id = '17281432226'""",
    "Total value": """SELECT
   SUM(value)
FROM events
CROSS JOIN UNNEST(experiments) as t(exp)
WHERE
exp.experiment_id='17287133690'
AND timestamp between 1579039200000 and 1579644000000
AND entity_id = '17281432226'""",
}


def generate(directory: Path, count: int, seed: int, first_file: int = 0) -> int:
    """Write ``count`` events (and their 1 % replays) as two replicas' files; the lines."""
    per_file = max(1, min(LINES_PER_FILE, count // 10))
    rng = random.Random(seed)
    visitors = max(1, count // 10)
    experiment_ids = list(EXPERIMENTS)
    event_ids = list(EVENTS)
    lines: list[str] = []
    written = 0
    number = first_file
    for index in range(count):
        visitor = f"visitor-{rng.randrange(visitors)}"
        at = START_MS + rng.randrange(WEEK_MS)
        uuid = f"{seed:04x}-{index:012x}"
        if rng.random() < 0.7:
            experiment = rng.choice(experiment_ids)
            campaign, variations = EXPERIMENTS[experiment]
            # Bucketing is sticky: a visitor's variation follows from its name.
            variation = variations[zlib.crc32(f"{visitor}/{experiment}".encode()) % len(variations)]
            record = {
                "kind": "decision", "uuid": uuid, "timestamp": at, "process_timestamp": at + 40,
                "session_id": "p-1", "visitor_id": visitor,
                "attributes": [{"id": "plan", "name": "plan", "type": "custom", "value": "pro"}],
                "user_agent": "Mozilla/5.0", "referer": "https://shop.example/", "revision": "42",
                "campaign_id": campaign, "experiment_id": experiment, "variation_id": variation,
                "flag": "f", "rule": experiment, "variation": variation, "is_holdback": False,
                "client_engine": "flagpost", "client_version": "0.1.0",
            }  # fmt: skip
        else:
            entity = rng.choice(event_ids)
            record = {
                "kind": "conversion", "uuid": uuid, "timestamp": at, "process_timestamp": at + 40,
                "visitor_id": visitor, "session_id": "p-1", "experiments": [],
                "entity_id": entity, "attributes": [], "user_agent": "Mozilla/5.0",
                "referer": None, "event_type": "custom", "event_name": EVENTS[entity],
                "revenue": rng.randrange(100, 20000) if entity == "17281432226" else None,
                "value": round(rng.random() * 10, 2), "quantity": 1, "tags": {"sku": "s-1"},
                "revision": "42", "client_engine": "flagpost", "client_version": "0.1.0",
            }  # fmt: skip
        line = json.dumps(record, separators=(",", ":"))
        lines.append(line)
        if rng.random() < 0.01:
            lines.append(line)  # a replay: the same record again, maybe in another file
        if len(lines) >= per_file or index == count - 1:
            replica = "a" if number % 2 == 0 else "b"
            path = directory / replica / f"events-20200114T{number:06d}000000Z-{number}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
            written += len(lines)
            lines = []
            number += 1
    return written


def export_in_child(events: Path, lake: Path) -> tuple[float, float]:
    """``flagpost export`` in its own process: (seconds, peak RSS in MB)."""
    command = [sys.executable, "-m", "service", "export", "--events", str(events / "a"),
               "--events", str(events / "b"), "--lake", str(lake), "--account-id", "bench",
               "--now", "2020-01-22T00:00:00+00:00"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run of 50,000 events")
    parser.add_argument("--examples", action="store_true", help="print the six examples")
    args = parser.parse_args()
    count = 50_000 if args.quick else args.events
    work = Path(tempfile.mkdtemp(prefix="flagpost-export-bench-"))
    try:
        started = time.perf_counter()
        lines = generate(work / "events", count, seed=1)
        print(f"generated {lines:,} lines in {time.perf_counter() - started:.1f} s")
        seconds, peak = export_in_child(work / "events", work / "lake")
        print(f"full export: {lines:,} raw events in {seconds:.1f} s = "
              f"{lines / seconds:,.0f} events/s (target 250,000); peak RSS {peak:,.0f} MB "
              f"(target 1,536)")  # fmt: skip
        files = len(list((work / "events").rglob("*.jsonl")))
        more = generate(work / "events", max(2, count // 100), seed=2, first_file=files)
        again, peak_again = export_in_child(work / "events", work / "lake")
        print(
            f"incremental export of 1 % more ({more:,} lines): {again:.1f} s = "
            f"{again / seconds:.1%} of the full run (target 5 %); peak RSS {peak_again:,.0f} MB"
        )
        if args.examples:
            for name, sql in EXAMPLES.items():
                result = subprocess.run(
                    [sys.executable, "-m", "service", "query", "--lake", str(work / "lake"),
                     "--format", "csv", sql],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                print(f"{name}: {result.stdout.splitlines()[1]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
