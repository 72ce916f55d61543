"""The container log: rotation bounds what a workload's output takes on disk, and reading
gives the output back in order across the rotated files, also while it is being written."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest

from bareboat.engine.logfile import LogWriter, read_log, rotated
from bareboat.engine.state import Record, RecordStore, options_from_json, options_to_json
from bareboat.errors import UsageError
from bareboat.spec.options import Isolation, LogOptions, RunOptions


def log_files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in path.parent.iterdir()}


def lines(n: int, start: int = 0) -> list[bytes]:
    return [f"line {i}\n".encode() for i in range(start, start + n)]


def test_far_more_than_the_cap_leaves_at_most_size_times_files(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    w = LogWriter(log, max_size=4096, max_file=3)
    for data in lines(20_000):
        w.write("stdout", data)
    w.close()
    files = log_files(log)
    assert sorted(files) == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    assert all(size <= 4096 for size in files.values())
    assert all(os.stat(tmp_path / n).st_mode & 0o777 == 0o600 for n in files)
    # `logs` gives the newest output, in order, across the rotated files.
    got = [d for _, s, d in read_log(log) if s == "stdout"]
    assert len(got) > 4096 // 60  # more than one file's worth
    assert got == lines(len(got), 20_000 - len(got))


def test_a_chunk_larger_than_max_size_is_split(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    w = LogWriter(log, max_size=1024, max_file=50)
    chunk = bytes(range(256)) * 20  # 5 KiB, with bytes that are not UTF-8
    w.write("stderr", chunk)
    w.close()
    assert all(size <= 1024 for size in log_files(log).values())
    assert b"".join(d for _, _, d in read_log(log)) == chunk


def test_one_file_only(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    w = LogWriter(log, max_size=1024, max_file=1)
    for data in lines(1000):
        w.write("stdout", data)
    w.close()
    assert list(log_files(log)) == ["log.jsonl"] and log.stat().st_size <= 1024
    got = [d for _, _, d in read_log(log)]
    assert got == lines(len(got), 1000 - len(got))


def test_a_restarted_writer_counts_what_is_there(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    for start in (0, 100, 200):
        w = LogWriter(log, max_size=2048, max_file=10)
        for data in lines(100, start):
            w.write("stdout", data)
        w.close()
    assert all(size <= 2048 for size in log_files(log).values())
    assert [d for _, _, d in read_log(log)] == lines(300)


def test_follow_reads_across_rotations_in_order(tmp_path: Path) -> None:
    """A reader following the log while the writer rotates it many times sees every line,
    in order, and stops when the writer is done."""
    log = tmp_path / "log.jsonl"
    w = LogWriter(log, max_size=2048, max_file=100)
    w.write("stdout", b"first\n")
    done = threading.Event()

    def write() -> None:
        for i, data in enumerate(lines(3000)):
            w.write("stdout", data)
            if i % 100 == 0:
                time.sleep(0.01)
        w.close()
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    got = [d for _, _, d in read_log(log, until=done.is_set)]
    writer.join()
    assert got == [b"first\n", *lines(3000)]
    assert len(log_files(log)) > 20  # it did rotate, many times


def test_follow_of_a_slow_reader_skips_only_what_was_dropped(tmp_path: Path) -> None:
    """Files rotated out before a follower reads them are gone; what it gives is still in
    order and ends with the last line."""
    log = tmp_path / "log.jsonl"
    w = LogWriter(log, max_size=1024, max_file=2)
    w.write("stdout", b"start\n")
    reader = read_log(log, until=lambda: True)
    assert next(reader)[2] == b"start\n"
    for data in lines(500):
        w.write("stdout", data)
    w.close()
    rest = [int(d.split()[1]) for _, _, d in reader]
    assert rest == sorted(set(rest)) and rest[-1] == 499


def test_no_log_yet(tmp_path: Path) -> None:
    assert list(read_log(tmp_path / "log.jsonl")) == []
    assert list(read_log(tmp_path / "log.jsonl", until=lambda: True)) == []


def test_undecodable_lines_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    w = LogWriter(log, max_size=1 << 20, max_file=2)
    w.write("stdout", b"a")
    w.close()
    with open(log, "ab") as f:
        f.write(b"not json\n" + b'{"t": 1, "s": "stdout"}\n')
    w = LogWriter(log, max_size=1 << 20, max_file=2)
    w.write("stdout", b"b")
    w.close()
    assert [d for _, _, d in read_log(log)] == [b"a", b"b"]
    assert rotated(log, 1).name == "log.jsonl.1"


# --- the options ----------------------------------------------------------------------------


def test_log_options() -> None:
    assert LogOptions.parse([]) == LogOptions(20 << 20, 5)
    assert LogOptions.parse(["max-size=10m", "max-file=3"]) == LogOptions(10 << 20, 3)
    assert LogOptions.parse(["max-size=4k"]) == LogOptions(4096, 5)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (["max-size=0"], "at least 1k"),
        (["max-size=100"], "at least 1k"),
        (["max-size=lots"], "invalid log option max-size"),
        (["max-file=0"], "from 1 to 100"),
        (["max-file=1000"], "from 1 to 100"),
        (["max-file=-1"], "a number"),
        (["compress=true"], "expected max-size=SIZE or max-file=N"),
        (["max-size"], "expected max-size=SIZE or max-file=N"),
        (["max-file=2", "max-file=3"], "given twice"),
    ],
)
def test_bad_log_options(values: list[str], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        LogOptions.parse(values)


def test_log_options_are_kept_in_the_record(tmp_path: Path) -> None:
    opts = RunOptions(log=LogOptions(8192, 2))
    assert options_from_json(options_to_json(opts)) == opts
    # records written before there were log options read as the defaults
    old = options_to_json(RunOptions())
    del old["log"]
    assert options_from_json(old).log == LogOptions()
    rec = Record(
        id="a" * 64, name="x", image="i", image_id="sha256:1", isolation=Isolation.PROCESS,
        options=dataclasses.replace(opts, name="x"),
    )  # fmt: skip
    store = RecordStore(tmp_path)
    store.save(rec)
    assert store.load(rec.id).options.log == LogOptions(8192, 2)
