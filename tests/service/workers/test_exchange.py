"""The metrics exchange: the server's figures summed over its workers, whichever answers."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service.workers.exchange import MetricsExchange, retire


def exposition(requests: float, queued: float, flags: float, seconds: float) -> bytes:
    return f"""# HELP flagpost_http_requests_total Requests.
# TYPE flagpost_http_requests_total counter
flagpost_http_requests_total{{route="/a",status="200"}} {requests}
# HELP flagpost_events_queued Queued.
# TYPE flagpost_events_queued gauge
flagpost_events_queued {queued}
# HELP flagpost_rules_flags Flags.
# TYPE flagpost_rules_flags gauge
flagpost_rules_flags {flags}
# HELP flagpost_flush_seconds Flushes.
# TYPE flagpost_flush_seconds histogram
flagpost_flush_seconds_bucket{{le="0.1"}} {requests}
flagpost_flush_seconds_bucket{{le="+Inf"}} {requests}
flagpost_flush_seconds_count {requests}
flagpost_flush_seconds_sum {seconds}
""".encode()


def samples(text: bytes) -> dict[str, float]:
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.labels.get("le") in (None, "+Inf")
    }


def test_counters_histograms_and_gauges_are_summed_over_live_workers(tmp_path: Path) -> None:
    """Counters, histograms and gauges add up over the workers; the rules gauges are the
    answering worker's own; the live workers are counted."""
    MetricsExchange(tmp_path, pid=2).publish(exposition(5, 7, 9, 0.5))
    combined = samples(MetricsExchange(tmp_path, pid=1).combine(exposition(3, 1, 8, 0.25)))
    assert 8 == combined["flagpost_http_requests_total"]
    assert 8 == combined["flagpost_flush_seconds_bucket"]
    assert 0.75 == combined["flagpost_flush_seconds_sum"]
    assert 8 == combined["flagpost_events_queued"]
    assert 8 == combined["flagpost_rules_flags"]
    assert 2 == combined["flagpost_workers"]


def test_an_ended_workers_counters_stay_and_its_gauges_go(tmp_path: Path) -> None:
    """Two workers retired one after the other: their counters keep adding to the sums
    (which so never go back), their gauges no longer count, nor do they as workers."""
    MetricsExchange(tmp_path, pid=2).publish(exposition(5, 7, 9, 0.5))
    retire(tmp_path, 2)
    MetricsExchange(tmp_path, pid=3).publish(exposition(4, 7, 9, 0.5))
    retire(tmp_path, 3)
    retire(tmp_path, 4)  # ended before it ever published: nothing to keep
    combined = samples(MetricsExchange(tmp_path, pid=1).combine(exposition(3, 1, 8, 0.25)))
    assert 12 == combined["flagpost_http_requests_total"]
    assert 12 == combined["flagpost_flush_seconds_count"]
    assert 1 == combined["flagpost_events_queued"]
    assert 1 == combined["flagpost_workers"]
    assert ["retired.prom"] == [path.name for path in tmp_path.glob("*.prom")]
