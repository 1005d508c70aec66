"""Prometheus metrics, in a registry of the app's own (several apps can run in one process).

Durations are in seconds, with buckets fine enough for sub-millisecond decisions. Decisions
are counted in plain integers read at scrape time: a ``decide_all`` over hundreds of flags
must not pay for a locked counter increment per flag.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from service.store import RulesStore

__all__ = ["Metrics"]

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only double what a scraper already knows

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class _DecisionCollector(Collector):
    def __init__(self, tally: Tally[str]) -> None:
        self._tally = tally

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "flagpost_decisions", "Decisions answered, by reason.", labels=["reason"]
        )
        for reason, count in sorted(self._tally.items()):
            family.add_metric([reason], count)
        yield family


class Metrics:
    """Every metric flagpost exports."""

    def __init__(self, store: RulesStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "flagpost_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flagpost_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refreshes = Counter(
            "flagpost_rules_refreshes",
            "Rules refresh attempts, by result (updated, unchanged, failed).",
            ["result"],
            registry=self.registry,
        )
        self.decision_tally: Tally[str] = Tally()
        self.registry.register(_DecisionCollector(self.decision_tally))
        age = Gauge(
            "flagpost_rules_age_seconds",
            "Seconds since the served ruleset was loaded (-1 before any).",
            registry=self.registry,
        )
        age.set_function(lambda: time.time() - store.current.loaded_at if store.current else -1)
        flags = Gauge(
            "flagpost_rules_flags", "Flags in the served ruleset.", registry=self.registry
        )
        flags.set_function(lambda: len(store.current.ruleset.flag_keys) if store.current else 0)

    def count_decisions(self, reasons: Iterable[str]) -> None:
        self.decision_tally.update(reasons)

    def count_decision(self, reason: str) -> None:
        self.decision_tally[reason] += 1

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
