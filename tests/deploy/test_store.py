"""The append-only vote log (deploy/store.py): what a crash can and cannot do to it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.consensus.pbft.state import (
    GENESIS_DIGEST,
    Certified,
    DurableState,
    StableCheckpoint,
)
from pot_jax.crypto.quorum import QuorumCertificate
from pot_jax.deploy import store
from pot_jax.deploy.store import VoteLog, VoteLogError, read_records

QC = QuorumCertificate(b"\x07" * 96, b"\x0b")


def _entry(q: int, *, qc: bool = False) -> Certified:
    value = None if q % 5 == 0 else b"value %d" % q * 20  # some decisions are empty
    if qc:
        return Certified(q % 3, hashlib.sha256(b"%d" % q).digest(), value, None, QC)
    return Certified(q % 3, hashlib.sha256(b"%d" % q).digest(), value, {0: b"s" * 96, 2: b"t" * 96})


def _state(n: int, *, qc_upto: int = 0, view: int = 0) -> DurableState:
    """The state after ``n`` decisions, entries up to ``qc_upto`` compacted to a QC."""
    return DurableState(
        view=view,
        active=True,
        signed={("prepare", view, n + 1): b"d" * 32, ("commit", view, n): b"e" * 32},
        prepared={n + 1: Certified(view, b"d" * 32, b"next %d" % n, {1: b"u" * 96})},
        ledger={q: _entry(q, qc=q <= qc_upto) for q in range(1, n + 1)},
        last_executed=n,
        state_digest=hashlib.sha256(b"%d" % n).digest(),
        stable=StableCheckpoint(n - n % 10, b"c" * 32, None, QC if n >= 10 else None),
        last_view_change=None,
        pending={b"p" * 32: b"request %d" % n},
        last_new_view=b"nv" if view else None,
    )


def _reload(path: Path) -> DurableState | None:
    return VoteLog(path).load()


def test_a_growing_ledger_loads_back_exactly_the_last_state(tmp_path):
    """Each save appends one record; replaying them gives the last state, with entries
    added, compacted to a QC and (if the replica ever did it) removed."""
    log = VoteLog(tmp_path / "votes.log")
    assert log.load() is None
    for n in range(1, 25):
        state = _state(n, qc_upto=n // 2, view=n // 8)
        log.save(state)
        assert _reload(log.path) == state
    shrunk = dataclasses.replace(state, ledger={q: c for q, c in state.ledger.items() if q != 3})
    log.save(shrunk)
    assert _reload(log.path) == shrunk
    assert log.writes == 25
    assert os.stat(log.path).st_mode & 0o777 == 0o600
    payloads, end = read_records(log.path.read_bytes())
    assert len(payloads) == 25 and end == log.path.stat().st_size
    assert json.loads(payloads[-1])["removed"] == [3]
    # A record holds only the change: the QC that replaced entry 12's votes, entry 24.
    assert [q for q, _ in json.loads(payloads[-2])["ledger"]] == [12, 24]


def test_the_bytes_a_save_appends_do_not_grow_with_the_ledger(tmp_path):
    log = VoteLog(tmp_path / "votes.log")
    appended = {}
    for n in range(1, 301):
        before = log.path.stat().st_size if log.path.exists() else 0
        log.save(_state(n, qc_upto=n - 3))
        appended[n] = log.path.stat().st_size - before
    assert appended[300] < 2 * appended[4], (appended[4], appended[300])
    assert _reload(log.path) == _state(300, qc_upto=297)


@pytest.mark.parametrize("tear", ["cut mid-record", "garbage of the record's length", "zeros"])
def test_a_torn_last_record_loads_the_previous_state_and_is_cut_by_the_next_save(tmp_path, tear):
    log = VoteLog(tmp_path / "votes.log")
    for n in range(1, 4):
        log.save(_state(n))
    good = log.path.read_bytes()
    log.save(_state(30))  # a long record, longer than the next save's
    data = log.path.read_bytes()
    record = data[len(good) :]
    if tear == "cut mid-record":
        data = good + record[: len(record) // 2]
    elif tear == "zeros":
        data = good + bytes(len(record) // 2)  # the size grew, the data never landed
    else:  # a valid header, a payload that is not what it hashed
        data = good + record[:40] + bytes(len(record) - 40)
    log.path.write_bytes(data)
    log = VoteLog(log.path)
    assert log.load() == _state(3)
    log.save(_state(5))
    assert _reload(log.path) == _state(5)
    payloads, end = read_records(log.path.read_bytes())
    assert len(payloads) == 4 and end == log.path.stat().st_size  # the torn bytes are gone


@pytest.mark.parametrize("where", ["payload", "length"])
def test_a_corrupt_record_with_more_after_it_is_refused_naming_it(tmp_path, where):
    log = VoteLog(tmp_path / "votes.log")
    log.save(_state(1))
    first = log.path.stat().st_size
    log.save(_state(2))
    log.save(_state(3))
    data = bytearray(log.path.read_bytes())
    data[first + (60 if where == "payload" else 1)] ^= 0x01  # record 1
    log.path.write_bytes(bytes(data))
    wanted = "its sha256 does not match" if where == "payload" else "its length field .* fails"
    with pytest.raises(VoteLogError, match=f"votes.log: record 1 at byte {first}: {wanted}"):
        _reload(log.path)


def test_a_record_that_does_not_decode_to_the_closed_set_is_refused(tmp_path):
    log = VoteLog(tmp_path / "votes.log")
    log.save(_state(1))
    payload = json.loads(read_records(log.path.read_bytes())[0][0])
    payload["state"]["signed"] = [["prepare", "x", 1, "zz"]]
    log.path.write_bytes(store.MAGIC + store.encode_record(json.dumps(payload).encode()))
    with pytest.raises(VoteLogError, match="state at record 0 is malformed"):
        _reload(log.path)
    payload["full"] = False  # a log cannot start with a delta
    log.path.write_bytes(store.MAGIC + store.encode_record(json.dumps(payload).encode()))
    with pytest.raises(VoteLogError, match="record 0: the first record is a delta"):
        _reload(log.path)
    log.path.write_bytes(b"pot-jax/vote-log/v3\n")
    with pytest.raises(VoteLogError, match="does not start with"):
        _reload(log.path)


def test_compaction_keeps_the_state_and_shrinks_the_file(tmp_path):
    log = VoteLog(tmp_path / "votes.log")
    sizes = []
    with mock.patch.object(store, "COMPACT_MIN_BYTES", 0):
        for n in range(1, 40):
            log.save(_state(n, qc_upto=n - 2))
            sizes.append(log.path.stat().st_size)
            assert _reload(log.path) == _state(n, qc_upto=n - 2)
    shrinks = [i for i in range(1, len(sizes)) if sizes[i] < sizes[i - 1]]
    assert shrinks, sizes
    i = shrinks[-1]
    assert (
        len(read_records(log.path.read_bytes())[0]) == len(sizes) - i
    )  # one snapshot, then deltas
    assert not list(tmp_path.glob("*.tmp"))


def test_value_files_are_written_once_checked_on_load_and_collected(tmp_path):
    log = VoteLog(tmp_path / "votes.log")
    for n in range(1, 60):
        log.save(_state(n))
    assert b"request" not in log.path.read_bytes()  # values live beside it
    names = {p.name for p in log.values.iterdir()}
    live = {
        hashlib.sha256(v).hexdigest()
        for v in [b"request 59", b"next 59", *(c.value for c in _state(59).ledger.values())]
        if v is not None
    }
    assert live <= names and len(names - live) <= 2 * 32  # old requests are removed
    assert hashlib.sha256(b"request 1").hexdigest() not in names
    (tmp_path / "values" / hashlib.sha256(b"request 59").hexdigest()).write_bytes(b"forged")
    with pytest.raises(VoteLogError, match="does not hash to its name"):
        _reload(log.path)


# A v1 log, as the v1 code wrote it (git show aeb2ff0:pot_jax/deploy/store.py), and its values.
_V1_VALUES = [b"first", b"third", b"request"]
_V1 = (
    '{"active":false,"format":"pot-jax/vote-log/v1","last_executed":2,"last_new_view":null,'
    '"last_view_change":"7663","ledger":[[1,{"digest":"'
    + "61" * 32
    + '","qc":"'
    + QC.encode().hex()
    + '","value":"'
    + hashlib.sha256(b"first").hexdigest()
    + '","view":0,'
    '"votes":null}],[2,{"digest":"' + "62" * 32 + '","qc":null,"value":null,"view":1,'
    '"votes":[[1,"'
    + "75" * 96
    + '"]]}]],"pending":[["'
    + "70" * 32
    + '","'
    + hashlib.sha256(b"request").hexdigest()
    + '"]],"prepared":[[3,{"digest":"'
    + "64" * 32
    + '","qc":null,"value":"'
    + hashlib.sha256(b"third").hexdigest()
    + '","view":2,"votes":[[0,"'
    + "73" * 96
    + '"],[3,"'
    + "74" * 96
    + '"]]}]],"signed":[["commit",2,3,"'
    + "64" * 32
    + '"],["prepare",2,3,"'
    + "64" * 32
    + '"]],"stable":{"digest":"'
    + "63" * 32
    + '","qc":"'
    + QC.encode().hex()
    + '","seq":2,"votes":null},"state_digest":"'
    + "7a" * 32
    + '","view":2}'
)
_V1_STATE = DurableState(
    view=2,
    active=False,
    signed={("prepare", 2, 3): b"d" * 32, ("commit", 2, 3): b"d" * 32},
    prepared={3: Certified(2, b"d" * 32, b"third", votes={0: b"s" * 96, 3: b"t" * 96})},
    ledger={
        1: Certified(0, b"a" * 32, b"first", None, QC),
        2: Certified(1, b"b" * 32, None, {1: b"u" * 96}),
    },
    last_executed=2,
    state_digest=b"z" * 32,
    stable=StableCheckpoint(2, b"c" * 32, None, QC),
    last_view_change=b"vc",
    pending={b"p" * 32: b"request"},
    last_new_view=None,
)


@pytest.mark.parametrize("layout", ["v1 at the log's path", "v1 as legacy"])
def test_a_v1_log_loads_and_the_first_save_replaces_it(tmp_path, layout):
    """A validator restarted after the upgrade keeps the votes it signed."""
    v1 = tmp_path / "votes.json"
    v1.write_text(_V1)
    (tmp_path / "values").mkdir()
    for value in _V1_VALUES:
        (tmp_path / "values" / hashlib.sha256(value).hexdigest()).write_bytes(value)
    log = (
        VoteLog(v1)
        if layout == "v1 at the log's path"
        else VoteLog(tmp_path / "votes.log", legacy=v1)
    )
    assert log.load() == _V1_STATE
    assert v1.exists()  # nothing is removed before the v2 log holds the state
    log.save(_V1_STATE)
    assert log.path.read_bytes().startswith(store.MAGIC)
    assert not (tmp_path / "votes.json").exists() or log.path == v1
    assert VoteLog(log.path, legacy=log.legacy).load() == _V1_STATE
    nxt = dataclasses.replace(_V1_STATE, ledger={**_V1_STATE.ledger, 3: _entry(3)}, last_executed=3)
    log.save(nxt)
    assert VoteLog(log.path).load() == nxt


class _Crash(Exception):
    pass


_small_fields = st.fixed_dictionaries(
    {
        "view": st.integers(0, 3),
        "active": st.booleans(),
        "signed": st.dictionaries(
            st.tuples(st.sampled_from(["prepare", "commit"]), st.integers(0, 3), st.integers(1, 9)),
            st.binary(min_size=32, max_size=32),
            max_size=3,
        ),
        "pending": st.dictionaries(
            st.binary(min_size=32, max_size=32), st.binary(min_size=1, max_size=40), max_size=2
        ),
        "last_view_change": st.none() | st.binary(max_size=8),
    }
)
_ledger_step = st.tuples(
    st.integers(0, 3),  # entries decided
    st.lists(st.integers(0, 40), max_size=2),  # entries whose votes become a QC
    st.booleans(),  # drop an entry (the replica never does; the log must not care)
)


@given(
    steps=st.lists(st.tuples(_small_fields, _ledger_step), min_size=1, max_size=10),
    crash_at=st.integers(0, 9),
    cut=st.floats(0, 1, exclude_max=True),
    compact=st.booleans(),
)
def test_a_crash_during_any_save_leaves_the_last_completed_state(steps, crash_at, cut, compact):
    """Whatever the saves and wherever a crash tears the next one, load gives exactly
    the state of the last save that returned, and saving after it works."""
    states: list[DurableState] = []
    ledger: dict[int, Certified] = {}
    for small, (grow, to_qc, drop) in steps:
        ledger = dict(ledger)
        for _ in range(grow):
            q = max(ledger, default=0) + 1
            ledger[q] = _entry(q)
        for i in to_qc:
            if ledger:
                q = sorted(ledger)[i % len(ledger)]
                ledger[q] = dataclasses.replace(ledger[q], votes=None, qc=QC)
        if drop and ledger:
            del ledger[min(ledger)]
        states.append(
            DurableState(
                **small,
                prepared={},
                ledger=ledger,
                last_executed=len(ledger),
                state_digest=GENESIS_DIGEST,
                stable=StableCheckpoint(0, GENESIS_DIGEST),
                last_new_view=None,
            )
        )
    crash_at = min(crash_at, len(states) - 1)
    write_all = store._write_all

    def torn_write(fd, data, offset):
        write_all(fd, data[: int(cut * len(data))], offset)
        raise _Crash

    with (
        tempfile.TemporaryDirectory() as d,
        mock.patch.object(store, "COMPACT_MIN_BYTES", 0 if compact else store.COMPACT_MIN_BYTES),
    ):
        path = Path(d) / "votes.log"
        log = VoteLog(path)
        for s in states[:crash_at]:
            log.save(s)
        with mock.patch.object(store, "_write_all", torn_write), pytest.raises(_Crash):
            log.save(states[crash_at])
        log = VoteLog(path)
        assert log.load() == (states[crash_at - 1] if crash_at else None)
        log.save(states[-1])
        assert VoteLog(path).load() == states[-1]
