"""The events' metrics: accepted, delivered, retried, spooled, rejected and dropped records by
kind and sink; queue depth, spool size, flush latency."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.events.records import Batch

__all__ = ["EventStats"]

FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class EventStats:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

        def counter(name: str, help: str, *labels: str) -> Counter:
            return Counter(name, help, list(labels), registry=registry)

        self.accepted = counter(
            "flagpost_events_accepted", "Events accepted into the queue, by kind.", "kind"
        )
        self.delivered = counter(
            "flagpost_events_delivered", "Events a sink took, by kind and sink.", "kind", "sink"
        )
        self.retried = counter(
            "flagpost_events_retried",
            "Events sent again after a failed attempt, by kind and sink.",
            "kind",
            "sink",
        )
        self.spooled = counter(
            "flagpost_events_spooled",
            "Events written to a sink's disk spool, by kind and sink.",
            "kind",
            "sink",
        )
        self.rejected = counter(
            "flagpost_events_rejected",
            "Events in batches a collector refused as malformed, kept in the spool's rejected/.",
            "kind",
            "sink",
        )
        self.dropped = counter(
            "flagpost_events_dropped",
            "Events lost: past the spool's cap, or held in memory while the disk failed.",
            "kind",
            "sink",
        )
        self.io_errors = counter(
            "flagpost_events_io_errors",
            "Disk errors of a sink's spool (a full disk, say); what failed is tried again.",
            "sink",
        )
        self.repeated = counter(
            "flagpost_exposures_repeated",
            "Exposures not recorded again because the session already had them.",
        )
        self.flush_seconds = Histogram(
            "flagpost_events_flush_seconds",
            "Time to deliver one batch to a sink, retries included.",
            ["sink"],
            buckets=FLUSH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "flagpost_events_queued", "Events waiting in memory for the flusher.", registry=registry
        )
        self.spool_batches = Gauge(
            "flagpost_events_spool_batches",
            "Batches waiting in a sink's disk spool.",
            ["sink"],
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "flagpost_events_spool_bytes",
            "Bytes in a sink's disk spool.",
            ["sink"],
            registry=registry,
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    @staticmethod
    def count(counter: Counter, batch: Batch, sink: str | None = None) -> None:
        for kind, number in batch.counts().items():
            (counter.labels(kind) if sink is None else counter.labels(kind, sink)).inc(number)
