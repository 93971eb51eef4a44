"""Attacks on a run and its transcript, tried as an adversary would (issue 11, parts 1-2).

Each test is an attack that passed ``pot-jax audit`` (or leaked a secret)
before secret keys, the signed genesis and the closing record existed.
proofs/audit.md states what a passed audit guarantees and cites these tests.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import time

import pytest
from protocol_tiny import TINY

from pot_jax.config import ProtocolConfig
from pot_jax.consensus.messages import value_digest
from pot_jax.crypto.quorum import QuorumCertificate, aggregate_votes, sign_vote, vote_message
from pot_jax.crypto.worker_signatures import worker_signature_scheme
from pot_jax.protocol.audit import Status, audit
from pot_jax.protocol.genesis import (
    canonical_json,
    decode_closing_record,
    encode_closing_record,
    genesis_digest,
    genesis_vote_message,
)
from pot_jax.protocol.keys import (
    KeyFileError,
    derived_keys,
    generate_keys,
    load_key_dir,
    write_key_dir,
)
from pot_jax.protocol.ledger import (
    Contribution,
    FraudProofRef,
    Ledger,
    LedgerConfig,
    RoundRewards,
    ValidatorFault,
    encode_entries,
    entries_digest,
)
from pot_jax.protocol.messages import RoundInputs, encode_proposal
from pot_jax.protocol.records import RoundRecord
from pot_jax.protocol.round import cited_proofs
from pot_jax.protocol.runner import (
    TRANSCRIPT_NAME,
    decode_fraud_record,
    decode_qc_record,
    encode_fraud_record,
    encode_qc_record,
    run_protocol,
)
from pot_jax.protocol.transcript import RecordKind, TranscriptReader, TranscriptWriter
from pot_jax.runinfo import RunDirectoryError
from pot_jax.verification.fraud_proof import FraudProof


@pytest.fixture(scope="module")
def keys():
    return generate_keys(4, 8)


@pytest.fixture(scope="module")
def run(tmp_path_factory, keys):
    """An attacked run (two ALIE workers, budget 0.5: fraud proofs) with keys the test holds."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    config = ProtocolConfig(**TINY, attack="alie", budget=0.5, run_dir=str(run_dir))
    summary = run_protocol(config, keys=keys)
    assert summary.fraud_proofs > 0
    return summary, run_dir


# -- a forger that holds a quorum of validator keys and re-signs what it edits -----------


def _sign_all(keys, message):
    sks = keys.validator_secret_keys
    return aggregate_votes(
        keys.validator_set, {i: sign_vote(sk, message) for i, sk in enumerate(sks)}
    )


def _resign_inputs(inputs, keys, genesis, config):
    """The round's reports for ``genesis``, re-signed with ``keys``' report keys.

    Each report's VRF sample is redrawn with ``keys`` (its BLS key is the VRF
    key), and the forger claims to have recomputed its new sample.
    """
    from types import SimpleNamespace

    from pot_jax.verification.schemes import spot_check

    report_keys = keys.validator_report_keys()
    scheme = worker_signature_scheme("ed25519")
    sampler = spot_check(config["budget"])
    proven = {c.worker: c for rep in inputs.reports for c in rep.checks if c.proof}
    reports = []
    for rep in inputs.reports:
        ctx = SimpleNamespace(chain_id=rep.chain_id, round=rep.round, n_workers=len(rep.checks))
        sk = keys.validator_secret_keys[rep.validator]
        sel = sampler.select(ctx, rep.validator, keys.validator_set.n, sk)
        checks = tuple(
            # A newly sampled worker that another validator proved wrong: the forger
            # "recomputes" it and cites that proof; any other sampled one it vouches for.
            proven[c.worker]
            if c.worker in sel.workers and c.worker in proven
            else dataclasses.replace(
                c, recomputed=bool(c.proof) or (c.worker in sel.workers and c.accepted)
            )
            for c in rep.checks
        )
        unsigned = dataclasses.replace(
            rep,
            genesis=genesis,
            selection=sel.workers,
            vrf_output=sel.vrf_output,
            vrf_proof=sel.vrf_proof,
            checks=checks,
            signature=b"",
        )
        report_sk = report_keys[rep.validator][0]
        signed = dataclasses.replace(
            unsigned, signature=scheme.sign(report_sk, unsigned.signing_message())
        )
        reports.append(signed)
    return RoundInputs(tuple(reports), inputs.evidence)


def reforge(src, dst, keys, *, genesis_edit=None, record_edit=None, drop_side_files=True):
    """Copy a run, edit its genesis and records, and re-sign everything with ``keys``.

    The reports (with ``keys``' report keys), the inputs digests, the ledger
    entries, the records' ledger digests, every commit QC, the genesis QC and
    the closing record are re-derived, so only a check that compares the edit
    with the signed rules (or with a pin) can catch it.
    """
    shutil.copytree(src, dst)
    (dst / TRANSCRIPT_NAME).unlink()
    records = list(TranscriptReader(src / TRANSCRIPT_NAME))
    header = json.loads(records[0].payload)
    genesis = header["genesis"]
    config = dict(genesis["config"])  # the forger replays the ledger it really ran
    genesis["validators"] = [
        [pk.hex(), pop.hex()]
        for pk, pop in zip(
            keys.validator_set.public_keys, keys.validator_set.proofs_of_possession, strict=True
        )
    ]
    genesis["validator_report_keys"] = [pk.hex() for _, pk in keys.validator_report_keys()]
    if genesis_edit:
        genesis_edit(genesis)
    digest = genesis_digest(genesis)
    chain_id = bytes.fromhex(genesis["chain_id"])
    header["genesis_digest"] = digest.hex()
    header["genesis_qc"] = _sign_all(keys, genesis_vote_message(chain_id, digest)).encode().hex()
    ledger = Ledger.genesis(
        LedgerConfig(**genesis["ledger_config"]),
        n_workers=config["workers"],
        n_validators=config["validators"],
    )
    signers, final_hash, rounds, held = (), None, 0, []
    with TranscriptWriter(dst / TRANSCRIPT_NAME) as writer:
        writer.append(RecordKind.HEADER, canonical_json(header))
        for rec in records[1:]:
            if rec.kind == RecordKind.ROUND:
                pending = RoundRecord.decode(rec.payload)
                held = []
            elif rec.kind == RecordKind.QC:
                view, seq, _ = decode_qc_record(rec.payload)
            elif rec.kind == RecordKind.INPUTS:
                inputs = _resign_inputs(RoundInputs.decode(rec.payload), keys, digest, config)
            elif rec.kind == RecordKind.FRAUD_PROOF or (
                rec.kind == RecordKind.CHECKPOINT and records[rec.seq - 1].kind == RecordKind.INPUTS
            ):
                held.append((rec.kind, rec.payload))  # theta_r and the proofs, kept in order
            elif rec.kind == RecordKind.LEDGER:
                by_digest = {}
                for kind, payload in held:
                    if kind == RecordKind.FRAUD_PROOF:
                        proof_bytes = decode_fraud_record(payload)[1]
                        by_digest[hashlib.sha256(proof_bytes).digest()] = proof_bytes
                held = [x for x in held if x[0] != RecordKind.FRAUD_PROOF]
                provers = {}
                for v, d in cited_proofs(inputs):  # the re-drawn samples cite anew
                    held.append((RecordKind.FRAUD_PROOF, encode_fraud_record(v, by_digest[d])))
                    worker = FraudProof.decode(by_digest[d]).worker
                    provers.setdefault(worker, set()).add(v)
                record = dataclasses.replace(pending, genesis=digest, inputs_digest=inputs.digest())
                if record_edit:
                    record = record_edit(record)
                r = record.round
                ledger = ledger.apply_round(
                    RoundRewards(
                        r,
                        tuple(Contribution(a.worker, a.examples) for a in record.accepted),
                        signers,
                        tuple(
                            FraudProofRef(v, w) for w in sorted(provers) for v in sorted(provers[w])
                        ),
                        tuple(ValidatorFault(x.validator, x.fault) for x in record.slashed),
                    )
                )
                entries = ledger.round_entries(r)
                record = dataclasses.replace(record, ledger_digest=entries_digest(entries))
                value = encode_proposal(record.encode(), inputs.encode())
                qc = _sign_all(
                    keys, vote_message(chain_id, "commit", view, seq, value_digest(value))
                )
                signers = qc.signer_indices()
                writer.append(RecordKind.ROUND, record.encode())
                writer.append(RecordKind.QC, encode_qc_record(view, seq, qc))
                writer.append(RecordKind.INPUTS, inputs.encode())
                for kind, payload in held:
                    writer.append(kind, payload)
                writer.append(RecordKind.LEDGER, encode_entries(entries))
                final_hash, rounds = record.new_params_hash, r + 1
            elif rec.kind == RecordKind.CHECKPOINT:
                writer.append(rec.kind, rec.payload)
            elif rec.kind == RecordKind.CLOSING:
                closing, _ = decode_closing_record(rec.payload)
                closing = closing.__class__(
                    chain_id=chain_id,
                    genesis=digest,
                    rounds=rounds,
                    final_params_hash=final_hash,
                    ledger_digest=ledger.ledger_digest(),
                )
                qc = _sign_all(keys, closing.vote_message())
                writer.append(RecordKind.CLOSING, encode_closing_record(closing, qc))
    (dst / "config.json").write_text(json.dumps(header))
    if drop_side_files:
        (dst / "summary.json").unlink()
        (dst / "metrics.jsonl").unlink()
    return dst


def test_the_forger_itself_produces_a_passing_transcript(run, keys, tmp_path):
    """Canary: a re-signed copy without edits passes, so the forgeries below fail for their edit."""
    _, run_dir = run
    assert audit(reforge(run_dir, tmp_path / "copy", keys)).ok


# -- 1. secret keys ------------------------------------------------------------------------


def _secrets_of(keys):
    out = []
    for sk in keys.validator_secret_keys:
        raw = sk.to_bytes(32, "big")
        out += [raw, raw.hex().encode(), str(sk).encode()]
    for seed in keys.worker_secret_seeds:
        out += [seed, seed.hex().encode()]
    return out


def test_no_secret_key_appears_in_any_file_of_the_run_directory_or_in_the_output(
    run, keys, capfd, caplog
):
    _, run_dir = run
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) >= 5
    blobs = [p.read_bytes() for p in files]
    out, err = capfd.readouterr()
    blobs += [out.encode(), err.encode(), caplog.text.encode(), repr(keys).encode()]
    for secret in _secrets_of(keys):
        for blob in blobs:
            assert secret not in blob


def test_default_keys_come_from_the_os_and_differ_between_runs(tmp_path):
    a = ProtocolConfig(**{**TINY, "rounds": 1}, byzantine_fraction=0.0, run_dir=str(tmp_path / "a"))
    b = ProtocolConfig(**{**TINY, "rounds": 1}, byzantine_fraction=0.0, run_dir=str(tmp_path / "b"))
    ga = run_protocol(a).genesis
    gb = run_protocol(b).genesis
    assert ga != gb
    ha = json.loads((tmp_path / "a" / "config.json").read_text())["genesis"]
    hb = json.loads((tmp_path / "b" / "config.json").read_text())["genesis"]
    assert ha["key_source"] == "random" and ha["validators"] != hb["validators"]
    # The attacker's best guess, the old derivation from public values, is not the key.
    guess = derived_keys(4, 8, chain_id=b"pot-jax/run", seed=0)
    assert [pk.hex() for pk in guess.validator_set.public_keys] != [v[0] for v in ha["validators"]]
    assert [pk.hex() for pk in guess.worker_public_keys] != ha["worker_keys"]


def test_key_files_are_private_and_never_overwritten(tmp_path):
    keys = generate_keys(4, 3)
    d = write_key_dir(tmp_path / "keys", keys)
    assert os.stat(d).st_mode & 0o777 == 0o700
    for p in d.glob("*.key"):
        assert os.stat(p).st_mode & 0o777 == 0o600
    with pytest.raises(KeyFileError, match="never overwritten"):
        write_key_dir(d, generate_keys(4, 3))
    loaded = load_key_dir(d, n_validators=4, n_workers=3, worker_scheme="ed25519")
    assert loaded.validator_secret_keys == keys.validator_secret_keys
    os.chmod(d / "validator-00001.key", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_dir(d, n_validators=4, n_workers=3, worker_scheme="ed25519")
    os.chmod(d / "validator-00001.key", 0o600)
    with pytest.raises(KeyFileError, match="4 validators and 2 workers"):
        load_key_dir(d, n_validators=4, n_workers=2, worker_scheme="ed25519")
    path = d / "worker-00000.key"
    obj = json.loads(path.read_text())
    obj["public_key"] = keys.worker_public_keys[1].hex()  # someone else's key
    path.write_text(json.dumps(obj))
    with pytest.raises(KeyFileError, match="does not belong"):
        load_key_dir(d, n_validators=4, n_workers=3, worker_scheme="ed25519")


def test_a_key_directory_inside_the_run_directory_is_refused(tmp_path):
    from pot_jax.config import ConfigError

    with pytest.raises(ConfigError, match="never live inside a run directory"):
        ProtocolConfig(**TINY, run_dir=str(tmp_path / "run"), keys=str(tmp_path / "run" / "k"))


def test_the_same_key_files_give_identical_committed_records(tmp_path):
    """A run is determined by its config, its seed and its key files."""
    write_key_dir(tmp_path / "keys", generate_keys(4, 8))
    payloads = []
    for name in ("a", "b"):
        config = ProtocolConfig(
            **{**TINY, "rounds": 6},
            attack="alie",
            budget=0.5,
            keys=str(tmp_path / "keys"),
            run_dir=str(tmp_path / name),
        )
        summary = run_protocol(config)
        assert summary.key_source == "files"
        records = list(TranscriptReader(tmp_path / name / TRANSCRIPT_NAME))
        payloads.append([r.payload for r in records if r.kind != RecordKind.HEADER])
        assert audit(tmp_path / name, recompute="all").status is not Status.UNFINISHED
    assert payloads[0] == payloads[1]


def test_derived_keys_are_recorded_and_the_audit_says_they_prove_nothing(tmp_path):
    config = ProtocolConfig(
        **{**TINY, "rounds": 2}, keys="derived", byzantine_fraction=0.0, run_dir=str(tmp_path)
    )
    assert run_protocol(config).key_source == "derived"
    report = audit(tmp_path)
    assert report.ok
    assert str(report).startswith("WARNING: this run used derived (simulation) keys")


def test_a_cheater_predicting_samples_evades_derived_keys_and_not_secret_ones():
    """Real BLS-VRF sampling; the cheater cheats only where its guess says nobody samples it.

    With derived keys its guess is right and it is never caught: the canary
    that shows the prediction attack works. With keys it cannot compute, its
    detection rate matches the closed form for its (public) cheating rounds.
    """
    from pot_jax.bench.detection import measure_prediction

    derived = measure_prediction(keys="derived", rounds=20, seeds=20, budget=0.5)
    assert derived["cheating_rounds"] > 100 and derived["caught_fraction"] == 0.0
    secret = measure_prediction(
        keys="secret", rounds=10, seeds=100, budget=0.5, secret=b"test-only secret, unknown"
    )
    assert abs(secret["caught_fraction"] - secret["expected"]) < 4 * secret["stderr"]
    assert secret["caught_fraction"] > 0.5


# -- 2. the audit's trust anchor -----------------------------------------------------------


def test_a_fresh_validator_set_that_re_signs_everything_fails_a_pinned_audit(run, tmp_path):
    summary, run_dir = run
    forger = generate_keys(4, 8)
    forged = reforge(run_dir, tmp_path / "forged", forger)
    unpinned = audit(forged)
    assert unpinned.ok and unpinned.genesis != summary.genesis  # it had to trust another genesis
    assert "WITHOUT a pin" in str(unpinned)
    report = audit(forged, genesis=summary.genesis)
    assert report.status is Status.FAILED and "you pinned" in report.reason
    pin = tmp_path / "public.json"
    pin.write_text(
        json.dumps(
            {
                "validators": [
                    v
                    for v in json.loads((run_dir / "config.json").read_text())["genesis"][
                        "validators"
                    ]
                ]
            }
        )
    )
    report = audit(forged, validators=str(pin))
    assert report.status is Status.FAILED and "--validators" in report.reason
    assert audit(run_dir, genesis=summary.genesis, validators=str(pin)).ok


@pytest.mark.parametrize(
    "edit",
    [
        lambda g: g["config"].update(seed=1),
        lambda g: g["config"].update(learning_rate=0.25),
        lambda g: g.update(byzantine_workers=[]),
        lambda g: g["config"].update(attack="sign_flip"),
        lambda g: g["worker_keys"].append("00" * 32),
    ],
    ids=["seed", "learning_rate", "byzantine_list", "attack", "phantom_worker"],
)
def test_editing_the_signed_genesis_fails_the_audit(run, tmp_path, edit):
    _, run_dir = run
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    records = list(TranscriptReader(run_dir / TRANSCRIPT_NAME))
    header = json.loads(records[0].payload)
    edit(header["genesis"])
    (dst / TRANSCRIPT_NAME).unlink()
    with TranscriptWriter(dst / TRANSCRIPT_NAME) as writer:
        writer.append(RecordKind.HEADER, canonical_json(header))
        for rec in records[1:]:
            writer.append(rec.kind, rec.payload)
    (dst / "config.json").write_text(json.dumps(header))
    report = audit(dst, recompute="all")
    assert report.status is Status.FAILED and "genesis" in report.reason


def test_a_genesis_edit_re_signed_by_a_quorum_is_caught_by_the_pin(run, keys, tmp_path):
    """Even the run's own quorum cannot change the config after the operators published it."""
    summary, run_dir = run
    forged = reforge(
        run_dir, tmp_path / "forged", keys, genesis_edit=lambda g: g["config"].update(seed=7)
    )
    report = audit(forged, genesis=summary.genesis)
    assert report.status is Status.FAILED and "you pinned" in report.reason


@pytest.mark.parametrize(
    "edit,needle",
    [
        # Name a worker Byzantine that the config's seed does not choose: its slashing would
        # then count as a Byzantine worker caught, not an honest one slashed.
        (lambda g: g["byzantine_workers"].append(next(
            w for w in range(8) if w not in g["byzantine_workers"])), "Byzantine workers"),
        (lambda g: g["byzantine_workers"].pop(), "Byzantine workers"),
        (lambda g: g.update(attack="gaussian(sigma=1.0)"), "ran"),
        (lambda g: g.update(attack=None), "ran"),
    ],
    ids=["honest_named_byzantine", "byzantine_dropped", "other_attack", "no_attack"],
)  # fmt: skip
def test_a_re_signed_genesis_must_name_the_adversary_its_config_makes(
    run, keys, tmp_path, edit, needle
):
    """The quorum that signs the genesis cannot relabel who attacked or how."""
    _, run_dir = run
    forged = reforge(run_dir, tmp_path / "forged", keys, genesis_edit=edit)
    report = audit(forged)
    assert report.status is Status.FAILED, report.reason
    assert needle in report.reason and "config" in report.reason


def _copy_with(run_dir, dst, edit):
    shutil.copytree(run_dir, dst)
    records = list(TranscriptReader(run_dir / TRANSCRIPT_NAME))
    (dst / TRANSCRIPT_NAME).unlink()
    with TranscriptWriter(dst / TRANSCRIPT_NAME) as writer:
        for rec in edit(records):
            writer.append(rec[0], rec[1])
    return dst


def _kinds(records):
    return [(r.kind, r.payload) for r in records]


def _index(records, kind, k):
    return [i for i, r in enumerate(records) if r.kind == kind][k]


def test_a_transcript_cut_after_a_round_is_unfinished_never_passed(run, tmp_path):
    _, run_dir = run
    dst = _copy_with(
        run_dir, tmp_path / "cut", lambda rs: _kinds(rs[: _index(rs, RecordKind.LEDGER, 5) + 1])
    )
    (dst / "summary.json").unlink()
    report = audit(dst)
    assert report.status is Status.UNFINISHED and report.exit_code == 3
    assert report.rounds == 6


def test_a_transcript_missing_its_last_ledger_record_is_unfinished(run, tmp_path):
    _, run_dir = run

    def edit(rs):
        last = _index(rs, RecordKind.LEDGER, -1)
        return _kinds(rs[:last])

    dst = _copy_with(run_dir, tmp_path / "cut", edit)
    (dst / "summary.json").unlink()
    assert audit(dst).status is Status.UNFINISHED


def test_a_transcript_cut_mid_record_is_unfinished_and_a_summary_beside_it_fails(run, tmp_path):
    _, run_dir = run
    dst = tmp_path / "cut"
    shutil.copytree(run_dir, dst)
    path = dst / TRANSCRIPT_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    report = audit(dst)  # summary.json still claims a finished run
    assert (
        report.status is Status.FAILED and "summary.json describes a finished run" in report.reason
    )
    (dst / "summary.json").unlink()
    report = audit(dst)
    assert report.status is Status.UNFINISHED and "torn" in report.reason


def _swap_qc_and_ledger(rs):
    out = _kinds(rs)
    q, le = _index(rs, RecordKind.QC, 3), _index(rs, RecordKind.LEDGER, 3)
    out[q], out[le] = out[le], out[q]
    return out


def _duplicate(kind, k=0):
    def edit(rs):
        out = _kinds(rs)
        i = _index(rs, kind, k)
        return out[: i + 1] + [out[i]] + out[i + 1 :]

    return edit


def _delete_final_checkpoint(rs):
    out = _kinds(rs)
    del out[_index(rs, RecordKind.CHECKPOINT, -1)]
    return out


@pytest.mark.parametrize(
    "edit",
    [
        _swap_qc_and_ledger,
        _duplicate(RecordKind.QC, 2),
        _duplicate(RecordKind.LEDGER, 2),
        _duplicate(RecordKind.FRAUD_PROOF, 0),
        _delete_final_checkpoint,
        lambda rs: [
            *_kinds(rs),
            (RecordKind.LEDGER, rs[_index(rs, RecordKind.LEDGER, -1)].payload),
        ],
    ],
    ids=[
        "swapped_qc_ledger",
        "dup_qc",
        "dup_ledger",
        "dup_fraud_proof",
        "no_final_ckpt",
        "appended",
    ],
)
def test_only_the_canonical_record_order_is_valid(run, tmp_path, edit):
    _, run_dir = run
    report = audit(_copy_with(run_dir, tmp_path / "run", edit))
    assert report.status is Status.FAILED, str(report)


def test_bytes_appended_after_the_closing_record_fail_fast(run, tmp_path):
    _, run_dir = run
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    with open(dst / TRANSCRIPT_NAME, "ab") as f:
        f.truncate(os.path.getsize(dst / TRANSCRIPT_NAME) + (256 << 20))  # 256 MiB of zeros
    start = time.perf_counter()
    report = audit(dst)
    assert report.status is Status.FAILED and "follow the closing record" in report.reason
    assert time.perf_counter() - start < 30


def test_config_json_must_equal_the_signed_header(run, tmp_path):
    _, run_dir = run
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    config = json.loads((dst / "config.json").read_text())
    config["genesis"]["config"]["learning_rate"] = 0.01
    (dst / "config.json").write_text(json.dumps(config))
    report = audit(dst)
    assert report.status is Status.FAILED and "config.json differs" in report.reason


@pytest.mark.parametrize(
    "field,value",
    [("pot_accuracy", 0.99), ("rounds_committed", 10_000), ("cheaters_caught", []),
     ("worker_rewards", 1)],
)  # fmt: skip
def test_a_forged_summary_fails_the_audit(run, tmp_path, field, value):
    _, run_dir = run
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    summary = json.loads((dst / "summary.json").read_text())
    summary[field] = value
    (dst / "summary.json").write_text(json.dumps(summary))
    report = audit(dst)
    assert report.status is Status.FAILED and field in report.reason
    assert "summary.wall_seconds" in str(audit(run_dir))  # what it cannot check, it says


def test_forged_metrics_fail_the_audit(run, tmp_path):
    _, run_dir = run
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    rows = [json.loads(x) for x in (dst / "metrics.jsonl").read_text().splitlines()]
    rows[-1]["pot_test_accuracy"] = 0.999
    (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = audit(dst)
    assert report.status is Status.FAILED and "metrics.jsonl" in report.reason


def test_moving_reward_through_the_examples_field_fails_the_audit(run, keys, tmp_path):
    """Worker a claims 2B examples, worker b B/2...: the ledger still conserves; the audit checks B."""
    _, run_dir = run

    def edit(record):
        if record.round != 2 or len(record.accepted) < 2:
            return record
        a, b, *rest = record.accepted
        batch = a.examples
        moved = (a.__class__(a.worker, a.commitment, batch + 4),
                 b.__class__(b.worker, b.commitment, batch - 4))  # fmt: skip
        return record.__class__(**{**record.__dict__, "accepted": (*moved, *rest)})

    forged = reforge(run_dir, tmp_path / "forged", keys, record_edit=edit)
    report = audit(forged)
    assert report.status is Status.FAILED and "does not re-derive" in report.reason
    assert "accepted" in report.reason


def _framing_run(tmp_path, keys, monkeypatch, *, tamper_gradient=False):
    """A committee that accepts a false fraud proof against honest worker 2 in round 3.

    Every validator cites the forged proof and every validator's judgement
    is patched to believe it: the colluding committee commits the frame.
    """
    import numpy as np

    import pot_jax.protocol.roles as roles
    import pot_jax.protocol.round as round_module
    from pot_jax.protocol.messages import Check, ReportMessage
    from pot_jax.verification.fraud_proof import batch_digest

    original = roles.Validator.report

    def framing_report(self):
        message = original(self)
        sub = self.submissions.get(2)
        if self.state.round != 3 or sub is None:
            return message
        ctx = self.context()
        gradient = np.asarray(sub.gradient, np.float32).copy()
        if tamper_gradient:
            gradient[0] += 1.0  # no longer what the commitment signs
        x_B, y_B = ctx.batch_of(2)
        proof = FraudProof(
            chain_id=ctx.chain_id,
            round=ctx.round,
            worker=2,
            commitment=sub.commitment,
            signature=sub.signature,
            public_key=sub.public_key,
            gradient=gradient.astype("<f4").tobytes(),
            hash_name=ctx.hash_name,
            params_digest=ctx.params_digest,
            batch_digest=batch_digest(x_B, y_B),
            mode="bitwise",
            threshold=0.0,
        ).encode()
        checks = list(message.report.checks)
        checks[2] = Check(2, sub.commitment, "wrong_gradient", True, hashlib.sha256(proof).digest())
        unsigned = dataclasses.replace(message.report, checks=tuple(checks), signature=b"")
        report = dataclasses.replace(
            unsigned,
            signature=self.rules.report_scheme.sign(self.report_sk, unsigned.signing_message()),
        )
        return ReportMessage(report, (*message.proofs, proof))

    monkeypatch.setattr(roles.Validator, "report", framing_report)
    monkeypatch.setattr(round_module, "_proof_holds", lambda *a, **k: True)
    config = ProtocolConfig(
        **{**TINY, "rounds": 6}, byzantine_fraction=0.0, run_dir=str(tmp_path / "framed")
    )
    summary = run_protocol(config, keys=keys)
    assert 2 in summary.cheaters_caught  # the colluding committee committed the frame
    return tmp_path / "framed"


def test_a_false_fraud_proof_against_an_honest_worker_fails_the_default_audit(
    keys, tmp_path, monkeypatch
):
    run_dir = _framing_run(tmp_path, keys, monkeypatch)
    monkeypatch.undo()
    report = audit(run_dir)  # default: no --recompute
    assert report.status is Status.FAILED and report.first_bad_round == 3
    assert "fraud proof against worker 2 is false" in report.reason


def test_a_fraud_proof_whose_gradient_is_not_the_signed_one_fails_the_default_audit(
    keys, tmp_path, monkeypatch
):
    run_dir = _framing_run(tmp_path, keys, monkeypatch, tamper_gradient=True)
    monkeypatch.undo()
    report = audit(run_dir)
    assert (
        report.status is Status.FAILED and "does not hash to the signed commitment" in report.reason
    )


# -- hostile run directories fail fast -----------------------------------------------------


def _hostile(run_dir, dst, how):
    shutil.copytree(run_dir, dst)
    path = dst / TRANSCRIPT_NAME
    path.unlink()
    if how == "dev_zero":
        path.symlink_to("/dev/zero")
    elif how == "fifo":
        os.mkfifo(path)
    return dst


@pytest.mark.parametrize("how", ["dev_zero", "fifo"])
def test_a_transcript_that_is_not_a_regular_file_fails_fast(run, tmp_path, how):
    _, run_dir = run
    start = time.perf_counter()
    report = audit(_hostile(run_dir, tmp_path / "run", how))
    assert report.status is Status.FAILED and "not a regular file" in report.reason
    assert time.perf_counter() - start < 10


def test_a_checkpoint_that_is_a_fifo_fails_fast(run, tmp_path):
    _, run_dir = run
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    victim = sorted((dst / (TRANSCRIPT_NAME + ".checkpoints")).glob("*.ckpt"))[0]
    victim.unlink()
    os.mkfifo(victim)
    start = time.perf_counter()
    report = audit(dst)
    assert report.status is Status.FAILED and "not a regular file" in report.reason
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("field", ["workers", "num_samples"])
def test_a_header_claiming_1e8_workers_or_samples_fails_fast(run, tmp_path, field):
    """A forger re-signs a genesis with 10^8 of them; the audit refuses before allocating."""
    _, run_dir = run
    forged = reforge(
        run_dir,
        tmp_path / "forged",
        generate_keys(4, 8),
        genesis_edit=lambda g: g["config"].update({field: 10**8}),
    )
    start = time.perf_counter()
    report = audit(forged)
    assert report.status is Status.FAILED and field in report.reason
    assert time.perf_counter() - start < 10


def test_sampled_re_execution_draws_from_the_os_and_prints_its_seed(run):
    _, run_dir = run
    a, b = audit(run_dir, recompute="sample:0.5"), audit(run_dir, recompute="sample:0.5")
    assert a.sample_seed is not None and a.sample_seed != b.sample_seed
    assert f"sample seed {a.sample_seed}" in str(a)
    again = audit(run_dir, recompute="sample:0.5", seed=a.sample_seed)
    assert again.reexecuted == a.reexecuted and again.status == a.status


def test_a_second_train_into_a_run_directory_changes_nothing(run, tmp_path):
    _, run_dir = run
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    config = ProtocolConfig(**{**TINY, "rounds": 1}, run_dir=str(run_dir))
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        run_protocol(config)
    assert before == {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_qc_decoding_helper_is_the_real_codec():
    """Guard for the forger above: QuorumCertificate round-trips through its encoding."""
    keys = generate_keys(4, 1)
    qc = _sign_all(keys, vote_message(b"x", "commit", 0, 1, hashlib.sha256(b"v").digest()))
    assert QuorumCertificate.decode(qc.encode()) == qc


def test_a_sampled_audit_of_a_short_run_re_executes_at_least_one_interval(tmp_path):
    """A run shorter than the checkpoint interval has one interval: sample:F must draw it."""
    config = ProtocolConfig(
        **{**TINY, "rounds": 3, "checkpoint_every": 100}, byzantine_fraction=0.0,
        run_dir=str(tmp_path),
    )  # fmt: skip
    run_protocol(config)
    for seed in range(5):
        report = audit(tmp_path, recompute="sample:0.01", seed=seed)
        assert report.ok and report.reexecuted == 3


def test_a_forged_genesis_naming_os_system_runs_nothing_in_the_audit(run, tmp_path):
    """An unpinned genesis can name any importable callable; the audit must not call it."""
    from pot_jax.protocol.audit import AuditUsageError

    _, run_dir = run
    marker = tmp_path / "pwned"
    forged = reforge(
        run_dir,
        tmp_path / "forged",
        generate_keys(4, 8),
        genesis_edit=lambda g: g["config"].update(attack=f"os:system:command=touch {marker}"),
    )
    with pytest.raises(AuditUsageError, match="plugin code \\['os:system'\\]"):
        audit(forged, recompute="all")
    assert not marker.exists()


def test_a_closing_record_kept_on_a_truncated_transcript_fails(run, tmp_path):
    """Cutting rounds but keeping the signed closing record: its round count gives it away."""
    _, run_dir = run

    def edit(rs):
        cut = _index(rs, RecordKind.LEDGER, 5)
        return [*_kinds(rs[: cut + 1]), (RecordKind.CLOSING, rs[-1].payload)]

    report = audit(_copy_with(run_dir, tmp_path / "run", edit))
    assert report.status is Status.FAILED and "closing record disagrees" in report.reason
