"""Instructions per request, counted by valgrind: ``python bench/instructions.py [--requests N]``.

Requests per second on a shared machine move by ±20 % between runs; instructions executed do
not. Each server runs under ``valgrind --tool=callgrind`` (``apt-get install valgrind``); a
client on one keep-alive connection sends ``--warm`` decisions, the counters are zeroed
(``callgrind_control -z``), ``--requests`` more are sent one after another, and the counters
are dumped: every instruction the server's process executed in between, its background work
included, divided by the requests. The servers are the two yardsticks of
``bench/bare_server.py`` and flagpost four ways: ``"track": false``, recording a new visitor
each request, events off, and the request of ``bench/service.py``'s p99 case (a GET of an A/B
test's decision, a new visitor each, recorded). Instructions are not time (cache misses,
system calls), so this complements ``bench/service.py`` rather than replacing it; one request
at a time also weighs the event loop's per-wake-up work more than 32 connections at once do.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service import AB_TEST  # noqa: E402

PATH = "/v1/flags/new_checkout/decision"
GET_PATH = "/v1/flags/checkout_test/decision?visitor_code=v-%d"
CONTEXT = '{"geo":{"country":"FR"},"device":"phone","account_id":"acct-%d"}'


def body(number: int, track: bool) -> bytes:
    context = CONTEXT % (number % 997)
    flag = "true" if track else "false"
    return f'{{"visitor_code":"v-{number}","context":{context},"track":{flag}}}'.encode()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def connect(port: int, process: subprocess.Popen[bytes]) -> http.client.HTTPConnection:
    deadline = time.monotonic() + 300  # a Python start-up under valgrind takes a while
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            connection.connect()
            return connection
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def count(command: list[str], port: int, warm: int, requests: int, track: bool | None) -> float:
    """Instructions per request of the server ``command`` starts; ``track`` None: GETs."""
    out = Path(tempfile.mkdtemp(prefix="flagpost-callgrind-"))
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p", *command],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        connection = connect(port, process)

        def send(first: int, how_many: int) -> None:
            for number in range(first, first + how_many):
                if track is None:
                    connection.request("GET", GET_PATH % number)
                else:
                    headers = {"Content-Type": "application/json"}
                    connection.request("POST", PATH, body=body(number, track), headers=headers)
                reply = connection.getresponse()
                reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"answered {reply.status}")

        send(0, warm)
        control = ["callgrind_control"]
        subprocess.run([*control, "-z", str(process.pid)], check=True, capture_output=True)
        send(warm, requests)
        subprocess.run([*control, "-d", str(process.pid)], check=True, capture_output=True)
        dumps = sorted(out.glob(f"callgrind.{process.pid}.*"))
        for line in dumps[-1].read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]) / requests
        raise RuntimeError("no totals in the callgrind dump")
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests counted")
    parser.add_argument("--warm", type=int, default=300, help="requests before counting")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 50 and 50")
    parser.add_argument("--only", default="", help="only the cases whose name has this text")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.warm = 50, 50
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/instructions.py needs {tool}: apt-get install valgrind")
    python = os.path.realpath(sys.executable)  # valgrind must see the interpreter, not a shim
    work = Path(tempfile.mkdtemp(prefix="flagpost-instructions-"))
    demo = str(ROOT / "rules" / "examples" / "demo.json")
    ab_test = work / "ab-test.json"
    ab_test.write_text(json.dumps(AB_TEST))
    results: dict[str, float] = {}
    cases: list[tuple[str, str | None, bool | None]] = [
        ("aiohttp app, one dynamic route", "app", False),
        ("aiohttp low-level", "low-level", False),
        ("flagpost, track false", "file", False),
        ("flagpost, recorded, new visitor each", "file", True),
        ("flagpost, events off", "off", False),
        ("flagpost, GET as in the p99 case", "file", None),
    ]
    for case, kind, track in cases:
        if args.only not in case and kind != "app":  # the yardstick always runs
            continue
        port = free_port()
        if kind in ("app", "low-level"):
            bare = str(ROOT / "bench" / "bare_server.py")
            command = [python, bare, str(port), "uvloop", str(kind)]
        else:
            events = "off" if kind == "off" else f"file:{work / f'events-{port}'}"
            spool = str(work / f"spool-{port}")
            rules = str(ab_test) if track is None else demo
            command = [python, "-m", "service", "serve", "--port", str(port), "--rules", rules,
                       "--cache-dir", str(work / "cache"), "--events", events,
                       "--spool-dir", spool, "--log-level", "warning"]  # fmt: skip
        results[case] = count(command, port, args.warm, args.requests, track)
        print(f"{case:44} {results[case]:>10,.0f} instructions a request", flush=True)
    yardstick = results["aiohttp app, one dynamic route"]
    print()
    for case, value in results.items():
        print(f"{'app yardstick / ' + case:60} {yardstick / value:6.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
