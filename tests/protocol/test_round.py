"""The pure round transition on hand-made inputs: every rule that makes inputs invalid."""

import dataclasses
import hashlib

import pytest
from protocol_tiny import TINY

from pot_jax.config import ProtocolConfig
from pot_jax.consensus.evidence import EquivocationEvidence
from pot_jax.protocol.messages import RoundInputs
from pot_jax.protocol.roles import ReportDue
from pot_jax.protocol.round import InputsError, judge, transition
from pot_jax.protocol.runner import ProtocolRun


@pytest.fixture(scope="module")
def round0(tmp_path_factory):
    """Round 0 of a run with no Byzantine validator: its rules, state, reports and gradients."""
    config = ProtocolConfig(
        **TINY,
        keys="derived",
        byzantine_validators="",
        attack="scaled",
        verification="full_recompute",
        run_dir=str(tmp_path_factory.mktemp("r") / "run"),
    )
    run = ProtocolRun(config)
    for v in run.validators:
        v.start(run.state)
    submissions, _, _ = run._submissions(0, run.batches.of_round(0))
    for v in run.validators:
        for sub in submissions.values():
            v.step(sub)
    messages = [m for v in run.validators for m in v.step(ReportDue())]
    inputs = RoundInputs(tuple(m.report for m in messages))
    proofs = {hashlib.sha256(p).digest(): p for m in messages for p in m.proofs}
    gradients = {w: s.gradient for w, s in submissions.items()}
    return run, inputs, proofs, gradients


def test_honest_inputs_accept_the_honest_workers_and_prove_the_cheaters(round0):
    run, inputs, proofs, gradients = round0
    out = transition(run.rules, run.state, inputs, proofs, gradients)
    byzantine = set(run.byzantine_workers)
    assert {a.worker for a in out.record.accepted} == set(range(8)) - byzantine
    assert set(out.judgement.proven) == byzantine and not out.judgement.slashed
    assert len(out.judgement.rewards.fraud_proofs) == 4 * len(byzantine)  # all four proved


def _invalid(round0, inputs, match, state=None):
    run, _, proofs, _ = round0
    with pytest.raises(InputsError, match=match):
        judge(run.rules, state or run.state, inputs, proofs)


def test_fewer_reports_than_a_quorum_are_invalid(round0):
    _invalid(round0, RoundInputs(round0[1].reports[:2]), "a quorum is 3")


def test_two_reports_of_one_validator_are_invalid(round0):
    reports = round0[1].reports
    _invalid(round0, RoundInputs((reports[0], reports[0], *reports[1:])), "one per validator")


def test_a_report_for_another_round_or_model_is_invalid(round0):
    reports = list(round0[1].reports)
    reports[1] = dataclasses.replace(reports[1], round=1)
    _invalid(round0, RoundInputs(tuple(reports)), "another round or model")


def test_a_report_not_signed_by_its_validator_is_invalid(round0):
    reports = list(round0[1].reports)
    reports[2] = dataclasses.replace(reports[2], signature=reports[1].signature)
    _invalid(round0, RoundInputs(tuple(reports)), "not signed by its report key")


def test_a_cited_proof_the_proposal_does_not_carry_is_invalid(round0):
    run, inputs, _, _ = round0
    with pytest.raises(InputsError, match="does not carry"):
        judge(run.rules, run.state, inputs, {})


def test_false_or_already_punished_equivocation_evidence_is_invalid(round0):
    run, inputs, proofs, _ = round0
    fake = EquivocationEvidence(1, "prepare", 0, 1, b"a" * 32, b"x" * 96, b"b" * 32, b"y" * 96)
    _invalid(round0, RoundInputs(inputs.reports, (fake,)), "is false")
    punished = dataclasses.replace(run.state, punished=frozenset({(1, "prepare", 0, 1)}))
    _invalid(round0, RoundInputs(inputs.reports, (fake,)), "already punished", state=punished)


def test_an_accepted_gradient_that_is_not_the_committed_one_is_refused(round0):
    run, inputs, proofs, gradients = round0
    honest = next(w for w in range(8) if w not in run.byzantine_workers)
    swapped = {**gradients, honest: gradients[honest] * 2}
    with pytest.raises(InputsError, match="does not hash to the accepted commitment"):
        transition(run.rules, run.state, inputs, proofs, swapped)


def test_a_submission_survives_the_wire_and_garbage_does_not_decode(round0):
    from pot_jax.protocol.messages import MessageError, decode_submission, encode_submission
    from pot_jax.verification import cheap_checks

    run, *_ = round0
    submissions, _, _ = run._submissions(0, run.batches.of_round(0))
    ctx = run.rules.context(0, run.state.params)
    for w, sub in submissions.items():
        back = decode_submission(encode_submission(sub))
        assert back.gradient.tobytes() == sub.gradient.tobytes() and back.worker == w
        assert (cheap_checks(ctx, back) is None) == (cheap_checks(ctx, sub) is None)
    data = encode_submission(submissions[0])
    for bad in (data[:-1], data + b"\x00", b"PJSB\x02" + data[5:], data[:9]):
        with pytest.raises(MessageError):
            decode_submission(bad)
    with pytest.raises(MessageError, match="1-D float32"):
        encode_submission(dataclasses.replace(submissions[0], gradient="not an array"))
