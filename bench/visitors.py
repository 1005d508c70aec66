"""Benchmark of visitor data: ``python bench/visitors.py [--seconds N] [--rounds N] [--quick]``.

Needs wrk and h2load (``apt-get install wrk nghttp2-client``) and ``redis-server``. Every
comparison runs side by side in one run, interleaved over the rounds (best of each kept), the
servers pinned to core 0 and the load to core 1 (as ``bench/service.py`` does):

1. in process, per decision: a flag that reads no visitor data, decided as before this change
   and as now (the readers check added), and a flag that reads ``visitor.*``, without the
   store and with its data read from the memory store and merged (target: at most +2 µs);
2. over HTTP, server CPU per request, the code before visitors (``--baseline``, default
   ``c8590af``, run from a git worktree) against now: a single decision of a flag that reads
   no visitor data (``"track": false``, and recorded with a new visitor each: the events'
   screen runs on those), and of the demo's ``cart_reminder``, which reads ``visitor.*``
   (the old code sees no such attribute; the new one reads the memory store);
3. p99 at 2,000 decisions/s of ``cart_reminder``, evenly paced, for 1,000 visitors with stored
   data, with ``FLAGPOST_VISITORS`` memory and Redis on loopback (target 2 ms), with the
   commands flagpost sent Redis per request counted (target: one round trip; reads of one
   turn of the event loop share one). Redis shares core 0 with flagpost (the load has core 1
   to itself), or core 1 with the load (``--redis-core 1``); the GETs its read script runs
   inside are not round trips and are not counted;
4. the memory a typical visitor costs in the memory store (browser, device, operating system,
   geolocation, three custom data, ten page views; target 2 KB), measured with tracemalloc
   over 20,000 visitors.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rules  # noqa: E402
from bench.service import (  # noqa: E402
    flagpost,
    free_port,
    paced,
    server,
    wrk_with_cpu,
)
from service.visitors.changes import add_data  # noqa: E402
from service.visitors.stores import MemoryVisitors  # noqa: E402

DEMO = ROOT / "rules" / "examples" / "demo.json"
CART = {"type": "page_view", "url": "https://shop.example/cart", "title": "Cart"}
TYPICAL: list[dict[str, Any]] = [
    {"type": "browser", "browser": "chrome", "version": 120},
    {"type": "device", "device": "desktop"},
    {"type": "operating_system", "os": "windows"},
    {"type": "geolocation", "country": "FR", "region": "IDF", "city": "Paris"},
    *({"type": "custom_data", "index": i, "values": [f"segment-{i}"]} for i in range(3)),
    *(
        {"type": "page_view", "url": f"https://shop.example/products/{i}", "title": f"Item {i}"}
        for i in range(9)
    ),
    CART,
]
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"visitor_code":"v-' .. VISITOR .. '","track":TRACK}')
end
"""


# -- 1. in process ---------------------------------------------------------------------------


def in_process(rounds: int, count: int) -> dict[str, float]:
    """Best microseconds per decision of each case, interleaved over ``rounds``."""
    ruleset = rules.load(DEMO.read_bytes())
    store = MemoryVisitors(ttl=1800, retention=86400, limit=100_000)
    visitors = [f"v{n}" for n in range(1000)]

    async def fill() -> None:
        for visitor in visitors:
            await store.write(visitor, add_data(TYPICAL))

    asyncio.run(fill())
    context: dict[str, Any] = {"plan": "pro"}
    # The same attributes given in the request itself: the decision work is then the same,
    # and the difference is the store's read and merge alone.
    given: dict[str, dict[str, Any]] = {}
    for visitor in visitors:
        stored = asyncio.run(store.attributes(visitor)) or {}
        given[visitor] = {**context, **stored}

    async def old_plain() -> None:
        for n in range(count):
            ruleset.decide("new_checkout", visitors[n % 1000], context, None)

    async def new_plain() -> None:
        for n in range(count):
            if "new_checkout" in ruleset.visitor_readers(None):
                raise AssertionError("new_checkout reads no visitor data")
            ruleset.decide("new_checkout", visitors[n % 1000], context, None)

    async def reader_without_store() -> None:
        for n in range(count):
            visitor = visitors[n % 1000]
            ruleset.decide("cart_reminder", visitor, given[visitor], None)

    async def reader_with_store() -> None:
        for n in range(count):
            visitor = visitors[n % 1000]
            merged = context
            if "cart_reminder" in ruleset.visitor_readers(None):  # what Serving.visited does
                stored = await store.attributes(visitor)
                if stored:
                    merged = dict(context)
                    for name in ruleset.visitor_attributes(None):
                        if name in stored:
                            merged[name] = stored[name]
            decision = ruleset.decide("cart_reminder", visitor, merged, None)
            if decision.variation != "on":
                raise AssertionError("the stored cart page did not steer the decision")

    cases: dict[str, Callable[[], Any]] = {
        "plain flag, as before": old_plain,
        "plain flag, now": new_plain,
        "visitor.* flag, data in request": reader_without_store,
        "visitor.* flag, memory store": reader_with_store,
    }
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(rounds):
        for name, case in cases.items():
            gc.collect()
            started = time.perf_counter()
            asyncio.run(case())
            best[name] = min(best[name], (time.perf_counter() - started) / count * 1e6)
    return best


# -- 2. HTTP, old code against new ------------------------------------------------------------


@contextmanager
def baseline_tree(revision: str) -> Iterator[Path]:
    """The project as of ``revision``, in a temporary git worktree."""
    work = Path(tempfile.mkdtemp(prefix="flagpost-baseline-"))
    tree = work / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


def post(base: str, path: str, body: Any) -> Any:
    request = urllib.request.Request(
        base + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def store_cart_pages(base: str, count: int) -> None:
    for n in range(count):
        post(base, f"/v1/visitors/v-{n}/data", {"data": [CART]})


def http_old_and_new(baseline: Path, rounds: int, seconds: int, work: Path) -> dict[str, float]:
    scripts = {}
    for name, visitor, track in (
        ("untracked", "(n % 1000)", "false"),
        ("recorded", "n", "true"),
    ):
        scripts[name] = work / f"{name}.lua"
        scripts[name].write_text(WRK_SCRIPT.replace("VISITOR", visitor).replace("TRACK", track))
    cases = (
        ("plain flag, untracked", "/v1/flags/new_checkout/decision", "untracked"),
        ("plain flag, recorded, new visitor each", "/v1/flags/new_checkout/decision", "recorded"),
        ("visitor.* flag, untracked", "/v1/flags/cart_reminder/decision", "untracked"),
    )
    best: dict[str, float] = {}
    for _ in range(rounds):
        for version, env in (("before", {"PYTHONPATH": str(baseline)}), ("now", {})):
            port = free_port()
            cache = Path(tempfile.mkdtemp(dir=work)) / "cache"
            command = flagpost(DEMO, port, cache)
            with server(command, port, {**env, "PYTHONSAFEPATH": "1"}) as served:
                if version == "now":
                    store_cart_pages(served.base, 1000)
                for label, path, script in cases:
                    measured = wrk_with_cpu(served, path, seconds, scripts[script])
                    key = f"{label} [{version}]"
                    best[key] = min(best.get(key, float("inf")), measured["cpu_us"])
                    best[key + " rps"] = max(best.get(key + " rps", 0.0), measured["rps"])
    return best


# -- 3. p99 through Redis ---------------------------------------------------------------------


@contextmanager
def redis(work: Path, core: str = "0") -> Iterator[tuple[str, int]]:
    port = free_port()
    process = subprocess.Popen(
        ["taskset", "-c", core, "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                             check=False).stdout.strip() != b"PONG":  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", port
    finally:
        process.terminate()
        process.wait()


def redis_calls(port: int) -> int:
    """Commands clients have sent Redis: round trips (what a script runs inside is not
    counted; ``total_commands_processed`` would count it)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    calls = 0
    for line in out.splitlines():
        name, _, stats = line.partition(":")
        if name.startswith("cmdstat_") and name not in ("cmdstat_get", "cmdstat_info"):
            calls += int(stats.split(",")[0].split("=")[1])
    return calls


def paced_reader(
    rounds: int, seconds: int, rate: int, work: Path, redis_core: str = "0"
) -> dict[str, Any]:
    body = work / "reader.json"
    urls_of = [
        f"/v1/flags/cart_reminder/decision?visitor_code=v-{n}&track=false" for n in range(1000)
    ]
    del body
    best: dict[str, Any] = {}
    with redis(work, redis_core) as (url, redis_port):
        for _ in range(rounds):
            for store in ("memory", "redis"):
                port = free_port()
                cache = Path(tempfile.mkdtemp(dir=work)) / "cache"
                extra = {"visitors": url} if store == "redis" else {}
                with server(flagpost(DEMO, port, cache, **extra), port) as served:
                    store_cart_pages(served.base, 1000)
                    check = urllib.request.urlopen(served.base + urls_of[0], timeout=5)
                    if json.loads(check.read())["variation"] != "on":
                        raise RuntimeError("the stored data did not steer the decision")
                    calls = redis_calls(redis_port)
                    result = paced([served.base + u for u in urls_of], seconds, rate, None, work)
                    calls = redis_calls(redis_port) - calls
                key = f"{store}"
                if result.p99_ms < best.get(key, (float("inf"),))[0]:
                    per_request = calls / max(result.rate * seconds, 1.0)
                    if store == "memory":
                        per_request = 0.0
                    best[key] = (result.p99_ms, result.p50_ms, result.rate, result.non200,
                                 per_request, result.stolen)  # fmt: skip
    return best


# -- 4. memory ---------------------------------------------------------------------------------


def memory_per_visitor(count: int) -> float:
    store = MemoryVisitors(ttl=1800, retention=86400, limit=count + 1)

    async def fill() -> None:
        for n in range(count):
            await store.write(f"visitor-{n:08d}", add_data(TYPICAL))

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    asyncio.run(fill())
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="c8590af", help="the code before visitors")
    parser.add_argument("--quick", action="store_true", help="in-process parts only, briefly")
    parser.add_argument(
        "--redis-core",
        choices=("0", "1"),
        default="0",
        help="0: beside flagpost (the default); 1: beside the load generator",
    )
    args = parser.parse_args()

    cpu = in_process(args.rounds if not args.quick else 1, 20_000 if args.quick else 200_000)
    print("1. in process, best µs per decision")
    for name, micros in cpu.items():
        print(f"   {name:<32} {micros:6.2f}")
    print(f"   readers check: {cpu['plain flag, now'] - cpu['plain flag, as before']:+.2f} µs; "
          f"memory store read and merge: "
          f"{cpu['visitor.* flag, memory store'] - cpu['visitor.* flag, data in request']:+.2f} µs "
          "(target +2)")  # fmt: skip
    per_visitor = memory_per_visitor(2_000 if args.quick else 20_000)
    print(f"4. a typical visitor in the memory store: {per_visitor:,.0f} bytes (target 2,048)")
    if args.quick:
        return
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        with baseline_tree(args.baseline) as baseline:
            http = http_old_and_new(baseline, args.rounds, args.seconds, work)
        print(f"2. server CPU µs per request (best of {args.rounds}), before and now")
        for label in ("plain flag, untracked", "plain flag, recorded, new visitor each",
                      "visitor.* flag, untracked"):  # fmt: skip
            before, now = http[f"{label} [before]"], http[f"{label} [now]"]
            rates = http[f"{label} [before] rps"], http[f"{label} [now] rps"]
            print(f"   {label:<42} {before:6.1f} -> {now:6.1f}  ({now / before:.2f}x; "
                  f"{rates[0]:,.0f} -> {rates[1]:,.0f} rps)")  # fmt: skip
        reader = paced_reader(args.rounds, args.seconds, 2000, work, args.redis_core)
        print(f"3. cart_reminder at 2,000/s evenly paced (best p99 of {args.rounds})")
        for store, (p99, p50, rate, non200, calls, stolen) in reader.items():
            print(
                f"   {store:<7} p99 {p99:5.2f} ms  p50 {p50:5.2f} ms  {rate:,.0f}/s  "
                f"non-200 {non200}  Redis commands/request {calls:.2f}  steal {stolen:.0%}"
            )


if __name__ == "__main__":
    main()
