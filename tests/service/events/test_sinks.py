"""Sinks on their own: how a spec becomes a sink, and that a sink's name never shows a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.events.sinks import FileSink, HttpSink, parse_sink, tracker_payloads


def sink(spec: str) -> object:
    return parse_sink(spec, file_max_bytes=1024, timeout=1.0, authorization=None, source_id="s")


def test_specs_become_file_and_http_sinks_with_their_format() -> None:
    """file:<dir> is a file sink; a URL an HTTP sink, native unless ?format= says otherwise."""
    made = [sink("file:events"), sink("https://c.example/in"), sink("http://c.example/?format=odp")]
    assert [FileSink, HttpSink, HttpSink] == [type(item) for item in made]
    assert Path("events") == made[0].directory  # type: ignore[attr-defined]
    assert ["native", "odp"] == [item.format for item in made[1:]]  # type: ignore[attr-defined]


def test_a_sinks_name_shows_no_user_password_or_query_value() -> None:
    """The name (metric label, log field, spool directory) keeps host, path and format only."""
    made = sink("https://ann:pa55word@c.example:8443/in?token=t0ken&format=tracker")
    assert "https://c.example:8443/in?format=tracker" == made.name  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("file:", "names no directory"),
        ("ftp://c.example/in", r"neither file:<dir> nor an http\(s\) URL"),
        ("https://u:pw@c.example/in?format=xml&token=t0ken", "asks for format 'xml'"),
    ],
)
def test_unusable_specs_are_refused_without_their_secrets(spec: str, reason: str) -> None:
    """A bad spec is a ValueError saying why, which never repeats a password or token."""
    with pytest.raises(ValueError, match=reason) as refused:
        sink(spec)
    assert "t0ken" not in str(refused.value)
    assert ":pw@" not in str(refused.value)


def test_visitor_data_goes_to_the_tracker_typed_by_slug() -> None:
    """A visitor_data record is an event whose type is its slug and whose properties its data."""
    record = {
        "kind": "visitor_data", "uuid": "u", "timestamp": 1_700_000_000_000,
        "process_timestamp": 1_700_000_000_500, "visitor_id": "v", "session_id": "s",
        "type": "page_view", "data": {"url": "https://a.example/"},
        "client_engine": "flagpost", "client_version": "0",
    }  # fmt: skip
    [payload] = tracker_payloads([record], "src")
    assert [("page-view", {"url": "https://a.example/"})] == [
        (event["type"], event["properties"]) for event in payload["events"]
    ]
