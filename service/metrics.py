"""Prometheus metrics, in a registry of the app's own (several apps can run in one process).

Durations are in seconds, with buckets fine enough for sub-millisecond decisions. What is
counted per request (requests, latencies, decisions) is kept in plain integers, updated by
the event loop's one thread and turned into metric families only when scraped: a decision
must not pay for locks and label lookups, nor ``decide_all`` for one increment per flag.
A scrape copies those counts on the loop (``Metrics.snapshot``) and renders the copy in a
thread: rendering takes milliseconds, and a thread reading the live dicts could fail or mix
two moments.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from rules import Decision
from service.store import RulesStore

__all__ = ["Metrics"]

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only double what a scraper already knows

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class _DecisionCollector(Collector):
    def __init__(self, tally: Tally[str]) -> None:
        self._tally = tally
        self._view: dict[str, int] = {}

    def copy(self) -> None:
        """Take the counts the next ``collect`` reports (on the loop)."""
        self._view = dict(self._tally)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "flagpost_decisions", "Decisions answered, by reason.", labels=["reason"]
        )
        for reason, count in sorted(self._view.items()):
            family.add_metric([reason], count)
        yield family


class RequestStats(Collector):
    """Requests by route, method and status, and their durations, as plain counts.

    ``durations`` holds, per (route, method, status), a count per bucket (the last is +Inf)
    and then the sum of seconds; the requests answered are the sum of the buckets. The shell
    updates it inline (``record`` says how), which on the hottest route is worth it."""

    def __init__(self) -> None:
        self.durations: dict[tuple[str, str, int], list[float]] = {}
        self._view: dict[tuple[str, str, int], list[float]] = {}

    def copy(self) -> None:
        """Take the counts the next ``collect`` reports (on the loop)."""
        self._view = {key: list(histogram) for key, histogram in self.durations.items()}

    def histogram(self, key: tuple[str, str, int]) -> list[float]:
        """The counts of (route, method, status), made on first use."""
        histogram = self.durations.get(key)
        if histogram is None:
            histogram = self.durations[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        return histogram

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        histogram = self.histogram((route, method, status))
        histogram[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        histogram[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        answered = CounterMetricFamily(
            "flagpost_http_requests",
            "HTTP requests answered, by route, method and status.",
            labels=["route", "method", "status"],
        )
        durations_view = self._view
        for (route, method, status), histogram in sorted(durations_view.items()):
            answered.add_metric([route, method, str(status)], sum(histogram[:-1]))
        yield answered
        durations = HistogramMetricFamily(
            "flagpost_http_request_duration_seconds",
            "Time to answer an HTTP request, by route, method and status.",
            labels=["route", "method", "status"],
        )
        bounds = [str(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
        for (route, method, status), histogram in sorted(durations_view.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0.0
            for bound, in_bucket in zip(bounds, histogram[:-1], strict=True):
                running += in_bucket
                cumulative.append((bound, running))
            durations.add_metric([route, method, str(status)], cumulative, sum_value=histogram[-1])
        yield durations


class Metrics:
    """Every metric flagpost exports."""

    def __init__(self, store: RulesStore) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.refreshes = Counter(
            "flagpost_rules_refreshes",
            "Rules refresh attempts, by result (updated, unchanged, failed).",
            ["result"],
            registry=self.registry,
        )
        self.decision_tally: Tally[str] = Tally()
        self._decisions = _DecisionCollector(self.decision_tally)
        self.registry.register(self._decisions)
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

    def count_decisions(self, decisions: Iterable[Decision]) -> None:
        # Counted in C; a comprehension reads the slots in half the time map(attrgetter) takes.
        self.decision_tally.update([decision.reason for decision in decisions])

    def snapshot(self) -> Callable[[], bytes]:
        """Copy the loop's counts (call it on the loop); returns what renders the copy, fit
        to run in a thread."""
        self.requests.copy()
        self._decisions.copy()
        return lambda: generate_latest(self.registry)
