"""Byzantine validators and aggregation servers in protocol runs (issue 13, parts 3-5).

Each test runs the protocol with one Byzantine validator doing one thing,
and shows it is detected and slashed (from messages it signed, re-derived by
the audit), or refused by the honest validators, and that safety holds: the
transcript passes the audit, every committed record re-derives from its
inputs, and no honest worker is slashed.
"""

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest
from protocol_tiny import TINY

import pot_jax.protocol.round as round_module
from pot_jax.config import ProtocolConfig
from pot_jax.consensus.messages import value_digest
from pot_jax.crypto.quorum import aggregate_votes, sign_vote, vote_message
from pot_jax.protocol.audit import Status, audit
from pot_jax.protocol.keys import derived_keys
from pot_jax.protocol.messages import MessageError, Report, RoundInputs, encode_proposal
from pot_jax.protocol.records import RoundRecord
from pot_jax.protocol.runner import TRANSCRIPT_NAME, ProtocolRun, run_protocol
from pot_jax.protocol.transcript import (
    RecordKind,
    TranscriptReader,
    TranscriptWriter,
    decode_qc_record,
    encode_qc_record,
)
from pot_jax.verification.checks import Category


def _run(tmp_path, name="run", **overrides):
    fields = {
        **TINY,
        "rounds": 4,
        "keys": "derived",
        "byzantine_validators": "1",
        "attack": "scaled",
        "budget": 0.5,
        **overrides,
    }
    if fields.get("verification") == "full_recompute":
        del fields["budget"]
    run_dir = tmp_path / name
    summary = run_protocol(ProtocolConfig(**fields, run_dir=str(run_dir)))
    return summary, run_dir


def _records(run_dir, kind):
    return [r.payload for r in TranscriptReader(run_dir / TRANSCRIPT_NAME) if r.kind == kind]


def _safe(summary, run_dir):
    """Safety: all rounds committed, every record re-derives (audit), no honest worker slashed.

    Under ``full_recompute`` the committee accepts no wrong gradient, so the audit also
    re-executes every round; under spot checks an unsampled cheater is accepted by design.
    """
    full = json.loads((run_dir / "config.json").read_text())["genesis"]["config"]
    recompute = "all" if full["verification"] == "full_recompute" else "none"
    report = audit(run_dir, recompute=recompute)
    assert report.ok, str(report)
    assert summary.rounds_committed == len(_records(run_dir, RecordKind.ROUND))
    assert summary.honest_workers_slashed == 0
    return report


def _faults(summary, validator=1):
    return set(summary.slashed_validators.get(str(validator), []))


@pytest.mark.parametrize(
    "strategy,fault",
    [
        ("skip_sample", "skipped_sample"),
        ("swap_sample", "skipped_sample"),
        ("own_choice", "changed_sample"),
    ],
)
def test_a_validator_that_skips_or_changes_its_sample_is_slashed(tmp_path, strategy, fault):
    summary, run_dir = _run(tmp_path, validator_strategy=strategy)
    _safe(summary, run_dir)
    assert fault in _faults(summary)
    assert set(summary.slashed_validators) == {"1"}  # nobody else
    slashed = [RoundRecord.decode(p).slashed for p in _records(run_dir, RecordKind.ROUND)]
    assert any(s.validator == 1 and s.fault == fault for rnd in slashed for s in rnd)


def test_the_sample_check_is_what_catches_a_skipping_validator(tmp_path, monkeypatch):
    """Canary: without the sample check in the round transition nobody is slashed."""
    monkeypatch.setattr(round_module, "_sample_faults", lambda *a, **k: [])
    summary, _ = _run(tmp_path, validator_strategy="skip_sample")
    assert summary.slashed_validators == {}


def test_a_framing_validator_is_slashed_and_its_target_stays_accepted(tmp_path):
    honest = 0  # workers 3 and 5 are the Byzantine ones in TINY at seed 0
    summary, run_dir = _run(tmp_path, validator_strategy=f"frame:worker={honest}")
    assert honest not in summary.byzantine_workers
    _safe(summary, run_dir)
    assert "false_proof" in _faults(summary)
    assert summary.false_fraud_proofs >= 1
    assert honest not in summary.cheaters_caught
    for payload in _records(run_dir, RecordKind.ROUND):
        assert honest in {a.worker for a in RoundRecord.decode(payload).accepted}


def test_a_validator_vouching_for_gradients_it_did_not_recompute_is_slashed(tmp_path):
    summary, run_dir = _run(tmp_path, validator_strategy="vouch", verification="full_recompute")
    _safe(summary, run_dir)
    assert "vouched_wrong" in _faults(summary)
    assert summary.cheaters_caught == summary.byzantine_workers  # the honest ones proved them


def test_an_equivocating_validator_is_slashed_from_the_replicas_evidence(tmp_path):
    summary, run_dir = _run(tmp_path, validator_strategy="double_voting", rounds=6)
    _safe(summary, run_dir)
    assert "equivocation" in _faults(summary)
    inputs = [RoundInputs.decode(p) for p in _records(run_dir, RecordKind.INPUTS)]
    keys = [(ev.signer, ev.kind, ev.view, ev.seq) for i in inputs for ev in i.evidence]
    assert keys and len(keys) == len(set(keys))  # each equivocation is punished once


@pytest.mark.parametrize(
    "strategy", ["wrong_aggregate", "drop_accepted", "include_rejected", "censor:worker=0"]
)
def test_a_faulty_primary_server_is_refused_and_the_next_primary_commits(tmp_path, strategy):
    """Validator 0 is the primary of view 0; its server proposes a record that does not derive."""
    summary, run_dir = _run(
        tmp_path,
        byzantine_validators="0",
        validator_strategy=strategy,
        verification="full_recompute",
    )
    _safe(summary, run_dir)
    assert summary.max_view >= 1  # a view change replaced the faulty primary
    first = RoundRecord.decode(_records(run_dir, RecordKind.ROUND)[0])
    accepted = {a.worker for a in first.accepted}
    assert 0 in accepted  # the censored (and the dropped) honest worker is in
    assert not accepted & set(summary.byzantine_workers)  # the rejected ones are out


def test_an_honest_server_beside_a_byzantine_primary_needs_no_view_change(tmp_path):
    """Control for the test above: the view change comes from the faulty proposal."""
    summary, run_dir = _run(tmp_path, byzantine_validators="0", validator_strategy="vote_invalid")
    _safe(summary, run_dir)
    assert summary.max_view == 0


def test_a_validator_voting_for_anything_cannot_commit_a_wrong_record(tmp_path):
    summary, run_dir = _run(
        tmp_path, byzantine_validators="0", validator_strategy="wrong_aggregate+vote_invalid"
    )
    _safe(summary, run_dir)
    assert summary.max_view >= 1


def _rewrite(run_dir, dst, edit):
    """A copy of the run whose records go through ``edit(kind, payload) -> payload``."""
    shutil.copytree(run_dir, dst)
    records = list(TranscriptReader(run_dir / TRANSCRIPT_NAME))
    (dst / TRANSCRIPT_NAME).unlink()
    with TranscriptWriter(dst / TRANSCRIPT_NAME) as writer:
        for rec in records:
            writer.append(rec.kind, edit(rec.kind, rec.payload))
    return dst


def _resign_qc(payload, record_bytes, inputs_bytes):
    """The commit QC re-signed by the whole (derived-key) committee over a new value."""
    keys = derived_keys(4, 8, chain_id=b"pot-jax/run", seed=0)
    view, seq, _ = decode_qc_record(payload)
    message = vote_message(
        b"pot-jax/run",
        "commit",
        view,
        seq,
        value_digest(encode_proposal(record_bytes, inputs_bytes)),
    )
    votes = {i: sign_vote(sk, message) for i, sk in enumerate(keys.validator_secret_keys)}
    return encode_qc_record(view, seq, aggregate_votes(keys.validator_set, votes))


def test_a_record_that_leaves_out_a_slashing_fails_the_audit(tmp_path):
    """The whole committee re-signs round 0 without the skipping validator's slashing."""
    summary, run_dir = _run(tmp_path, validator_strategy="skip_sample")
    rounds = [RoundRecord.decode(p) for p in _records(run_dir, RecordKind.ROUND)]
    inputs = _records(run_dir, RecordKind.INPUTS)
    r = next(i for i, rec in enumerate(rounds) if rec.slashed)
    edited = dataclasses.replace(rounds[r], slashed=()).encode()
    seen = {"round": -1}

    def edit(kind, payload):
        if kind == RecordKind.ROUND:
            seen["round"] += 1
            return edited if seen["round"] == r else payload
        if kind == RecordKind.QC and seen["round"] == r:
            return _resign_qc(payload, edited, inputs[r])
        return payload

    report = audit(_rewrite(run_dir, tmp_path / "edited", edit))
    assert report.status is Status.FAILED and report.first_bad_round == r
    assert "does not re-derive" in report.reason and "slashed" in report.reason


def test_a_report_edited_after_signing_fails_the_audit(tmp_path):
    """A report whose sample is changed afterwards, with the record and QC re-signed to match."""
    _, run_dir = _run(tmp_path, byzantine_validators="", rounds=2)
    record = RoundRecord.decode(_records(run_dir, RecordKind.ROUND)[0])
    inputs = RoundInputs.decode(_records(run_dir, RecordKind.INPUTS)[0])
    rep = dataclasses.replace(inputs.reports[0], selection=())  # "I was asked to check nobody"
    new_inputs = RoundInputs((rep, *inputs.reports[1:]), inputs.evidence).encode()
    new_record = dataclasses.replace(
        record, inputs_digest=hashlib.sha256(new_inputs).digest()
    ).encode()
    seen = {"round": -1}

    def edit(kind, payload):
        if kind == RecordKind.ROUND:
            seen["round"] += 1
        if seen["round"] != 0:
            return payload
        if kind == RecordKind.ROUND:
            return new_record
        if kind == RecordKind.QC:
            return _resign_qc(payload, new_record, new_inputs)
        if kind == RecordKind.INPUTS:
            return new_inputs
        return payload

    report = audit(_rewrite(run_dir, tmp_path / "edited", edit))
    assert report.status is Status.FAILED and report.first_bad_round == 0
    assert "not signed by its report key" in report.reason


def test_rejections_carry_a_category_shared_by_record_summary_and_metrics(tmp_path):
    summary, run_dir = _run(tmp_path, attack="nan_inf", byzantine_validators="")
    _safe(summary, run_dir)
    categories = {c.value for c in Category}
    assert summary.rejections_by_category.get("non_finite", 0) >= 1
    assert set(summary.rejections_by_category) <= categories
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert (
        sum(r["rejected_by_category"].get("non_finite", 0) for r in rows)
        == (summary.rejections_by_category["non_finite"])
    )
    for payload in _records(run_dir, RecordKind.ROUND):
        for x in RoundRecord.decode(payload).rejected:
            assert x.category in categories


def test_an_attack_that_needs_only_its_own_gradient_gets_no_other_rows(tmp_path):
    own, _ = _run(tmp_path, "own", attack="sign_flip", byzantine_validators="", rounds=1)
    colluding, _ = _run(tmp_path, "alie", attack="alie", byzantine_validators="", rounds=1)
    genesis = [
        json.loads((tmp_path / name / "config.json").read_text())["genesis"]
        for name in ("own", "alie")
    ]
    assert genesis[0]["collusion"] == "none"
    assert genesis[1]["collusion"] == "honest_gradients"


def _round0_byzantine_rows(tmp_path, name, **fields):
    """What the run's Byzantine nodes send in round 0, and the attack label its genesis signs."""
    config = ProtocolConfig(
        **{**TINY, "rounds": 1, "keys": "derived", "byzantine_validators": "", **fields},
        run_dir=str(tmp_path / name),
    )
    run = ProtocolRun(config)
    submissions, wrong, _ = run._submissions(0, run.batches.of_round(0))
    assert wrong == set(run.byzantine_workers) and wrong
    rows = {w: np.asarray(submissions[w].gradient) for w in sorted(wrong)}
    return rows, run.header()["genesis"]["attack"]


def test_a_searching_attack_targets_the_runs_aggregation_unless_given_a_rule(tmp_path):
    """optimal_alie with no rule= attacks --aggregation; the genesis signs which rule it searched."""
    krum, krum_label = _round0_byzantine_rows(
        tmp_path, "krum", attack="optimal_alie", aggregation="nnm+krum:f=2"
    )
    mean, mean_label = _round0_byzantine_rows(
        tmp_path, "mean", attack="optimal_alie", aggregation="mean"
    )
    named, named_label = _round0_byzantine_rows(
        tmp_path, "named", attack="optimal_alie:rule=nnm+krum:f=2", aggregation="mean"
    )
    assert krum_label.startswith("optimal_alie(rule=nnm+krum:f=2,")
    assert mean_label.startswith("optimal_alie(rule=mean,")
    assert named_label == krum_label
    for w in krum:
        assert not np.array_equal(krum[w], mean[w])
        assert np.array_equal(krum[w], named[w])


def test_report_decoding_refuses_non_canonical_bytes(tmp_path):
    _, run_dir = _run(tmp_path, byzantine_validators="", rounds=1)
    data = RoundInputs.decode(_records(run_dir, RecordKind.INPUTS)[0]).reports[0].encode()
    assert Report.decode(data).encode() == data
    with pytest.raises(MessageError):
        Report.decode(data + b"\x00")
    with pytest.raises(MessageError):
        Report.decode(data[:-5])


def test_crashed_and_late_training_nodes_are_rejected_as_absent_never_slashed(tmp_path):
    """Churn and lateness are protocol events: the submission is not there at the deadline."""
    summary, run_dir = _run(
        tmp_path, byzantine_validators="", worker_churn=0.3, submission_deadline=1.0, rounds=6
    )
    _safe(summary, run_dir)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["workers_down"] for r in rows) > 0
    assert summary.rejections_by_category.get("no_submission", 0) > sum(
        r["workers_down"] for r in rows
    )  # the down ones, and some late ones
    assert set(summary.cheaters_caught) <= set(summary.byzantine_workers)
    assert summary.slashed_validators == {}


def test_a_round_where_nothing_arrives_in_time_commits_and_keeps_the_model(tmp_path):
    summary, run_dir = _run(tmp_path, byzantine_validators="", submission_deadline=0.01, rounds=2)
    _safe(summary, run_dir)
    for payload in _records(run_dir, RecordKind.ROUND):
        record = RoundRecord.decode(payload)
        assert not record.accepted and record.new_params_hash == record.params_hash
        assert {x.category for x in record.rejected} == {"no_submission"}


@pytest.mark.parametrize(
    "strategy", ["garbage", "view_change_spam", "replay_old_qcs+forged_bitmaps"]
)
def test_a_validator_whose_strategy_acts_unprompted_does_act_and_the_run_stays_safe(
    tmp_path, strategy
):
    """Spam, replayed and forged certificates reach the honest replicas, which drop them.

    Before, the protocol runner never let a Byzantine validator act: these strategies
    ran as an honest replica and the honest replicas dropped nothing.
    """
    fields = {**TINY, "rounds": 4, "keys": "derived", "byzantine_validators": "1"}
    config = ProtocolConfig(**fields, validator_strategy=strategy, run_dir=str(tmp_path / "run"))
    run = ProtocolRun(config)
    summary = run.run()
    _safe(summary, tmp_path / "run")
    honest = [x for x in run.cluster.nodes if x.id != 1]
    assert all(len(x.decisions) >= 4 for x in honest)
    # An honest run drops only late messages and the app-rejected proposal of a past round.
    dropped = run.cluster.stats.replica_dropped
    unusual = {k: v for k, v in dropped.items() if k not in ("late", "app-rejected")}
    assert unusual, f"{strategy}: the honest replicas dropped only {dict(dropped)}"
