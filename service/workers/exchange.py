"""Metrics of the whole server, whichever worker answers the scrape.

Each worker renders its own registry (``service.metrics``) into ``<directory>/<pid>.prom``
every second (``publish``, in a thread); ``/metrics`` renders the answering worker's at once
and adds every other worker's latest file (``combine``). So a scrape is at most a second
behind on the other workers, and exact on its own.

prometheus-client's multiprocess mode does this with memory-mapped values, but not for
custom collectors nor function gauges, and flagpost counts its hottest figures in plain
integers turned into metrics only when scraped (``service.metrics``): exchanging the rendered
text keeps that, and the sum is done with prometheus-client's own parser.

Counters and histograms of a worker that ended are kept (``retire`` folds them into
``retired.prom``), so the server's sums never go back; its gauges, a moment's state of a
process that is gone, are dropped. Gauges that describe the rules every worker serves
(``PER_SERVER``) are the answering worker's own, not a sum.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = ["PER_SERVER", "MetricsExchange"]

PER_SERVER = frozenset({"flagpost_rules_age_seconds", "flagpost_rules_flags"})
RETIRED = "retired.prom"
_SUFFIX = ".prom"
_Role = Literal["own", "other", "retired"]  # "other": another live worker


class MetricsExchange:
    """One worker's side of the exchange directory (its methods block on the disk)."""

    def __init__(self, directory: Path, pid: int | None = None) -> None:
        self.directory = directory
        self.pid = os.getpid() if pid is None else pid
        self.own = directory / f"{self.pid}{_SUFFIX}"

    def publish(self, text: bytes) -> None:
        """Make ``text`` this worker's metrics for the others (written whole, then renamed)."""
        _write_whole(self.own, text)

    def combine(self, own: bytes) -> bytes:
        """``own`` (this worker's metrics now) summed with every other worker's latest, the
        retired workers' counters and histograms, and ``flagpost_workers``."""
        parts: list[tuple[bytes, _Role]] = [(own, "own")]
        live = 1
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            if path == self.own:
                continue
            try:
                text = path.read_bytes()
            except FileNotFoundError:  # retired since it was listed
                continue
            retired = path.name == RETIRED
            live += not retired
            parts.append((text, "retired" if retired else "other"))
        return _render(_sum(parts), live)


def retire(directory: Path, pid: int) -> None:
    """Fold the last metrics of the worker ``pid``, which has ended, into ``retired.prom``:
    its counters and histograms only (the arbiter calls this when it reaps the worker)."""
    ended = directory / f"{pid}{_SUFFIX}"
    try:
        text = ended.read_bytes()
    except FileNotFoundError:  # it died before it published anything
        return
    retired = directory / RETIRED
    parts: list[tuple[bytes, _Role]] = [(text, "retired")]
    if retired.exists():
        parts.append((retired.read_bytes(), "retired"))
    _write_whole(retired, _render(_sum(parts), None))
    ended.unlink(missing_ok=True)


def _sum(parts: list[tuple[bytes, _Role]]) -> list[Metric]:
    families: dict[str, Metric] = {}
    totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text, role in parts:
        for family in text_string_to_metric_families(text.decode()):
            if family.type == "gauge" and (
                role == "retired" or (role == "other" and family.name in PER_SERVER)
            ):
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
            sums = totals.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sample.labels.items()))
                sums[key] = sums.get(key, 0.0) + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in totals[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


def _render(families: list[Metric], workers: int | None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families, workers))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Metric], workers: int | None) -> None:
        self._families = families
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        yield from self._families
        if self._workers is not None:
            yield GaugeMetricFamily(
                "flagpost_workers", "Worker processes answering.", value=self._workers
            )


def _write_whole(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    temporary.rename(path)
