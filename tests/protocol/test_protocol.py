"""The round end to end, the audit, its tamper matrix, and crashes mid-run.

Proofs: proofs/detection.md and proofs/ledger.md cite these tests.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from protocol_tiny import TINY

from pot_jax.config import ProtocolConfig
from pot_jax.protocol.audit import AuditUsageError, Status, audit
from pot_jax.protocol.runner import (
    TRANSCRIPT_NAME,
    decode_qc_record,
    encode_qc_record,
    run_protocol,
)
from pot_jax.protocol.transcript import RecordKind, TranscriptReader, TranscriptWriter


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("honest")
    config = ProtocolConfig(**TINY, byzantine_fraction=0.0, run_dir=str(run_dir))
    return run_protocol(config), run_dir


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("attacked")
    config = ProtocolConfig(**TINY, attack="alie", budget=0.5, run_dir=str(run_dir))
    return run_protocol(config), run_dir


def test_honest_run_matches_centralized_and_passes_audit(honest_run):
    summary, run_dir = honest_run
    assert summary.rounds_committed == 12
    assert summary.rejected_gradients == 0 and summary.fraud_proofs == 0
    # Mean of honest canonical gradients is the centralized step on the union batch.
    assert summary.pot_accuracy == pytest.approx(summary.centralized_accuracy, abs=0.02)
    assert summary.max_view >= 1  # validator 0, the first primary, is silent: a view change
    for recompute in ("none", "all"):
        report = audit(run_dir, recompute=recompute)
        assert report.ok, report.reason
    assert audit(run_dir, recompute="all").reexecuted == 12


def test_attacked_run_catches_every_checked_cheater_and_slashes_no_honest_worker(attacked_run):
    summary, run_dir = attacked_run
    assert summary.byzantine_workers  # 25% of 8 workers
    assert summary.wrong_gradients_checked > 0
    assert summary.wrong_gradients_caught == summary.wrong_gradients_checked
    assert summary.honest_workers_slashed == 0
    assert set(summary.cheaters_caught) <= set(summary.byzantine_workers)
    assert audit(run_dir).ok


def test_verification_compute_stays_near_the_budget(attacked_run):
    summary, _ = attacked_run
    # Budget 0.5 summed over 4 validators; only the 3 honest ones recompute.
    assert summary.verification_compute_ratio <= 0.5 + 0.01 + 0.25  # small-sample slack


def test_robust_only_accepts_wrong_gradients_that_the_auditor_then_catches(tmp_path):
    config = ProtocolConfig(
        **{**TINY, "rounds": 4},
        attack="sign_flip",
        verification="robust_only",
        aggregation="coordinate_median",
        run_dir=str(tmp_path),
    )
    summary = run_protocol(config)
    assert summary.fraud_proofs == 0 and summary.wrong_gradients_accepted_unchecked > 0
    assert audit(tmp_path).ok  # authentic transcript...
    report = audit(tmp_path, recompute="all")  # ...but not the honest training history
    assert not report.ok and report.first_bad_round == 0
    assert "accepted a wrong gradient" in report.reason


# -- tamper matrix: every change to a committed transcript is caught ---------------------


def rewrite(src, dst, edit):
    """Copy a run directory, passing its transcript records through ``edit``."""
    shutil.copytree(src, dst)
    (dst / TRANSCRIPT_NAME).unlink()
    records = list(TranscriptReader(src / TRANSCRIPT_NAME))
    with TranscriptWriter(dst / TRANSCRIPT_NAME) as writer:
        for i, rec in enumerate(records):
            for kind, payload in edit(i, rec, records):
                if kind == RecordKind.CHECKPOINT:
                    writer.append(kind, payload)  # a reference; the file is already there
                else:
                    writer.append(kind, payload)
    return dst


def nth(records, kind, k):
    return [i for i, r in enumerate(records) if r.kind == kind][k]


@pytest.mark.parametrize("where", [0.05, 0.3, 0.5, 0.7, 0.95])
def test_audit_fails_on_a_flipped_byte_anywhere(honest_run, tmp_path, where):
    _, run_dir = honest_run
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    path = dst / TRANSCRIPT_NAME
    data = bytearray(path.read_bytes())
    pos = int(where * (len(data) - 1))
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))
    report = audit(dst)
    assert not report.ok
    assert report.reason


def test_audit_fails_on_a_forged_qc(honest_run, tmp_path):
    _, run_dir = honest_run

    def edit(i, rec, records):
        if i == nth(records, RecordKind.QC, 5):
            # Replay round 4's QC onto round 5 (same validators, other record).
            view, _, qc = decode_qc_record(records[nth(records, RecordKind.QC, 4)].payload)
            _, seq, _ = decode_qc_record(rec.payload)
            return [(rec.kind, encode_qc_record(view, seq, qc))]
        return [(rec.kind, rec.payload)]

    report = audit(rewrite(run_dir, tmp_path / "run", edit))
    assert not report.ok and report.first_bad_round == 5 and "QC" in report.reason


def test_audit_fails_on_a_swapped_checkpoint(honest_run, tmp_path):
    _, run_dir = honest_run

    def edit(i, rec, records):
        if i == nth(records, RecordKind.CHECKPOINT, 2):  # after round 7: point at round 3's
            return [(rec.kind, records[nth(records, RecordKind.CHECKPOINT, 1)].payload)]
        return [(rec.kind, rec.payload)]

    report = audit(rewrite(run_dir, tmp_path / "run", edit))
    assert not report.ok and report.first_bad_round == 7 and "checkpoint" in report.reason


def test_audit_fails_on_a_swapped_checkpoint_file(honest_run, tmp_path):
    _, run_dir = honest_run
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    files = sorted((dst / (TRANSCRIPT_NAME + ".checkpoints")).glob("*.ckpt"))
    a, b = files[0].read_bytes(), files[1].read_bytes()
    files[0].write_bytes(b)
    files[1].write_bytes(a)
    report = audit(dst)
    assert not report.ok and "checkpoint" in report.reason


@pytest.mark.parametrize("kind", [RecordKind.ROUND, RecordKind.QC, RecordKind.LEDGER])
def test_audit_fails_on_a_removed_record(honest_run, tmp_path, kind):
    _, run_dir = honest_run

    def edit(i, rec, records):
        return [] if i == nth(records, kind, 3) else [(rec.kind, rec.payload)]

    report = audit(rewrite(run_dir, tmp_path / "run", edit))
    assert not report.ok and report.first_bad_round is not None and report.first_bad_round <= 3


def test_audit_fails_on_a_changed_ledger_entry(honest_run, tmp_path):
    from pot_jax.protocol.ledger import decode_entries, encode_entries

    _, run_dir = honest_run

    def edit(i, rec, records):
        if i == nth(records, RecordKind.LEDGER, 6):
            entries = list(decode_entries(rec.payload))
            entries[1] = entries[1].__class__(
                **{**entries[1].__dict__, "delta": entries[1].delta + 1}
            )
            return [(rec.kind, encode_entries(entries))]
        return [(rec.kind, rec.payload)]

    report = audit(rewrite(run_dir, tmp_path / "run", edit))
    assert not report.ok and report.first_bad_round == 6 and "ledger" in report.reason


# -- crashes: SIGKILL mid-run never loses a committed round, never fools the audit ------

CHILD = textwrap.dedent(
    """
    import sys
    from pot_jax.config import ProtocolConfig
    from pot_jax.protocol.runner import run_protocol
    config = ProtocolConfig(
        **{{**{tiny}, "rounds": 400, "byzantine_fraction": 0.0}}, run_dir=sys.argv[1]
    )
    run_protocol(config, on_commit=lambda r, row: print(r, flush=True))
    """
)


def test_sigkill_mid_run_keeps_every_committed_round_and_audit_verifies_the_prefix(tmp_path):
    rng = np.random.default_rng(0)
    survived = 0
    for k in range(3):
        run_dir = tmp_path / f"run{k}"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(tiny=repr(TINY)), str(run_dir)],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
        )
        first = child.stdout.readline()  # wait for the first committed round
        assert first.strip() == "0", first
        time.sleep(float(rng.uniform(0.05, 1.5)))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        committed = [int(x) for x in [first, *rest.split()] if x.strip()]
        report = audit(run_dir, recompute="all")
        # Everything before the kill verifies; without a closing record it is not "passed".
        assert report.status is Status.UNFINISHED and report.exit_code == 3, str(report)
        assert report.reexecuted == report.rounds
        assert report.rounds >= len(committed)  # nothing announced as committed was lost
        survived += 1
    assert survived == 3


def test_summary_json_records_seed_and_versions(honest_run):
    _, run_dir = honest_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["genesis"]["config"]["seed"] == 0
    assert config["metadata"]["jax_version"] and config["metadata"]["device"]
    assert json.loads((run_dir / "summary.json").read_text())["seed"] == 0


def test_measured_detection_matches_the_closed_form():
    """Real BLS-VRF sampling, 3 honest validators of 4, a worker cheating half the time."""
    from pot_jax.bench.detection import measure_detection

    result = measure_detection(cheat_rate=0.5, rounds=20, seeds=200)
    assert result["closed_form"] == pytest.approx(1 - (1 - 0.5 * (1 - 0.975**3)) ** 20)
    assert abs(result["caught_fraction"] - result["closed_form"]) < 4 * result["closed_form_stderr"]


def test_a_custom_scheme_from_the_readme_runs_in_the_protocol(tmp_path):
    """The worked example in pot_jax/verification/scheme.py plugs into a full run."""
    import pot_jax.verification.scheme as scheme_module

    source = scheme_module.__doc__.split("::", 1)[1].split("(A data-driven", 1)[0]
    namespace = {}
    exec(textwrap.dedent(source).replace('\\"', '"'), namespace)
    scheme = namespace["outlier_check"](fraction=0.25)
    config = ProtocolConfig(**{**TINY, "rounds": 3}, attack="scaled", run_dir=str(tmp_path))
    summary = run_protocol(config, scheme=scheme)
    assert summary.cheaters_caught == summary.byzantine_workers  # scaled gradients stand out
    assert summary.honest_workers_slashed == 0
    with pytest.raises(AuditUsageError, match="pass the scheme object"):
        audit(tmp_path)  # selections and proofs cannot be judged without the scheme
    report = audit(tmp_path, scheme=scheme, recompute="all")
    assert report.ok and report.reexecuted == 3, str(report)


def test_tolerance_mode_calibrates_rejects_no_honest_worker_and_catches_cheaters(tmp_path):
    """Honest rows come from the vmapped program (another "platform"): bitwise would reject them."""
    config = ProtocolConfig(
        **{**TINY, "rounds": 6},
        mode="tolerance",
        attack="scaled",
        verification="full_recompute",
        run_dir=str(tmp_path),
    )
    summary = run_protocol(config)
    header = json.loads((tmp_path / "config.json").read_text())["genesis"]
    assert header["calibration"]["false_rejection_rate"] == 0.0
    assert 0 < header["tolerance_threshold"] < 1e-3
    assert summary.honest_workers_slashed == 0
    assert summary.cheaters_caught == summary.byzantine_workers
    assert audit(tmp_path, recompute="all").ok


@pytest.mark.parametrize(
    "attack",
    [
        "sign_flip", "scaled", "gaussian", "alie", "ipm", "label_flip", "lazy",
        "free_rider", "garbage", "nan_inf", "wrong_shape", "cheat_sometimes",
    ],
)  # fmt: skip
def test_every_attack_is_rejected_or_neutralised_without_crashing_a_validator(tmp_path, attack):
    config = ProtocolConfig(
        **{**TINY, "rounds": 7},
        attack=attack,
        verification="full_recompute",
        run_dir=str(tmp_path),
    )
    summary = run_protocol(config)
    assert summary.rounds_committed == 7
    assert summary.honest_workers_slashed == 0
    assert summary.wrong_gradients_accepted_unchecked == 0  # everything is recomputed
    report = audit(tmp_path, recompute="all")
    assert report.ok, report.reason
