"""Resuming an interrupted run (issue 12, section 2): SIGKILL anywhere, resume, same bytes."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import pytest

from pot_jax.config import ProtocolConfig
from pot_jax.protocol.audit import audit
from pot_jax.protocol.keys import generate_keys, write_key_dir
from pot_jax.protocol.runner import TRANSCRIPT_NAME, ResumeError, resume_protocol, run_protocol
from pot_jax.protocol.transcript import RecordKind, TranscriptReader

SETTING = dict(
    dataset="teacher",
    workers=8,
    batch_size=8,
    rounds=30,
    hidden=(16,),
    learning_rate=0.5,
    eval_every=5,
    checkpoint_every=4,
    progress=False,
    attack="alie",
    budget=0.5,
)

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pot_jax.config import ProtocolConfig
    from pot_jax.protocol import transcript
    from pot_jax.protocol.runner import run_protocol

    run_dir, keys, kill_after, kill_in_put = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if kill_in_put:
        original, calls = transcript.CheckpointStore.put, [0]

        def put(self, data):
            calls[0] += 1
            if calls[0] == kill_in_put:  # half a temporary file, then the power goes
                tmp = self.directory / ".half.tmp"
                self.directory.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(bytes(data)[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, data)

        transcript.CheckpointStore.put = put

    def on_commit(r, row):
        print(r, flush=True)
        if r == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    config = ProtocolConfig(**{setting}, keys=keys, run_dir=run_dir)
    run_protocol(config, on_commit=on_commit)
    """
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    keys = write_key_dir(root / "keys", generate_keys(4, 8))
    config = ProtocolConfig(**SETTING, keys=str(keys), run_dir=str(root / "reference"))
    summary = run_protocol(config)
    assert summary.fraud_proofs > 0
    return root, keys, summary


def _payloads(run_dir):
    records = TranscriptReader(run_dir / TRANSCRIPT_NAME)
    return [(r.kind, r.payload) for r in records if r.kind != RecordKind.HEADER]


def _summary(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())
    for volatile in ("wall_seconds", "run_dir"):
        s.pop(volatile)
    return s


@pytest.mark.parametrize(
    "kill_after,kill_in_put",
    [
        # The first and third kill points repeat the second's path at another round: slow only.
        pytest.param(2, 0, marks=pytest.mark.slow),
        (13, 0),
        pytest.param(27, 0, marks=pytest.mark.slow),
        (-1, 4),
    ],
    ids=["after_round_2", "after_round_13", "after_round_27", "during_checkpoint_write"],
)
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_bytes(
    reference, tmp_path, kill_after, kill_in_put
):
    root, keys, _ = reference
    run_dir = tmp_path / "run"
    child = subprocess.run(
        [sys.executable, "-c", CHILD.format(setting=repr(SETTING)), str(run_dir), str(keys),
         str(kill_after), str(kill_in_put)],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert not (run_dir / "summary.json").exists()
    assert audit(run_dir).exit_code == 3  # unfinished, not passed
    summary = resume_protocol(run_dir)
    assert summary.rounds_committed == SETTING["rounds"]
    assert _payloads(run_dir) == _payloads(root / "reference")
    assert _summary(run_dir) == _summary(root / "reference")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 31))  # one row a round, none twice
    assert [r["round"] for r in rows if "pot_test_accuracy" in r] == list(range(5, 31, 5))
    report = audit(run_dir)
    assert report.ok, str(report)
    assert not list((run_dir / (TRANSCRIPT_NAME + ".checkpoints")).glob(".*.tmp"))


def test_resume_refuses_what_it_cannot_continue(reference, tmp_path):
    root, keys, _ = reference
    with pytest.raises(ResumeError, match="the run is finished"):
        resume_protocol(root / "reference")
    config = ProtocolConfig(**{**SETTING, "rounds": 2}, run_dir=str(tmp_path / "mem"))
    run_protocol(config)
    (tmp_path / "mem" / "summary.json").unlink()
    with pytest.raises(ResumeError, match="generated in memory"):
        resume_protocol(tmp_path / "mem")
    other = write_key_dir(tmp_path / "other", generate_keys(4, 8))
    config = ProtocolConfig(**{**SETTING, "rounds": 2}, keys=str(keys), run_dir=str(tmp_path / "f"))
    run_protocol(config)
    (tmp_path / "f" / "summary.json").unlink()
    log = tmp_path / "f" / TRANSCRIPT_NAME
    with open(log, "ab") as f:
        f.write(b"\x00" * 7)  # a torn tail, which a resume would truncate
    before = {p: p.read_bytes() for p in (tmp_path / "f").rglob("*") if p.is_file()}
    with pytest.raises(ResumeError, match="resume with the run's own keys"):
        resume_protocol(tmp_path / "f", keys=str(other))
    after = {p: p.read_bytes() for p in (tmp_path / "f").rglob("*") if p.is_file()}
    assert after == before  # refused before anything was written


def test_an_audit_may_rebuild_the_state_from_the_last_checkpoint_only(reference, tmp_path):
    """replay_from: what a restarting validator uses instead of recomputing from the genesis.

    An honest run: in the reference run (budget 0.5, random keys) the sampling may miss a
    wrong gradient, and then a full re-execution rightly fails."""
    import numpy as np

    from pot_jax.protocol.audit import Auditor

    _, keys, _ = reference
    honest = {**SETTING, "byzantine_fraction": 0.0}
    run_protocol(ProtocolConfig(**honest, keys=str(keys), run_dir=str(tmp_path / "run")))
    full = Auditor(tmp_path / "run", recompute=1.0)
    tail = Auditor(tmp_path / "run", recompute=1.0, replay_from=28)  # checkpoint after 27
    reports = full.run(), tail.run()
    assert all(r.ok for r in reports), [str(r) for r in reports]
    assert reports[0].reexecuted == 30 and reports[1].reexecuted == 2
    assert reports[1].rounds == 30  # every round is still verified
    a, b = full.state, tail.state
    assert a.round == b.round == 30 and a.params_hash == b.params_hash
    assert a.ledger == b.ledger and a.banned == b.banned
    for x, y in zip(
        jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
