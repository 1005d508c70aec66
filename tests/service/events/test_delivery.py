"""Delivery to real collectors on 127.0.0.1 and to files: retries, spool, replay, drain."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.events.delivery import ACK_BOUND
from service.events.pipeline import Pipeline
from service.events.queue import EventQueue
from service.events.records import (
    Batch,
    conversion_record,
    events_in,
    new_uuids,
    odp_record,
    take_batch,
)
from service.events.sinks import FileSink, Sink, parse_sink
from service.events.spool import SpoolLocked
from tests.service.collector import Collector, running_collector


def make_pipeline(tmp_path: Path, sinks: list[Sink], **changes: Any) -> Pipeline:
    options: dict[str, Any] = {
        "spool_dir": tmp_path / "spool",
        "spool_max_bytes": 10**8,
        "batch_size": 10,
        "queue_size": 10_000,
        "flush_interval": 0.05,
        "session_ttl": 1800.0,
        "session_limit": 1000,
        "retry_timeout": 0.3,
        "drain_timeout": 2.0,
    }
    options.update(changes)
    return Pipeline(sinks, CollectorRegistry(), **options)


def http_sink(collector: Collector, format: str = "native") -> Sink:
    return parse_sink(
        f"{collector.url}?format={format}",
        file_max_bytes=10**6,
        timeout=2.0,
        authorization="Bearer collector-token",
        source_id="shop-source",
    )


def conversion(visitor: str = "v-1") -> dict[str, Any]:
    return conversion_record(
        uuid=new_uuids(1)[0],
        seconds=time.time(),
        visitor=visitor,
        session="s-1",
        exposures=[],
        event_key="purchase",
        event_id=83023,
        attributes={},
        user_agent=None,
        referer=None,
        revenue=1250,
        value=None,
        quantity=1,
        tags={},
        revision="r1",
    )


async def eventually(check: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def accept_in_rounds(pipeline: Pipeline, rounds: int, each: int, pause: float) -> list[str]:
    """Accept ``each`` conversions a round, pausing between rounds; their uuids in order."""
    sent = []
    for _ in range(rounds):
        for _ in range(each):
            record = conversion()
            sent.append(record["uuid"])
            pipeline.accept(record)
        await asyncio.sleep(pause)
    return sent


def sample(pipeline: Pipeline, name: str, **labels: str) -> float:
    value = pipeline.stats.registry.get_sample_value(name, labels)
    return float(value or 0.0)


def first_seen(uuids: list[str]) -> list[str]:
    return list(dict.fromkeys(uuids))


async def test_a_collector_that_fails_and_recovers_gets_every_event_in_order(
    tmp_path: Path,
) -> None:
    """Events accepted while the collector is down are spooled and all delivered, in order."""
    with running_collector() as collector:
        collector.down = True
        pipeline = make_pipeline(tmp_path, [http_sink(collector)])
        await pipeline.start()
        sent = await accept_in_rounds(pipeline, rounds=10, each=7, pause=0.1)
        worker = pipeline.workers[0]
        await eventually(lambda: len(worker.spool) > 0 and worker.down_since is not None)
        collector.down = False
        await eventually(lambda: set(sent) <= {r["uuid"] for r in collector.records()})
        await pipeline.stop()
    delivered = [record["uuid"] for record in collector.records()]
    assert sent == first_seen(delivered)
    assert 0 == len(worker.spool)
    assert (
        sample(pipeline, "flagpost_events_spooled_total", kind="conversion", sink=worker.name) > 0
    )
    assert (
        sample(pipeline, "flagpost_events_retried_total", kind="conversion", sink=worker.name) > 0
    )
    assert "Bearer collector-token" == collector.headers[-1]["Authorization"]


async def test_retry_after_from_a_busy_collector_is_honoured(tmp_path: Path) -> None:
    """A 429 with Retry-After: 1 makes the next attempt wait about a second, not less."""
    with running_collector() as collector:
        collector.failures, collector.fail_status, collector.retry_after = 1, 429, "1"
        pipeline = make_pipeline(tmp_path, [http_sink(collector)], retry_timeout=5.0)
        await pipeline.start()
        pipeline.accept(conversion())
        await eventually(lambda: len(collector.records()) == 1)
        await pipeline.stop()
    (first, status), (second, _) = collector.attempts[:2]
    assert 429 == status
    assert second - first >= 0.9


async def test_a_refused_batch_is_kept_aside_and_the_next_one_still_goes(tmp_path: Path) -> None:
    """A 400 from the collector moves the batch to rejected/ without blocking later ones."""
    with running_collector() as collector:
        collector.failures, collector.fail_status = 1, 400
        pipeline = make_pipeline(tmp_path, [http_sink(collector)])
        await pipeline.start()
        refused = conversion()
        pipeline.accept(refused)
        pipeline.flush()
        await eventually(lambda: len(collector.attempts) == 1)
        later = conversion()
        pipeline.accept(later)
        await eventually(lambda: len(collector.records()) == 1)
        await pipeline.stop()
    assert [later["uuid"]] == [record["uuid"] for record in collector.records()]
    kept = list((pipeline.workers[0].spool.directory / "rejected").glob("*.jsonl"))
    assert 1 == len(kept)
    assert refused["uuid"] == json.loads(kept[0].read_text())["uuid"]


async def test_a_full_spool_counts_and_logs_what_it_cannot_keep(tmp_path: Path) -> None:
    """Past the spool's cap, batches are counted as dropped, and the spool stays under it."""
    with running_collector() as collector:
        collector.down = True
        pipeline = make_pipeline(
            tmp_path, [http_sink(collector)], spool_max_bytes=4096, retry_timeout=0.05
        )
        await pipeline.start()
        worker = pipeline.workers[0]
        for _ in range(20):
            for _ in range(10):
                pipeline.accept(conversion())
            pipeline.flush()
            await asyncio.sleep(0.02)
        await eventually(
            lambda: (
                sample(
                    pipeline, "flagpost_events_dropped_total", kind="conversion", sink=worker.name
                )
                > 0
            )
        )
        await pipeline.stop()
    assert worker.spool.bytes <= 4096
    spooled = sample(pipeline, "flagpost_events_spooled_total", kind="conversion", sink=worker.name)
    dropped = sample(pipeline, "flagpost_events_dropped_total", kind="conversion", sink=worker.name)
    assert 200 == spooled + dropped


async def test_a_restart_replays_the_spool_in_order(tmp_path: Path) -> None:
    """What one run spooled at stop, the next run delivers first, in the order it was made."""
    with running_collector() as collector:
        collector.down = True
        first = make_pipeline(tmp_path, [http_sink(collector)], drain_timeout=0.2)
        await first.start()
        sent = []
        for _ in range(25):
            record = conversion()
            sent.append(record["uuid"])
            first.accept(record)
        await first.stop()
        assert len(first.workers[0].spool) > 0
        assert [] == collector.records()

        collector.down = False
        second = make_pipeline(tmp_path, [http_sink(collector)])
        await second.start()
        await eventually(lambda: len(second.workers[0].spool) == 0)
        await second.stop()
    assert sent == first_seen([record["uuid"] for record in collector.records()])


async def test_stopping_delivers_what_is_still_queued(tmp_path: Path) -> None:
    """Events waiting for the next flush are delivered when the pipeline stops."""
    with running_collector() as collector:
        pipeline = make_pipeline(tmp_path, [http_sink(collector)], flush_interval=60.0)
        await pipeline.start()
        sent = [conversion() for _ in range(7)]
        for record in sent:
            pipeline.accept(record)
        await pipeline.stop()
    assert [r["uuid"] for r in sent] == [r["uuid"] for r in collector.records()]


async def test_tracker_format_sends_one_payload_per_visitor_session(tmp_path: Path) -> None:
    """The tracker format groups records by visitor and session into tracker payloads."""
    with running_collector() as collector:
        pipeline = make_pipeline(tmp_path, [http_sink(collector, "tracker")])
        await pipeline.start()
        for visitor in ("alice", "bob", "alice"):
            pipeline.accept(conversion(visitor))
        await pipeline.stop()
    payloads = sorted(collector.accepted, key=lambda payload: payload["profile"]["id"])
    assert ["alice", "bob"] == [payload["profile"]["id"] for payload in payloads]
    assert [2, 1] == [len(payload["events"]) for payload in payloads]
    event = payloads[0]["events"][0]
    assert {"id": "shop-source"} == payloads[0]["source"]
    assert {"id": "s-1"} == payloads[0]["session"]
    assert "conversion" == event["type"]
    assert "purchase" == event["properties"]["event_name"]
    assert event["time"]["insert"].endswith("Z")


async def test_odp_format_sends_only_odp_events(tmp_path: Path) -> None:
    """An odp sink gets ODP events as ODP expects them, and nothing else."""
    with running_collector() as collector:
        pipeline = make_pipeline(tmp_path, [http_sink(collector, "odp")])
        await pipeline.start()
        pipeline.accept(conversion())
        pipeline.accept(
            odp_record(
                uuid=new_uuids(1)[0],
                seconds=time.time(),
                type="fullstack",
                action="purchased",
                identifiers={"fs_user_id": "u-1"},
                data={"price": 50.0},
            )
        )
        await pipeline.stop()
    [body] = collector.accepted
    assert 1 == len(body)
    assert {"type", "action", "identifiers", "data"} == set(body[0])
    assert 50.0 == body[0]["data"]["price"]


async def test_the_file_sink_rotates_and_keeps_every_line(tmp_path: Path) -> None:
    """Small rotation sizes give several files that together hold every record once."""
    sink = FileSink(tmp_path / "events", max_bytes=2048)
    pipeline = make_pipeline(tmp_path, [sink], batch_size=5)
    await pipeline.start()
    sent = []
    for _ in range(60):
        record = conversion()
        sent.append(record["uuid"])
        pipeline.accept(record)
        if len(sent) % 5 == 0:
            await asyncio.sleep(0)
    await pipeline.stop()
    files = sorted((tmp_path / "events").glob("events-*.jsonl"))
    lines = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    assert len(files) > 1
    assert sent == [line["uuid"] for line in lines]


def test_a_full_queue_hands_its_content_over_instead_of_growing() -> None:
    """At capacity, the queue gives everything to its overflow handler and starts again."""
    spilled: list[list[Any]] = []
    queue = EventQueue(batch_size=2, capacity=5, on_full=lambda items, _: spilled.append(items))
    for number in range(12):
        queue.put({"n": number})
    assert [5, 5] == [len(batch) for batch in spilled]
    assert 2 == len(queue)


async def test_the_flusher_builds_a_big_batch_in_slices_and_keeps_order(tmp_path: Path) -> None:
    """A batch that takes milliseconds to build lets other tasks run while it is built, and a
    flush asked for meanwhile finishes it first: every record arrives once, in queue order."""
    sink = FileSink(tmp_path / "events", max_bytes=10**8)
    pipeline = make_pipeline(tmp_path, [sink], batch_size=10**6, flush_interval=3600.0)
    await pipeline.start()
    sent = []
    for number in range(3000):
        record = conversion(f"early-{number}")
        sent.append(record["uuid"])
        pipeline.accept(record)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    building = asyncio.create_task(pipeline._flush_in_slices())
    for _ in range(100):  # until the flusher is part way through the batch
        await asyncio.sleep(0)
        if pipeline._building is not None:
            break
    assert pipeline._building is not None, "the batch was built without handing control back"
    ticks_then = ticks
    await asyncio.sleep(0)
    later = conversion("late")
    pipeline.accept(later)
    assert 1 == pipeline.flush()  # the batch being built goes first, then this one
    await building
    ticker.cancel()
    await pipeline.stop()
    assert ticks > ticks_then, "other tasks ran while the batch was being built"
    lines = [json.loads(line) for path in sorted((tmp_path / "events").glob("*.jsonl"))
             for line in path.read_text().splitlines()]  # fmt: skip
    assert [*sent, later["uuid"]] == [line["uuid"] for line in lines]


async def test_a_hanging_collector_gets_batches_on_disk_within_the_bound(tmp_path: Path) -> None:
    """While the collector takes no answer, each batch is on disk within the ack bound and the
    sink is reported unhealthy; once it answers, the copies go and each event is delivered."""
    with running_collector() as collector:
        collector.hang.set()
        pipeline = make_pipeline(tmp_path, [http_sink(collector)], retry_timeout=30.0)
        await pipeline.start()
        worker = pipeline.workers[0]
        sent = await accept_in_rounds(pipeline, rounds=3, each=10, pause=0.05)
        await eventually(lambda: len(worker.spool) == 3, within=ACK_BOUND + 5)
        on_disk = [
            json.loads(line)["uuid"]
            for path in sorted(worker.spool.directory.glob("*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        assert sent == on_disk
        health = worker.health()
        assert False is health["healthy"]
        assert "no answer from the sink" in health["last_error"]["message"]  # type: ignore[index]
        collector.hang.clear()
        await eventually(lambda: len(worker.spool) == 0)
        await pipeline.stop()
    assert sent == first_seen([record["uuid"] for record in collector.records()])
    assert True is worker.health()["healthy"]


class BuggySink:
    """A sink whose encoder has a bug: its first sends raise TypeError."""

    name = "buggy"
    kinds = frozenset({"decision", "conversion", "odp"})

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[str] = []

    async def open(self) -> None:
        return None

    async def send(self, batch: Batch) -> None:
        if self.failures:
            self.failures -= 1
            raise TypeError("unsupported type in the encoder")
        self.received += batch.lines

    async def close(self) -> None:
        return None


async def test_a_bug_in_a_sink_is_retried_not_taken_for_a_refusal(tmp_path: Path) -> None:
    """An exception of flagpost's own is logged and retried: nothing goes to rejected/."""
    sink = BuggySink(failures=2)
    pipeline = make_pipeline(tmp_path, [sink], retry_timeout=5.0)
    await pipeline.start()
    record = conversion()
    pipeline.accept(record)
    await eventually(lambda: len(sink.received) == 1)
    await pipeline.stop()
    worker = pipeline.workers[0]
    assert record["uuid"] == json.loads(sink.received[0])["uuid"]
    assert not (worker.spool.directory / "rejected").exists()
    assert 0 == sample(pipeline, "flagpost_events_rejected_total", kind="conversion", sink="buggy")


async def test_a_second_pipeline_on_the_same_spool_is_refused(tmp_path: Path) -> None:
    """Two processes (here: two pipelines) never share a spool directory."""
    first = make_pipeline(tmp_path, [FileSink(tmp_path / "a", 10**6)])
    second = make_pipeline(tmp_path, [FileSink(tmp_path / "b", 10**6)])
    await first.start()
    try:
        with pytest.raises(SpoolLocked, match="in use by another flagpost process"):
            await second.start()
    finally:
        await first.stop()
    await second.start()  # free again once the first has stopped
    await second.stop()


def test_batches_are_cut_at_the_batch_size() -> None:
    """Batches taken from the backlog hold at most the batch size, one request's exposures
    cut where a batch is full, nothing lost or repeated."""
    outcomes = tuple(f"o{n}" for n in range(7))
    backlog: deque[Any] = deque([{"n": 1}, (0.0, "v", 1, outcomes, {}, None, None, "r"), {"n": 2}])
    cut = [take_batch(backlog, 4) for _ in range(3)]
    assert [4, 4, 1] == [events for _, events in cut]
    assert [4, 4, 1] == [sum(map(events_in, items)) for items, _ in cut]
    taken = [o for items, _ in cut for item in items if isinstance(item, tuple) for o in item[3]]
    assert list(outcomes) == taken
    assert not backlog


async def test_a_flush_hands_the_backlog_to_the_flusher_instead_of_building_it(
    tmp_path: Path,
) -> None:
    """flush() (the flush endpoint, a full queue) builds nothing itself: the flusher builds
    the backlog in slices afterwards, and every event still arrives once, in order."""
    sink = FileSink(tmp_path / "events", max_bytes=10**8)
    pipeline = make_pipeline(tmp_path, [sink], batch_size=500, flush_interval=3600.0)
    await pipeline.start()
    sent = []
    for number in range(5_000):
        record = conversion(f"v-{number}")
        sent.append(record["uuid"])
        pipeline.queue.items.append(record)  # queued without waking the flusher
        pipeline.queue.events += 1
    assert 5_000 == pipeline.flush()
    worker = pipeline.workers[0]
    assert (0, None) == (len(worker.outbox), pipeline._building)  # nothing built in the call
    await eventually(lambda: worker.delivered == 5_000)
    await pipeline.stop()
    lines = [json.loads(line) for path in sorted((tmp_path / "events").glob("*.jsonl"))
             for line in path.read_text().splitlines()]  # fmt: skip
    assert sent == [line["uuid"] for line in lines]


async def test_the_file_sink_touches_the_disk_off_the_event_loop(tmp_path: Path) -> None:
    """Every write of the file sink runs in its own thread, never the event loop's."""
    sink = FileSink(tmp_path / "events", max_bytes=10**6)
    threads: list[str] = []
    write = sink._write

    def watched(lines: tuple[str, ...]) -> None:
        threads.append(threading.current_thread().name)
        write(lines)

    sink._write = watched  # type: ignore[method-assign]
    await sink.open()
    await sink.send(Batch.of([{"kind": "odp", "n": 1}]))
    await sink.close()
    assert 1 == len(threads)
    assert threads[0].startswith("flagpost-file-sink")


async def test_a_full_spool_leaves_a_hanging_send_to_finish_and_counts_only_real_drops(
    tmp_path: Path,
) -> None:
    """With the spool at its cap, a batch being sent to a hanging collector is neither
    counted as dropped nor lost: once the collector answers it is delivered, and the worker
    goes on without an error."""
    with running_collector() as collector:
        collector.hang.set()
        pipeline = make_pipeline(
            tmp_path, [http_sink(collector)], spool_max_bytes=1024, retry_timeout=30.0
        )
        await pipeline.start()
        worker = pipeline.workers[0]
        sent = [conversion() for _ in range(5)]
        for record in sent:
            pipeline.accept(record)
        pipeline.flush()
        await eventually(worker.stalled, within=ACK_BOUND + 5)
        await asyncio.sleep(ACK_BOUND)  # past the bound: the spool (at its cap) refused it
        collector.hang.clear()
        await eventually(lambda: worker.delivered == 5)
        later = conversion()
        pipeline.accept(later)
        await eventually(lambda: worker.delivered == 6)
        await pipeline.stop()
    assert 0 == sample(
        pipeline, "flagpost_events_dropped_total", kind="conversion", sink=worker.name
    )
    assert [r["uuid"] for r in [*sent, later]] == first_seen(
        [r["uuid"] for r in collector.records()]
    )


class _DropOdd:
    """A screen that drops the conversions of odd-numbered visitors and counts its calls."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def _keep(self, items: list[Any]) -> list[Any]:
        self.sizes.append(len(items))
        return [item for item in items if int(item["visitor_id"].split("-")[1]) % 2 == 0]

    async def screen(self, items: list[Any]) -> list[Any]:
        await asyncio.sleep(0)  # as a store's read would
        return self._keep(items)

    def screen_now(self, items: list[Any]) -> list[Any]:
        return self._keep(items)


async def test_a_screen_sees_everything_a_batch_at_a_time_and_order_is_kept(
    tmp_path: Path,
) -> None:
    """Handed over at once, 5,000 events are screened in batch-sized pieces (never the whole
    backlog in one step), and what the screen keeps arrives once, in order."""
    sink = FileSink(tmp_path / "events", max_bytes=10**8)
    screen = _DropOdd()
    pipeline = make_pipeline(tmp_path, [sink], batch_size=500, flush_interval=3600.0,
                             screen=screen)  # fmt: skip
    await pipeline.start()
    kept = []
    for number in range(5_000):
        record = conversion(f"v-{number}")
        if number % 2 == 0:
            kept.append(record["uuid"])
        pipeline.queue.items.append(record)
        pipeline.queue.events += 1
    pipeline.flush()
    await eventually(lambda: pipeline.workers[0].delivered == 2_500)
    await pipeline.stop()
    lines = [json.loads(line) for path in sorted((tmp_path / "events").glob("*.jsonl"))
             for line in path.read_text().splitlines()]  # fmt: skip
    assert kept == [line["uuid"] for line in lines]
    assert 5_000 == sum(screen.sizes)
    assert max(screen.sizes) <= 500


async def test_an_overloaded_screen_is_helped_one_batch_a_request(tmp_path: Path) -> None:
    """Past the backlog limit, a request that adds events screens one batch's worth itself,
    without I/O, so unscreened events cannot pile up without bound."""
    sink = FileSink(tmp_path / "events", max_bytes=10**8)
    screen = _DropOdd()
    pipeline = make_pipeline(tmp_path, [sink], batch_size=100, queue_size=1_000,
                             flush_interval=3600.0, screen=screen)  # fmt: skip
    pipeline.spill([conversion(f"v-{n}") for n in range(1_500)], 1_500)
    assert ([100], 1_400) == (screen.sizes, pipeline._unscreened_events)
