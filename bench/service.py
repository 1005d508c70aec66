"""Load benchmark of the HTTP service: ``python bench/service.py [--seconds N] [--rounds N]``.

Needs wrk, h2load and hey (``apt-get install wrk nghttp2-client hey``). Each server is one
process pinned to core 0 and the load generator runs on core 1, so a run compares like with
like on a 2-core machine. Every server runs on the event loop flagpost uses by default
(uvloop), or on the one ``--loop`` names. The yardsticks are ``bench/bare_server.py``: aiohttp
parsing the JSON body and answering a fixed decision body, as a ``web.Application`` with the
one dynamic route ``/v1/flags/{flag}/decision`` (the yardstick of the ratios) and on aiohttp's
low-level server with no routing (what aiohttp can do at all).

1. single-flag ``POST /v1/flags/{flag}/decision`` against both yardsticks, interleaved over
   rounds (best of each kept), and their ratios: flagpost as configured by default with
   ``"track": false`` in the body (target 0.85 of the application yardstick), recording on
   with a new visitor on every request (target 0.70), with events off, and flagpost's HTTP
   shell answering the yardstick's fixed body (``bench/shell_server.py``): what is left of
   the gap when no decision work is done at all. Requests per second, and the server's CPU
   time per request (which a noisy neighbour's steal does not inflate);
2. ``POST /v1/decide`` over a generated 350-flag ruleset (target 4,000 requests/s with
   recording off), three ways side by side: recording off, on with a new visitor on every
   request (each request queues about 50 exposures), and on with 1,000 returning visitors
   (sessions already hold their exposures), interleaved over the rounds of case 1;
3. p99 latency at a constant 5,000 requests/s of single decisions (target 2 ms for a new
   visitor each, recorded), next to the application yardstick's under the same load. The
   load is evenly paced: 50 clients of 100 requests/s each, one h2load process and one
   connection apiece, started a fiftieth of their period apart (``paced``). Two cases: one
   visitor POSTing ``BODY`` (its exposure recorded once), and a new visitor on every request,
   each exposure recorded (an A/B test of everyone, asked by GET). Interleaved over the
   rounds, the best p99 of each kept, with the share of core 0 the hypervisor stole during
   it. The same load sent by ``hey`` comes in bursts (its 50 workers tick together every
   10 ms) and is shown next to it;
4. the slowest request at a constant 1,000 requests/s while a 10,000-flag ruleset replaces
   another of 10,000 flags (target 20 ms): the new one is loaded and the old one freed while
   serving. Next to it, the slowest under the same load without a swap;
5. idle memory: flagpost's resident set on the demo rules once started, after a minute of
   load (recording a new visitor each request), and after the sessions of that load expired.
"""

from __future__ import annotations

import argparse
import json
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
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generate import generate  # noqa: E402
from service.settings import DEFAULT_LOOP  # noqa: E402

CONTEXT = {"geo": {"country": "FR"}, "device": "phone", "account_id": "acme-7"}
BODY = json.dumps({"visitor_code": "alice", "context": CONTEXT})
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local context = '{"geo":{"country":"FR"},"device":"phone",'
    .. '"account_id":"acct-' .. (n % 997) .. '"}'
  local visitor = '"v-' .. VISITOR .. '"'
  return wrk.format(nil, nil, nil, '{"visitor_code":' .. visitor .. ',"context":' .. context
    .. ',"track":TRACK}')
end
"""
#: A test of everyone: every decision has a rule, so every new visitor's is recorded.
AB_TEST = {
    "format": 1,
    "revision": "ab-test",
    "flags": {
        "checkout_test": {
            "variations": {"off": {}, "on": {}},
            "default": "off",
            "rules": [{"key": "ab", "type": "experiment", "id": 7, "split": {"off": 50, "on": 50}}],
        }
    },
}
#: Lua for the visitor number: a new visitor on every request, or 1,000 returning ones.
NEW_VISITORS, RETURNING_VISITORS = "n", "(n % 1000)"
LOOP = DEFAULT_LOOP  # the event loop of every server started; set from --loop


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Served(NamedTuple):
    base: str
    pid: int


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used. Unlike requests per second, CPU time per
    request does not count the time a noisy neighbour takes the core away (steal)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(command: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[Served]:
    """Run a server pinned to core 0 until the block ends."""
    process = subprocess.Popen(
        ["taskset", "-c", "0", *command],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=1).close()
                break
            except OSError as error:
                if getattr(error, "code", None) == 404:  # the bare server has no /readyz
                    break
                time.sleep(0.1)
        yield Served(base, process.pid)  # taskset execs the server: the same process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def flagpost(rules: Path, port: int, cache: Path, **extra: str) -> list[str]:
    """``flagpost serve`` with ``extra`` settings; ``program``, if given, is a script to run
    in its place with the same arguments (``bench/shell_server.py``)."""
    program = extra.pop("program", None)
    command = ("-m", "service") if program is None else (program,)
    return [sys.executable, *command, "serve", "--port", str(port),
            "--event-loop", LOOP,
            "--rules", str(rules), "--cache-dir", str(cache), "--log-level", "warning",
            "--events", f"file:{cache.parent / 'events'}",
            "--spool-dir", str(cache.parent / "spool"),
            *[f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]]  # fmt: skip


def bare_handler(port: int, shape: str = "app") -> list[str]:
    """A yardstick, ``bench/bare_server.py`` (``app`` or ``low-level``), on flagpost's loop."""
    return [sys.executable, str(ROOT / "bench" / "bare_server.py"), str(port), LOOP, shape]


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wrk(url: str, seconds: int, script: Path, connections: int = 32) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rate, "requests": total, "non2xx": float(errors.group(1)) if errors else 0.0}


def wrk_with_cpu(served: Served, path: str, seconds: int, script: Path) -> dict[str, float]:
    """``wrk``, plus the server's CPU microseconds per request over the run."""
    before = cpu_seconds(served.pid)
    measured = wrk(f"{served.base}{path}", seconds, script)
    used = cpu_seconds(served.pid) - before
    return {**measured, "cpu_us": used / max(measured["requests"], 1.0) * 1e6}


def hey(url: str, seconds: int, rate: int, workers: int, body_file: Path) -> dict[str, float]:
    command = ["taskset", "-c", "1", "hey", "-z", f"{seconds}s", "-c", str(workers),
               "-q", str(rate // workers), "-m", "POST", "-T", "application/json",
               "-D", str(body_file), url]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def seconds_of(pattern: str) -> float:
        return float(re.search(pattern, out).group(1))  # type: ignore[union-attr]

    statuses = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    return {
        "rps": seconds_of(r"Requests/sec:\s+([\d.]+)"),
        "p99_ms": seconds_of(r"99% in ([\d.]+) secs") * 1000,
        "slowest_ms": seconds_of(r"Slowest:\s+([\d.]+) secs") * 1000,
        "non200": float(sum(int(n) for code, n in statuses.items() if code != "200")),
    }


class Paced(NamedTuple):
    rate: float
    p50_ms: float
    p99_ms: float
    slowest_ms: float
    non200: int
    stolen: float  # the share of core 0's time the hypervisor gave to others meanwhile


def stolen_ticks(core: int) -> int:
    """Clock ticks the hypervisor has taken from ``core`` for other guests (steal time)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            return int(line.split()[8])
    return 0


def paced(urls: list[str], seconds: int, rate: int, body_file: Path | None, work: Path) -> Paced:
    """Latency at a constant ``rate`` of requests, evenly paced: 50 h2load processes of one
    connection each, started a fiftieth of their period apart. (One h2load process with many
    connections starts them at most one a millisecond, so their requests go out in bursts,
    and it sends the same paths in the same order on each.) ``urls`` are shared out among
    the clients, each sending its own in turn; with ``body_file``, each request POSTs it.
    Latencies count only while all 50 clients were sending."""
    clients = 50
    per_client = rate // clients
    processes, logs = [], []
    stolen_before, started = stolen_ticks(0), time.monotonic()
    for client in range(clients):
        log, mine = work / f"paced-{client}.tsv", work / f"paced-{client}.urls"
        log.unlink(missing_ok=True)  # h2load appends to its log
        mine.write_text("\n".join(urls[client::clients] or urls) + "\n")
        command = ["taskset", "-c", "1", "h2load", "--h1", "-c", "1", "-n",
                   str(per_client * seconds), "--rps", str(per_client), "--log-file", str(log),
                   "-i", str(mine)]  # fmt: skip
        if body_file is not None:
            command += ["-d", str(body_file), "-H", "Content-Type: application/json"]
        processes.append((subprocess.Popen(command, stdout=subprocess.DEVNULL), command))
        logs.append(log)
        time.sleep(1 / rate)  # phases spread over the period, beyond what starting takes
    for process, command in processes:
        if process.wait() != 0:
            raise RuntimeError(f"h2load failed: {' '.join(command)}")
    ticks = (stolen_ticks(0) - stolen_before) / os.sysconf("SC_CLK_TCK")
    stolen = ticks / (time.monotonic() - started)
    # Each log line: start time in µs since the epoch, status, µs until the response ended.
    runs = [[line.split("\t") for line in log.read_text().splitlines()] for log in logs]
    first = max(int(run[0][0]) for run in runs)
    last = min(int(run[-1][0]) for run in runs)
    inside = [row for run in runs for row in run if first <= int(row[0]) <= last]
    times = sorted(int(row[2]) / 1000 for row in inside)
    return Paced(
        rate=len(inside) / ((last - first) / 1e6),
        p50_ms=times[len(times) // 2],
        p99_ms=times[int(len(times) * 0.99)],
        slowest_ms=times[-1],
        non200=sum(row[1] != "200" for run in runs for row in run),
        stolen=stolen,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds, cases 1 and 2")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default=DEFAULT_LOOP, help="event loop of both"
    )
    args = parser.parse_args()
    global LOOP  # noqa: PLW0603  # one setting for every server this run starts
    LOOP = args.loop
    for tool in ("wrk", "h2load", "hey", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(
                f"bench/service.py needs {tool}: apt-get install wrk nghttp2-client hey util-linux"
            )
    work = Path(tempfile.mkdtemp(prefix="flagpost-bench-"))
    script, body = work / "post.lua", work / "body.json"
    script.write_text(WRK_SCRIPT.replace("VISITOR", NEW_VISITORS).replace("TRACK", "true"))
    untracked = work / "untracked.lua"
    untracked.write_text(WRK_SCRIPT.replace("VISITOR", NEW_VISITORS).replace("TRACK", "false"))
    returning = work / "returning.lua"
    returning.write_text(WRK_SCRIPT.replace("VISITOR", RETURNING_VISITORS).replace("TRACK", "true"))
    body.write_text(BODY)
    demo = ROOT / "rules" / "examples" / "demo.json"
    many = work / "350.json"
    many.write_text(json.dumps(generate(350)))
    results: dict[str, float] = {}

    # 1. flagpost against the bare handler, interleaved; flagpost as configured by default
    # (a new visitor's exposure recorded on every request) and with recording off. Best of
    # the rounds kept: the most requests per second and the fewest CPU µs per request.
    cpu: dict[str, float] = {}

    def keep(case: str, measured: dict[str, float]) -> None:
        assert measured["non2xx"] == 0, f"{case}: errors answered"
        name = f"{case}, requests/s"
        results[name] = max(results.get(name, 0.0), measured["rps"])
        cpu[case] = min(cpu.get(case, float("inf")), measured["cpu_us"])

    path = "/v1/flags/new_checkout/decision"
    for _ in range(args.rounds):
        for case, shape in (
            ("aiohttp app, one dynamic route", "app"),
            ("aiohttp low-level", "low-level"),
        ):
            port = free_port()
            with server(bare_handler(port, shape), port) as served:
                keep(case, wrk_with_cpu(served, path, args.seconds, script))
        shell = str(ROOT / "bench" / "shell_server.py")
        for case, extra, load in (
            ("flagpost single decision, track false", {}, untracked),
            ("flagpost single decision, recorded, new visitor each", {}, script),
            ("flagpost single decision, events off", {"events": "off"}, script),
            (
                "flagpost shell, fixed answer, events off",
                {"events": "off", "program": shell},
                script,
            ),
        ):
            port = free_port()
            with server(flagpost(demo, port, work / "cache", **extra), port) as served:
                keep(case, wrk_with_cpu(served, path, args.seconds, load))

    # 2. decide over 350 flags.
    for _ in range(args.rounds):  # interleaved, as in case 1
        for case, load, extra in (
            ("events off", script, {"events": "off"}),
            ("events on, new visitors", script, {}),
            ("events on, returning visitors", returning, {}),
        ):
            port = free_port()
            with server(flagpost(many, port, work / "cache", **extra), port) as served:
                keep(
                    f"/v1/decide 350 flags, {case}",
                    wrk_with_cpu(served, "/v1/decide", args.seconds, load),
                )
    results.update({f"{case}, CPU µs per request": value for case, value in cpu.items()})

    # 3. p99 at a constant 5,000 requests/s, evenly paced, then in hey's bursts.
    visitors = [f"?visitor_code=v-{n}" for n in range(5000 * args.seconds)]
    ab_test = work / "ab-test.json"
    ab_test.write_text(json.dumps(AB_TEST))
    # The machine's neighbours take the cores away in slices of milliseconds (steal), which
    # the bare handler's p99 shows as much as flagpost's: the rounds are interleaved and the
    # best p99 of each case kept, with the share of core 0 stolen during that measurement.
    for _ in range(args.rounds):
        for case, rules_file, get in (
            ("one returning visitor, POST", demo, False),
            ("a new visitor each, recorded, GET", ab_test, True),
            ("aiohttp app yardstick", None, False),
        ):
            port = free_port()
            if rules_file is None:
                command = bare_handler(port)
                path = "/v1/flags/new_checkout/decision"
            else:
                command = flagpost(rules_file, port, work / "cache")
                path = f"/v1/flags/{'checkout_test' if get else 'new_checkout'}/decision"
            with server(command, port) as (base, _):
                urls = [f"{base}{path}{visitor}" for visitor in visitors] if get else [base + path]
                measured = paced(urls, args.seconds, 5000, None if get else body, work)
                assert measured.non200 == 0, f"{case}: errors answered"
                name = f"constant 5,000/s paced, {case}"
                if measured.p99_ms < results.get(f"{name}: p99 ms", float("inf")):
                    results[f"{name}: achieved requests/s"] = measured.rate
                    results[f"{name}: p99 ms"] = measured.p99_ms
                    results[f"{name}: slowest ms"] = measured.slowest_ms
                    results[f"{name}: core 0 stolen %"] = measured.stolen * 100
                if not get:
                    p99 = hey(f"{base}{path}", args.seconds, 5000, 50, body)["p99_ms"]
                    name = f"constant 5,000/s in hey's bursts, {case}: p99 ms"
                    results[name] = min(results.get(name, float("inf")), p99)

    # 4. replace a 10,000-flag ruleset with another while answering 1,000 requests/s, after
    # the same load without a swap (what this machine and load generator allow at all).
    live, big = work / "live.json", work / "big.json"
    big_doc = generate(10_000)
    big_doc["revision"] = "big-10000-before"
    live.write_text(json.dumps(big_doc))
    big_doc["revision"] = "big-10000"
    big.write_text(json.dumps(big_doc))
    asked = "/v1/flags/flag_00001/decision"  # a flag of both rulesets
    port = free_port()
    with server(flagpost(live, port, work / "cache"), port) as (base, _):
        quiet = hey(f"{base}{asked}", args.seconds, 1000, 20, body)
        results["1,000/s without a swap: slowest ms"] = quiet["slowest_ms"]
    port = free_port()
    with server(flagpost(live, port, work / "cache", refresh_interval="0.2"), port) as (base, _):
        pause = args.seconds / 3
        swap = f"import time, os; time.sleep({pause}); os.replace({str(big)!r}, {str(live)!r})"
        swapper = subprocess.Popen([sys.executable, "-c", swap])
        during = hey(f"{base}{asked}", args.seconds, 1000, 20, body)
        swapper.wait()
        with urllib.request.urlopen(f"{base}/v1/config") as reply:
            swapped = json.loads(reply.read())["revision"] == "big-10000"
        results["swap of 10,000 flags under 1,000/s: slowest ms"] = during["slowest_ms"]
        results["swap of 10,000 flags under 1,000/s: p99 ms"] = during["p99_ms"]

    # 5. idle memory on the demo rules, and whether load leaves it higher each time: two
    # rounds of load recording a new visitor each request, each followed by the sessions'
    # expiry (a 5-second session here) and a pause.
    port = free_port()
    loaded = max(args.seconds * 3, 10)
    with server(flagpost(demo, port, work / "cache", session_ttl="5"), port) as served:
        time.sleep(2)
        results["idle RSS MB: started"] = resident_mb(served.pid)
        for round_ in ("first", "second"):
            wrk_with_cpu(served, "/v1/flags/new_checkout/decision", loaded, script)
            time.sleep(10)
            results[f"idle RSS MB: after the {round_} {loaded}s of load"] = resident_mb(served.pid)

    report(results, swapped, args.seconds)
    shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, float], swapped: bool, seconds: int) -> None:
    app = "aiohttp app, one dynamic route"
    low = "aiohttp low-level"

    def ratio(case: str, yardstick: str = app) -> float:
        return results[f"{case}, requests/s"] / results[f"{yardstick}, requests/s"]

    def cpu_ratio(case: str) -> float:
        return results[f"{app}, CPU µs per request"] / results[f"{case}, CPU µs per request"]

    untracked = "flagpost single decision, track false"
    recorded = "flagpost single decision, recorded, new visitor each"
    decide_off = results["/v1/decide 350 flags, events off, requests/s"]
    paced_cases = ("one returning visitor, POST", "a new visitor each, recorded, GET")
    yardstick_p99 = results["constant 5,000/s paced, aiohttp app yardstick: p99 ms"]
    slowest = results["swap of 10,000 flags under 1,000/s: slowest ms"]
    quiet_slowest = results["1,000/s without a swap: slowest ms"]
    print(
        f"python {sys.version.split()[0]}, {LOOP} event loop, {seconds}s a measurement, "
        "server: core 0, load: core 1"
    )
    for name, value in results.items():
        print(f"{name:66} {value:>10,.1f}")
    p99_new = results[f"constant 5,000/s paced, {paced_cases[1]}: p99 ms"]
    p99_rate = results[f"constant 5,000/s paced, {paced_cases[1]}: achieved requests/s"]
    checks = [
        (f"{untracked} / app", ratio(untracked), 0.85),
        (f"{untracked} / app, CPU per request", cpu_ratio(untracked), 0.85),
        (f"{recorded} / app", ratio(recorded), 0.70),
        (f"{recorded} / app, CPU per request", cpu_ratio(recorded), 0.70),
        ("/v1/decide 350 flags requests/s, events off", decide_off, 4000),
    ]
    print()
    for name, value in (
        (f"{untracked} / low-level", ratio(untracked, low)),
        (f"{recorded} / low-level", ratio(recorded, low)),
        (
            "flagpost single decision, events off / app",
            ratio("flagpost single decision, events off"),
        ),
        (
            "flagpost shell, fixed answer, events off / app",
            ratio("flagpost shell, fixed answer, events off"),
        ),
        ("aiohttp low-level / app", ratio(low)),
    ):
        print(f"{name:66} {value:>10,.2f}")
    for name, value, least in checks:
        verdict = "ok" if value >= least else "MISS"
        print(f"{name:66} {value:>10,.2f}  target >= {least:<6} {verdict}")
    for name, value, ok, target in (
        (
            f"p99 at 5,000/s paced, {paced_cases[1]} (ms; app {yardstick_p99:.1f})",
            p99_new,
            p99_new <= 2 and p99_rate >= 4900,
            "<= 2",
        ),
        (
            f"slowest during 10k-flag swap (ms; without a swap {quiet_slowest:.1f})",
            slowest,
            swapped and slowest < 20,
            "< 20",
        ),
    ):
        print(f"{name:66} {value:>10,.2f}  target {target:9} {'ok' if ok else 'MISS'}")
    if not swapped:
        print("the 10,000-flag ruleset was not swapped in during the run")


if __name__ == "__main__":
    main()
