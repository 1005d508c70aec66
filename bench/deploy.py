"""Workers: ``python bench/deploy.py [--seconds N] [--rounds N] [--quick]``.

What ``flagpost serve --workers N`` costs and gives, on the demo rules, with the Redis visitor
store that more than one worker needs (a ``redis-server`` started here) and the file sink:

1. idle memory once ready: the resident set (RSS) and proportional set (PSS: pages shared
   with the arbiter after the fork counted by share) of every process, one worker and two;
2. requests per second of single decisions, recorded, a new visitor on every request, under
   the same load (``wrk``, one thread, 64 connections, not pinned: it shares the machine's
   cores with the server, as a load balancer's traffic does not), one worker against two,
   interleaved over the rounds, the best of each kept;
3. memory after that load.

Needs wrk and redis-server (``apt-get install wrk redis-server``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service import WRK_SCRIPT, free_port  # noqa: E402
from tests.service.process import workers_of  # noqa: E402
from tests.service.redis_server import running_redis  # noqa: E402

DEMO = ROOT / "rules" / "examples" / "demo.json"


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Rss", "Pss"):
            found[name] = int(rest.split()[0])
    return found["Rss"], found["Pss"]


@contextmanager
def serving(workers: int, redis: str, work: Path) -> Iterator[tuple[str, list[int]]]:
    """``flagpost serve --workers N`` until the block ends; its URL and its processes (the
    arbiter first when there are workers)."""
    port = free_port()
    data = Path(tempfile.mkdtemp(dir=work))
    env = {
        **os.environ,
        "FLAGPOST_RULES": str(DEMO),
        "FLAGPOST_PORT": str(port),
        "FLAGPOST_WORKERS": str(workers),
        "FLAGPOST_VISITORS": redis,
        "FLAGPOST_CACHE_DIR": str(data / "cache"),
        "FLAGPOST_SPOOL_DIR": str(data / "spool"),
        "FLAGPOST_EVENTS": f"file:{data / 'events'}",
        "FLAGPOST_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=1).close()
                if workers == 1 or len(workers_of(process.pid)) == workers:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("flagpost did not become ready")
            time.sleep(0.1)
        time.sleep(2)  # the workers' first metrics exchange and refresh done: idle
        yield base, [process.pid, *sorted(workers_of(process.pid))]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def load(base: str, seconds: int, script: Path) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(script),
         f"{base}/v1/flags/new_checkout/decision"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} requests failed: {out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def describe(pids: list[int], workers: int) -> str:
    parts = []
    for index, pid in enumerate(pids):
        rss, pss = memory_kb(pid)
        role = "process" if workers == 1 else ("arbiter" if index == 0 else "worker")
        parts.append(f"{role} {rss / 1024:.0f}/{pss / 1024:.0f}")
    total = sum(memory_kb(pid)[1] for pid in pids) / 1024
    return f"{', '.join(parts)} (PSS total {total:.0f} MB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 2 s")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2, 1
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/deploy.py needs {tool}: apt-get install {tool}")
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        script = work / "new_visitors.lua"
        script.write_text(WRK_SCRIPT.replace("VISITOR", "n").replace("TRACK", "true"))
        best: dict[int, float] = {}
        memory: dict[tuple[int, str], str] = {}
        with running_redis(work / "redis") as redis:
            for _ in range(args.rounds):
                for workers in (1, 2):
                    with serving(workers, redis, work) as (base, pids):
                        memory.setdefault((workers, "idle"), describe(pids, workers))
                        rate = load(base, args.seconds, script)
                        best[workers] = max(best.get(workers, 0.0), rate)
                        memory[(workers, "loaded")] = describe(pids, workers)
    print(f"cores usable: {len(os.sched_getaffinity(0))}; {args.rounds} rounds of {args.seconds} s")
    print("| workers | requests/s (best) | memory idle, RSS/PSS MB | after the load |")
    print("| --- | --- | --- | --- |")
    for workers in (1, 2):
        print(
            f"| {workers} | {best[workers]:,.0f} | {memory[(workers, 'idle')]} "
            f"| {memory[(workers, 'loaded')]} |"
        )
    print(f"two workers / one: {best[2] / best[1]:.2f}")


if __name__ == "__main__":
    main()
