"""The spool on its own: batches kept whole and in order, a cap, what a crash leaves, and
the lock that makes a spool directory one process's."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.events.records import Batch
from service.events.spool import Spool, SpoolLock, SpoolLocked, adopt_spools


def batch(*numbers: int) -> Batch:
    return Batch.of({"kind": "conversion", "n": number} for number in numbers)


def test_batches_come_back_whole_and_in_order_after_a_reopen(tmp_path: Path) -> None:
    """What one spool wrote, a new one on the same directory reads back oldest first."""
    first = Spool(tmp_path, max_bytes=10**6)
    first.open()
    for numbers in ((1, 2), (3,), (4, 5, 6)):
        assert first.append(batch(*numbers)) is not None
    second = Spool(tmp_path, max_bytes=10**6)
    second.open()
    seen = []
    while (head := second.head()) is not None:
        path, found = head
        assert found is not None
        seen.append([record["n"] for record in found.records()])
        second.remove(path)
    assert [[1, 2], [3], [4, 5, 6]] == seen
    assert (0, 0) == (len(second), second.bytes)


def test_a_batch_past_the_cap_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """append() answers None for a batch that would pass max_bytes, and writes nothing."""
    spool = Spool(tmp_path, max_bytes=60)
    spool.open()
    assert spool.append(batch(1)) is not None
    assert None is spool.append(batch(*range(20)))
    assert 1 == len(spool)
    assert 1 == len(list(tmp_path.glob("*.jsonl")))


def test_half_written_files_of_a_crash_are_removed_at_open(tmp_path: Path) -> None:
    """A *.tmp left by a crash mid-write is not replayed: it is removed when the spool opens."""
    (tmp_path / "00000000000000000001.tmp").write_text('{"kind": "conv')
    spool = Spool(tmp_path, max_bytes=10**6)
    spool.open()
    assert (0, []) == (len(spool), list(tmp_path.glob("*.tmp")))


def test_an_unreadable_file_is_reported_and_set_aside(tmp_path: Path) -> None:
    """A spool file that holds no records is reported as such (None) and moved aside."""
    (tmp_path / "00000000000000000001.jsonl").write_text("not json\n")
    spool = Spool(tmp_path, max_bytes=10**6)
    spool.open()
    head = spool.head()
    assert head is not None
    path, found = head
    assert None is found
    spool.remove(path, aside="unreadable")
    assert [path.name] == [item.name for item in (tmp_path / "unreadable").iterdir()]
    assert 0 == len(spool)


def test_a_rejected_batch_is_kept_outside_the_replay_order(tmp_path: Path) -> None:
    """reject() keeps a refused batch in rejected/, never to be replayed."""
    spool = Spool(tmp_path, max_bytes=10**6)
    spool.open()
    spool.reject(batch(7))
    assert (None, 1) == (spool.head(), len(list((tmp_path / "rejected").glob("*.jsonl"))))


def test_a_spool_directory_is_one_lock_holders_until_released(tmp_path: Path) -> None:
    """A second lock on the directory is refused, naming the holder's pid; free once released."""
    first, second = SpoolLock(tmp_path), SpoolLock(tmp_path)
    first.acquire()
    with pytest.raises(SpoolLocked, match=r"pid \d+"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


def test_adopted_spools_are_replayed_after_the_own_batches_in_their_order(tmp_path: Path) -> None:
    """Batches of unused spools move into the sink's spool in use, numbered after its own,
    each source's in its order; worker directories and set-aside batches stay put."""
    sink = "http-collector-0000abcd"
    own = Spool(tmp_path / "worker-0" / sink, max_bytes=10**6)
    own.append(batch(1))
    single = Spool(tmp_path / sink, max_bytes=10**6)
    for number in (2, 3):
        single.append(batch(number))
    single.reject(batch(99))
    beyond = Spool(tmp_path / "worker-2" / sink, max_bytes=10**6)
    beyond.append(batch(4))
    moved = adopt_spools([tmp_path, tmp_path / "worker-2"], tmp_path / "worker-0")
    reopened = Spool(tmp_path / "worker-0" / sink, max_bytes=10**6)
    reopened.open()
    seen = []
    while (head := reopened.head()) is not None:
        path, found = head
        assert found is not None
        seen.append(found.records()[0]["n"])
        reopened.remove(path)
    assert 3 == moved
    assert [1, 2, 3, 4] == seen
    assert 1 == len(list((tmp_path / sink / "rejected").glob("*.jsonl")))
