"""Tests for pot_jax.protocol.transcript: framing, torn tails vs corruption, crashes."""

import errno
import hashlib
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.protocol import transcript as tx
from pot_jax.protocol.transcript import (
    FILE_HEADER,
    RECORD_OVERHEAD,
    RecordKind,
    TranscriptError,
    TranscriptReader,
    TranscriptWriter,
    frame_record,
)

SMALL_PAYLOADS = [b"", b"x", b"hello", bytes(range(17)), b"\xff" * 40, b"end"]


def _write_log(path: Path, payloads=SMALL_PAYLOADS) -> bytes:
    with TranscriptWriter(path, fsync_every=len(payloads) + 1) as w:
        for i, payload in enumerate(payloads):
            assert w.append(1 + i % 6, payload) == i
    return path.read_bytes()


def _record_spans(payloads=SMALL_PAYLOADS) -> list[tuple[int, int]]:
    spans, pos = [], len(FILE_HEADER)
    for payload in payloads:
        spans.append((pos, pos + RECORD_OVERHEAD + len(payload)))
        pos = spans[-1][1]
    return spans


def _payloads(path) -> list[bytes]:
    return [r.payload for r in TranscriptReader(path)]


# ---------------------------------------------------------------------------
# Round trip and format


@given(st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=300)), max_size=12))
def test_round_trip_preserves_kinds_payloads_and_consecutive_seqs(items):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "run.log"
        with TranscriptWriter(path, fsync_every=100) as w:
            seqs = [w.append(kind, payload) for kind, payload in items]
        assert seqs == list(range(len(items)))
        records = TranscriptReader(path, allow_torn_tail=False).records()
        assert [(r.kind, r.payload) for r in records] == items
        assert [r.seq for r in records] == seqs
        assert path.stat().st_size == (records[-1].end if records else len(FILE_HEADER))


def test_record_bytes_match_the_documented_layout():
    frame = frame_record(RecordKind.ROUND, 7, b"abc")
    head = (3).to_bytes(4, "big") + bytes([2]) + (7).to_bytes(8, "big")
    assert frame[:13] == head
    assert frame[13:17] == zlib.crc32(head).to_bytes(4, "big")
    assert frame[17:20] == b"abc"
    assert frame[20:] == hashlib.sha256(head + b"abc").digest()[:8]
    assert len(frame) == RECORD_OVERHEAD + 3


def test_known_kinds_come_back_as_record_kind(tmp_path):
    with TranscriptWriter(tmp_path / "log") as w:
        w.append(RecordKind.LEDGER, b"entries")
        w.append(200, b"researcher's own kind")
    kinds = [r.kind for r in TranscriptReader(tmp_path / "log")]
    assert kinds == [RecordKind.LEDGER, 200] and isinstance(kinds[0], RecordKind)


def test_writer_misuse_is_rejected(tmp_path):
    path = tmp_path / "log"
    w = TranscriptWriter(path)
    with pytest.raises(TranscriptError, match="already exists; use TranscriptWriter.open"):
        TranscriptWriter(path)
    with pytest.raises(TranscriptError, match="already open for writing"):
        TranscriptWriter.open(path)
    with pytest.raises(TranscriptError, match=r"record kind 0: expected an int in \[1, 255\]"):
        w.append(0, b"")
    with pytest.raises(TranscriptError, match="payload must be bytes, got str"):
        w.append(1, "text")
    w.close()
    with pytest.raises(TranscriptError, match="closed"):
        w.append(1, b"")
    with pytest.raises(TranscriptError, match="fsync_every = 0"):
        TranscriptWriter.open(path, fsync_every=0)
    with pytest.raises(FileNotFoundError):
        TranscriptWriter.open(tmp_path / "missing")
    with TranscriptWriter.open(tmp_path / "missing", create=True) as w2:
        assert w2.append(1, b"a") == 0


def test_fsync_every_k_still_writes_every_record(tmp_path):
    path = tmp_path / "log"
    with TranscriptWriter(path, fsync_every=4) as w:
        for i in range(10):
            w.append(RecordKind.QC, bytes([i]))
    with TranscriptWriter.open(path, fsync_every=4) as w:
        assert w.next_seq == 10
        w.append(RecordKind.QC, b"more")
    assert _payloads(path) == [bytes([i]) for i in range(10)] + [b"more"]


def test_not_a_transcript_or_wrong_version_raises_at_offset_zero(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"#!/bin/sh\necho hello\n")
    with pytest.raises(TranscriptError, match="not a pot-jax transcript") as info:
        TranscriptReader(path).records()
    assert info.value.offset == 0
    path.write_bytes(tx.MAGIC + (2).to_bytes(4, "big"))
    with pytest.raises(TranscriptError, match="format version 2, this reader understands 1"):
        TranscriptWriter.open(path)


# ---------------------------------------------------------------------------
# Torn tails: every truncation point


def test_every_truncation_point_reopens_to_the_exact_complete_prefix(tmp_path):
    """Cutting the log at any byte keeps exactly the records that end at or before the cut
    (so every record whose append returned before a crash), and appending continues."""
    full = _write_log(tmp_path / "full")
    spans = _record_spans()
    path = tmp_path / "cut"
    for cut in range(len(full) + 1):
        path.write_bytes(full[:cut])
        kept = [p for p, (_, end) in zip(SMALL_PAYLOADS, spans, strict=True) if end <= cut]
        reader = TranscriptReader(path)
        assert [r.payload for r in reader] == kept, cut
        at_boundary = cut == len(FILE_HEADER) or cut in {end for _, end in spans}
        assert (reader.torn_tail is None) == at_boundary, cut
        with TranscriptWriter.open(path, fsync_every=100) as w:
            assert (w.torn_tail is None) == at_boundary, cut
            assert w.append(RecordKind.ROUND, b"after") == len(kept)
        assert _payloads(path) == [*kept, b"after"], cut


def test_torn_tail_is_reported_or_refused_by_the_reader(tmp_path, caplog):
    full = _write_log(tmp_path / "log")
    (tmp_path / "log").write_bytes(full[:-3])
    reader = TranscriptReader(tmp_path / "log")
    with caplog.at_level(logging.WARNING, logger=tx.__name__):
        assert len(reader.records()) == len(SMALL_PAYLOADS) - 1
    assert reader.torn_tail.offset == _record_spans()[-1][0]
    assert "torn tail" in caplog.text
    with pytest.raises(TranscriptError, match="torn tail of .* bytes at offset") as info:
        TranscriptReader(tmp_path / "log", allow_torn_tail=False).records()
    assert info.value.seq == len(SMALL_PAYLOADS) - 1
    with caplog.at_level(logging.WARNING, logger=tx.__name__):
        TranscriptWriter.open(tmp_path / "log").close()
    assert "truncating torn tail" in caplog.text


@pytest.mark.parametrize("zeros", [5, 17, 4096])
def test_zero_filled_tail_is_torn_not_corrupt(tmp_path, zeros):
    """A power cut can leave the file longer than its data, padded with zeros."""
    full = _write_log(tmp_path / "log")
    (tmp_path / "log").write_bytes(full + bytes(zeros))
    with TranscriptWriter.open(tmp_path / "log") as w:
        assert w.torn_tail.length == zeros
        w.append(1, b"next")
    assert _payloads(tmp_path / "log") == [*SMALL_PAYLOADS, b"next"]


# ---------------------------------------------------------------------------
# Corruption is never truncated


def test_flipped_byte_in_any_complete_record_raises_naming_its_offset(tmp_path):
    """Every single-byte flip after the file header, in the middle records and in the last
    one alike, is corruption: the record is complete, so it is not a torn write. The error
    names the record's offset and sequence number, and reopening does not touch the file."""
    full = _write_log(tmp_path / "full")
    path = tmp_path / "flipped"
    for index, (start, end) in enumerate(_record_spans()):
        for pos in range(start, end):
            for mask in (0x01, 0x80):
                data = bytearray(full)
                data[pos] ^= mask
                path.write_bytes(data)
                with pytest.raises(TranscriptError, match=f"offset {start} ") as info:
                    TranscriptReader(path).records()
                assert (info.value.offset, info.value.seq) == (start, index)
                with pytest.raises(TranscriptError, match=f"record at offset {start} "):
                    TranscriptWriter.open(path)
                assert path.read_bytes() == data


def test_flipped_byte_in_the_file_header_raises(tmp_path):
    full = _write_log(tmp_path / "log")
    for pos in range(len(FILE_HEADER)):
        data = bytearray(full)
        data[pos] ^= 0x10
        (tmp_path / "log").write_bytes(data)
        with pytest.raises(TranscriptError) as info:
            TranscriptWriter.open(tmp_path / "log")
        assert info.value.offset == 0


def test_valid_frame_with_wrong_sequence_number_is_corruption(tmp_path):
    path = tmp_path / "log"
    first = frame_record(1, 0, b"a")
    path.write_bytes(FILE_HEADER + first + frame_record(1, 2, b"b"))
    with pytest.raises(TranscriptError, match="sequence number 2, expected 1") as info:
        TranscriptReader(path).records()
    assert (info.value.offset, info.value.seq) == (len(FILE_HEADER) + len(first), 1)


def test_failed_write_stops_the_writer_and_reopen_recovers(tmp_path, monkeypatch):
    path = tmp_path / "log"
    w = TranscriptWriter(path)
    w.append(1, b"kept")

    def half_then_enospc(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tx, "_write_all", half_then_enospc)
    with pytest.raises(OSError, match="No space left"):
        w.append(1, b"lost" * 10)
    monkeypatch.undo()
    with pytest.raises(TranscriptError, match="an earlier write failed"):
        w.append(1, b"refused")
    w.close()
    with TranscriptWriter.open(path) as w:
        assert w.torn_tail is not None and w.append(1, b"next") == 1
    assert _payloads(path) == [b"kept", b"next"]


# ---------------------------------------------------------------------------
# Checkpoints


def test_checkpoints_round_trip_by_hash_and_are_stored_once(tmp_path):
    path = tmp_path / "log"
    params = os.urandom(3 << 20)
    with TranscriptWriter(path) as w:
        seq, digest = w.append_checkpoint(params)
        w.append_checkpoint(params)
    assert digest == hashlib.sha256(params).digest() and seq == 0
    reader = TranscriptReader(path)
    records = reader.records()
    assert [r.kind for r in records] == [RecordKind.CHECKPOINT] * 2
    assert all(reader.checkpoint(r) == params for r in records)
    assert len(list(tx.checkpoint_directory(path).iterdir())) == 1
    assert path.stat().st_size < 200  # the log holds the hash, not the parameters


def test_swapped_corrupted_or_missing_checkpoint_is_detected(tmp_path):
    path = tmp_path / "log"
    with TranscriptWriter(path) as w:
        _, a = w.append_checkpoint(b"parameters after round 10")
        _, b = w.append_checkpoint(b"parameters after round 20")
    reader = TranscriptReader(path)
    rec_a, rec_b = reader.records()
    store = reader.checkpoints
    file_a, file_b = store.path_for(a), store.path_for(b)
    data_a, data_b = file_a.read_bytes(), file_b.read_bytes()
    file_a.write_bytes(data_b)
    file_b.write_bytes(data_a)
    with pytest.raises(TranscriptError, match="swapped or corrupted"):
        reader.checkpoint(rec_a)
    file_b.write_bytes(data_b[:-1] + b"X")
    with pytest.raises(TranscriptError, match=f"hashes to .*, expected {b.hex()}"):
        reader.checkpoint(rec_b)
    file_a.unlink()
    with pytest.raises(TranscriptError, match=f"checkpoint {a.hex()} is missing"):
        reader.checkpoint(rec_a)
    with pytest.raises(TranscriptError, match="expected CHECKPOINT"):
        reader.checkpoint(tx.Record(seq=0, kind=RecordKind.ROUND, payload=b"", offset=12))


def test_reopen_removes_checkpoint_temporaries_left_by_a_crash(tmp_path):
    path = tmp_path / "log"
    with TranscriptWriter(path) as w:
        w.append_checkpoint(b"p")
    stale = tx.checkpoint_directory(path) / ".deadbeef.123.tmp"
    stale.write_bytes(b"half a checkpoint")
    TranscriptWriter.open(path).close()
    assert not stale.exists()


# ---------------------------------------------------------------------------
# Crash test: SIGKILL a writer at random times

_PAYLOAD_SOURCE = r"""
import hashlib

def payload(seq, big_every, big_size):
    size = big_size if seq % big_every == big_every - 1 else (seq * 7919) % 4000
    block = hashlib.sha256(seq.to_bytes(8, "big")).digest()
    return (block * (size // 32 + 1))[:size]
"""

# The child loads transcript.py by path (stdlib only), so it starts in milliseconds
# without importing the package (and JAX); it prints each seq after append returns.
_CHILD = (
    r"""
import importlib.util, sys

spec = importlib.util.spec_from_file_location("transcript_under_test", sys.argv[1])
tx = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = tx
spec.loader.exec_module(tx)
"""
    + _PAYLOAD_SOURCE
    + r"""
big_every, big_size = int(sys.argv[3]), int(sys.argv[4])
w = tx.TranscriptWriter.open(sys.argv[2], create=True)
sys.stdout.write(f"open {w.next_seq}\n")
sys.stdout.flush()
while True:
    seq = w.append(1 + w.next_seq % 6, payload(w.next_seq, big_every, big_size))
    sys.stdout.write(f"{seq}\n")
    sys.stdout.flush()
"""
)
_namespace: dict = {}
exec(_PAYLOAD_SOURCE, _namespace)
_child_payload = _namespace["payload"]


def _crash_loop(
    log: Path, *, kills: int, seed: int, big_every: int = 16, big_size: int = 1 << 18
) -> dict:
    """Kill a writing child ``kills`` times; after each kill check the log. Returns counts.

    Every ``big_every``-th record has a ``big_size`` payload, the rest under 4 kB.
    """
    rng = random.Random(seed)
    module = Path(tx.__file__)

    def payload(seq: int) -> bytes:
        return _child_payload(seq, big_every, big_size)

    expected_next, torn, returned_total = 0, 0, 0
    for kill in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(module), str(log), str(big_every), str(big_size)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # unbuffered: readline must not swallow lines communicate() should see
        )
        try:
            line = child.stdout.readline()
            assert line.startswith(b"open "), (line, child.stderr.read())
            assert int(line.split()[1]) == expected_next, "reopen lost or invented records"
            time.sleep(rng.uniform(0.010, 0.200))
            child.send_signal(signal.SIGKILL)
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL, err.decode()
        # Only whole lines count: the child may die between a digit and its newline.
        returned = [int(x) for x in out.split(b"\n")[:-1]]
        assert returned == list(range(expected_next, expected_next + len(returned)))
        reader = TranscriptReader(log)
        records = reader.records()
        assert [r.seq for r in records] == list(range(len(records)))
        assert not returned or returned[-1] < len(records), (
            f"kill {kill}: append returned seq {returned[-1]} but the log has {len(records)}"
        )
        for r in records[expected_next:]:
            assert r.kind == 1 + r.seq % 6 and r.payload == payload(r.seq), r.seq
        torn += reader.torn_tail is not None
        returned_total += len(returned)
        expected_next = len(records)
    with TranscriptWriter.open(log) as w:
        assert w.append(RecordKind.HEADER, b"after the last kill") == expected_next
    final = TranscriptReader(log, allow_torn_tail=False).records()
    assert [r.payload for r in final[:3]] == [payload(s) for s in range(3)]
    log.unlink()
    return {"kills": kills, "records": expected_next, "returned": returned_total, "torn": torn}


def test_records_whose_append_returned_survive_sigkill(tmp_path):
    """20 SIGKILLs at random 10-200 ms into a writing loop (seeded): after each, every seq
    the child printed after append returned is in the log, intact, and appending continues."""
    stats = _crash_loop(tmp_path / "crash.log", kills=20, seed=20240611)
    print(f"crash test: {stats}")
    assert stats["returned"] > stats["kills"]


def test_sigkill_during_large_writes_leaves_only_torn_tails(tmp_path):
    """Every record 4 MB, so many kills land inside write(): a kill mid-write may leave a
    partial record, which must read as a torn tail (never corruption) and be truncated."""
    stats = _crash_loop(tmp_path / "big.log", kills=10, seed=99, big_every=1, big_size=4 << 20)
    print(f"crash test (4 MB records): {stats}")
    assert stats["returned"] > 0


@pytest.mark.slow
def test_records_whose_append_returned_survive_many_sigkills(tmp_path):
    """240 SIGKILLs: ten logs of 20 kills each (so reopen scans stay short), then 40 kills
    of a writer of 4 MB records."""
    totals = {"kills": 0, "records": 0, "returned": 0, "torn": 0}
    for run in range(10):
        stats = _crash_loop(tmp_path / f"crash{run}.log", kills=20, seed=1000 + run)
        totals = {k: totals[k] + stats[k] for k in totals}
    big = _crash_loop(tmp_path / "big.log", kills=40, seed=5, big_every=1, big_size=4 << 20)
    totals = {k: totals[k] + big[k] for k in totals}
    print(f"crash test (slow): {totals}")
    assert totals["returned"] > totals["kills"]
