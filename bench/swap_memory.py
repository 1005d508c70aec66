"""Memory given back after a large ruleset is replaced: ``python bench/swap_memory.py [N]``.

In one fresh process, through the refresher as serving runs it: load the 7-flag demo, then
``--swaps`` times swap in an N-flag generated document (default 20,000) and swap the demo
back; the resident set size (RSS) after each step, and Python's own allocations
(``tracemalloc`` is off: it would double the RSS), are printed. What the operating system
does not get back after the demo returns is the allocator's fragmentation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import generate
from bench.stalls import HandedSource
from service.logs import configure_logging
from service.refresher import Refresher
from service.store import DiskCache, RulesStore

DEMO = Path(__file__).resolve().parent.parent / "rules" / "examples" / "demo.json"


def rss_mb() -> float:
    """This process's resident set size, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(flags: int, swaps: int) -> None:
    configure_logging("json", "warning")
    demo = DEMO.read_bytes()
    big = json.dumps(generate(flags)).encode()
    with tempfile.TemporaryDirectory() as directory:
        source, store = HandedSource(), RulesStore("bench")
        refresher = Refresher(
            source,  # type: ignore[arg-type]
            store,
            DiskCache(directory),
            interval=3600.0,
            max_flags=10**6,
        )
        source.data = demo
        await refresher.refresh()
        print(f"demo (7 flags) loaded: RSS {rss_mb():.0f} MB")
        for swap in range(1, swaps + 1):
            source.data = big
            await refresher.refresh()
            loaded = rss_mb()
            source.data = demo + b" " * swap  # changed bytes, the same rules
            await refresher.refresh()
            await asyncio.sleep(0.1)
            print(
                f"swap {swap}: {flags:,} flags loaded: RSS {loaded:.0f} MB; "
                f"demo back: RSS {rss_mb():.0f} MB"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flags", nargs="?", type=int, default=20_000)
    parser.add_argument("--swaps", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.flags, args.swaps))


if __name__ == "__main__":
    main()
