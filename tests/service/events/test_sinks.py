"""Sinks on their own: how a spec becomes a sink, and that a sink's name never shows a secret."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import pytest

from service.events import sinks
from service.events.records import Batch
from service.events.sinks import FileSink, HttpSink, close_orphans, parse_sink, tracker_payloads


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


async def test_a_file_is_open_while_written_and_closed_whole_after() -> None:
    """A file being written is ``*.jsonl.open``; once the sink closes it, ``*.jsonl``."""
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        sink = FileSink(directory, max_bytes=10**6)
        await sink.open()
        await sink.send(Batch.of([{"kind": "conversion", "n": 1}]))
        while_open = [path.suffixes[-2:] for path in directory.iterdir()]
        await sink.close()
        closed = [path.suffixes[-1:] for path in directory.iterdir()]
        text = next(directory.iterdir()).read_text()
    assert [[".jsonl", ".open"]] == while_open
    assert [[".jsonl"]] == closed
    assert '{"kind":"conversion","n":1}\n' == text


async def test_a_batch_written_in_pieces_is_its_json_lines_and_a_failed_one_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A batch longer than a piece reads back as its JSON lines, in order; a write that fails
    after its first piece leaves the file as it was, for the retry to write whole."""
    count = sinks.PIECE_LINES * 2 + 5
    batch = Batch.of([{"kind": "conversion", "n": n} for n in range(count)])
    sink = FileSink(tmp_path, max_bytes=10**9)
    await sink.open()
    try:
        await sink.send(batch)
        file = sink._file
        assert file is not None
        real_write, calls = file.write, []

        def failing_write(data: memoryview) -> int:
            calls.append(len(data))
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
            return real_write(data)

        file.write = failing_write  # type: ignore[method-assign, assignment]
        with pytest.raises(sinks.DeliveryError):
            await sink.send(batch)
        file.write = real_write  # type: ignore[method-assign]
        await sink.send(Batch.of([{"kind": "conversion", "n": "last"}]))
    finally:
        await sink.close()
    [written] = list(tmp_path.iterdir())
    expected = batch.json_lines() + b'{"kind":"conversion","n":"last"}\n'
    assert expected == written.read_bytes()


async def test_an_idle_file_is_closed_once_it_is_old() -> None:
    """A file that got its last line long ago is closed when it passes its age, with no
    further write to trigger it, and the next write opens a new one."""
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        sink = FileSink(directory, max_bytes=10**6, max_age=0.2)
        await sink.open()
        try:
            await sink.send(Batch.of([{"kind": "conversion", "n": 1}]))
            deadline = time.monotonic() + 10
            while not list(directory.glob("*.jsonl")):
                assert time.monotonic() < deadline, "the idle file was not closed"
                await asyncio.sleep(0.02)
            await sink.send(Batch.of([{"kind": "conversion", "n": 2}]))
            suffixes = sorted(path.suffix for path in directory.iterdir())
        finally:
            await sink.close()
    assert [".jsonl", ".open"] == suffixes


async def test_files_left_open_by_a_dead_writer_are_closed_and_a_live_ones_kept() -> None:
    """Opening a sink closes the ``.open`` files no process holds (a crash left them);
    ``close_orphans`` does the same later, and leaves the one a live writer holds."""
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        before = directory / "events-20261202T000000000000Z-1.jsonl.open"
        before.write_text('{"kind":"conversion","n":1}\n{"kind":"conv')
        live = FileSink(directory, max_bytes=10**6)
        await live.open()
        await live.send(Batch.of([{"kind": "conversion", "n": 2}]))
        (held,) = directory.glob("*.open")
        later = directory / "events-20261202T000000000001Z-2.jsonl.open"
        later.write_text('{"kind":"conversion","n":3}\n')
        try:
            closed = close_orphans(directory)
            remaining = [path.name for path in directory.glob("*.open")]
        finally:
            await live.close()
        truncated = (directory / before.name.removesuffix(".open")).read_text()
    assert held != before
    assert [directory / later.name.removesuffix(".open")] == closed
    assert [held.name] == remaining
    assert truncated.endswith('{"kind":"conv')
