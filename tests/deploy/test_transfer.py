"""State transfer: a validator too far behind adopts its peers' certified state.

Without a network: a validator that holds the committed decisions of a run
(as its PBFT replica fetched them) but none of the gradients is fed its
peers' answers, honest and forged, and must end with exactly the records and
model its peers have, adopting nothing a Byzantine peer made up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil

import jax
import pytest
from test_node import ENDPOINTS, TINY, FakeTransport

from pot_jax.config import ProtocolConfig
from pot_jax.consensus.messages import value_digest
from pot_jax.consensus.pbft.events import Decision
from pot_jax.consensus.pbft.state import Certified
from pot_jax.deploy import wire
from pot_jax.deploy.context import load_context
from pot_jax.deploy.node import ValidatorNode
from pot_jax.deploy.transfer import StateTransfer, TransferError
from pot_jax.learning.encoding import decode_pytree, encode_pytree
from pot_jax.protocol.audit import Auditor, Status
from pot_jax.protocol.keys import generate_keys, write_key_dir
from pot_jax.protocol.messages import encode_proposal
from pot_jax.protocol.round import cited_proofs
from pot_jax.protocol.runner import run_protocol
from pot_jax.protocol.transcript import (
    TRANSCRIPT_NAME,
    RecordKind,
    TranscriptReader,
    decode_qc_record,
    encode_fraud_record,
)

ROUNDS, EVERY = 6, 2


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A simulated run in which round 0 cites a fraud proof (every gradient is spot-checked,
    one worker of four cheats) and the optimizer has a state (momentum), checkpointed every
    2 rounds: what the peers of a validator that missed all of it hold."""
    base = tmp_path_factory.mktemp("transfer")
    keys = generate_keys(4, 4)
    write_key_dir(base / "keys", keys)
    fields = {
        **TINY,
        "rounds": ROUNDS,
        "checkpoint_every": EVERY,
        "byzantine_fraction": 0.25,
        "budget": 1.0,
        "optimizer": "momentum",
    }
    sim = base / "sim"
    run_protocol(ProtocolConfig(**fields, run_dir=str(sim), keys=str(base / "keys")))
    ctx = load_context(json.loads((sim / "config.json").read_text()))
    records = list(TranscriptReader(sim / TRANSCRIPT_NAME))
    return ctx, keys, sim, records


def _needed(records) -> set[int]:
    """The rounds whose state a validator at the genesis must fetch: the checkpoint rounds
    and the rounds whose reports cite a fraud proof (their input model)."""
    rounds, cited = 0, set()
    for rec in records:
        if rec.kind == RecordKind.FRAUD_PROOF:
            cited.add(rounds)
        elif rec.kind == RecordKind.LEDGER:
            rounds += 1
    assert cited  # the fixture's premise: a cheater is caught
    return cited | set(range(EVERY, ROUNDS + 1, EVERY))


def _decisions(records) -> list[tuple[Decision, Certified]]:
    """The committed decisions of the run, as a replica that fetched them holds them."""
    out, pending = [], {}
    for rec in records:
        if rec.kind in (RecordKind.ROUND, RecordKind.INPUTS):
            pending[rec.kind] = rec.payload
        elif rec.kind == RecordKind.QC:
            view, seq, qc = decode_qc_record(rec.payload)
            pending["qc"] = (view, seq, qc)
        elif rec.kind == RecordKind.LEDGER:
            view, seq, qc = pending["qc"]
            value = encode_proposal(pending[RecordKind.ROUND], pending[RecordKind.INPUTS])
            digest = value_digest(value)
            out.append(
                (Decision(seq, view, digest, value), Certified(view, digest, value, None, qc))
            )
    return out


def _node(ctx, keys, data_dir, index, **kw) -> ValidatorNode:
    node = ValidatorNode(ctx, index, keys.validator_secret_keys[index], ENDPOINTS, data_dir, **kw)
    node.loop = asyncio.new_event_loop()
    node.transport = FakeTransport()
    node.begin()
    return node


def _behind(finished, tmp_path, **kw) -> ValidatorNode:
    """Validator 1, back at the genesis, with every decision of the run and no gradient."""
    ctx, keys, _, records = finished
    node = _node(ctx, keys, tmp_path / "behind", 1, history_rounds=1, transfer_after=2, **kw)
    for decision, cert in _decisions(records):
        node.pstate.ledger[decision.seq] = cert
        node.queue.append(decision)
    node._drain()
    return node


def _peer(finished, tmp_path, index) -> ValidatorNode:
    """An honest peer that finished the run (it restarts from the run's transcript)."""
    ctx, keys, sim, _ = finished
    data = tmp_path / f"peer{index}"
    shutil.copytree(sim, data)
    (data / "summary.json").unlink(missing_ok=True)
    peer = _node(ctx, keys, data, index)
    assert peer.closed
    return peer


def _asked(node) -> list[tuple[str, int]]:
    return [
        (p, wire.split_round(d[1:], "")[0])
        for p, d in node.transport.sent
        if d[0] == wire.STATE_REQUEST
    ]


def _answer(peer, round_: int) -> bytes:
    """What an honest peer answers to a state request for ``round_`` (its STATE message)."""
    peer.transport.sent.clear()
    peer.on_message("validator/1", wire.encode(wire.STATE_REQUEST, wire.round_body(round_, b"")))
    ((to, data),) = peer.transport.sent
    assert to == "validator/1" and data[0] == wire.STATE
    return data


def test_a_validator_far_behind_adopts_the_certified_state_and_its_transcript_re_executes(
    finished, tmp_path
):
    ctx, keys, sim, records = finished
    node = _behind(finished, tmp_path)
    assert node.transfer is not None and node.transfer.target == ROUNDS
    # It asked f + 1 = 2 peers for the first rounds it needs, and only validators.
    first = _asked(node)
    assert {p for p, _ in first} == {"validator/2", "validator/3"}
    assert {r for _, r in first} == _needed(records)
    peer = _peer(finished, tmp_path, 2)
    for r in sorted(_needed(records)):
        answer = _answer(peer, r)
        node.on_message("validator/2", answer)
        assert node.state.round == 0  # one copy is not enough (f + 1 = 2 are needed)
        node.on_message("validator/3", answer)
    assert node.transfer is None and node.state.round == ROUNDS
    assert node.stats["state transfers"] == 1
    assert node.stats["rounds adopted by state transfer"] == ROUNDS
    assert node.state.params_hash == peer.state.params_hash
    # Its transcript holds the run's records, byte for byte (up to the closing, which needs
    # its peers' votes), and re-executes from the data: audit --recompute all.
    node.writer.sync()
    mine = [(r.kind, r.payload) for r in TranscriptReader(node.data_dir / TRANSCRIPT_NAME)]
    theirs = [(r.kind, r.payload) for r in records if r.kind != RecordKind.CLOSING]
    assert mine[1:] == theirs[1:]  # (the header names no node; the first checkpoint too)
    checked = Auditor(node.data_dir, recompute=0.0)  # QCs, hashes, ledger, proofs
    assert checked.run().status == Status.UNFINISHED and checked.state.round == ROUNDS
    assert checked.state.params_hash == peer.state.params_hash
    # Re-executed from the data, it says what the peers' own transcript says: all rounds
    # hold, or (when a cheater's gradient was accepted unchecked) the same finding.
    source = Auditor(sim, recompute=1.0).run()
    report = Auditor(node.data_dir, recompute=1.0).run()
    if source.status == Status.PASSED:
        assert report.status == Status.UNFINISHED and report.reexecuted == ROUNDS, report.reason
    else:
        assert (report.status, report.reason) == (source.status, source.reason)
    rows = [json.loads(x) for x in (node.data_dir / "metrics.jsonl").open()]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(r["state_transfer"] for r in rows)


def test_an_optimizer_state_sent_by_f_validators_is_never_adopted(finished, tmp_path):
    """The QCs certify the model but not the optimizer state: a Byzantine peer sends the
    committed parameters with momentum of its own. One copy (f = 1) is not adopted, nor is
    it outvoted into place; two identical honest copies are."""
    node = _behind(finished, tmp_path)
    peer = _peer(finished, tmp_path, 2)
    like = node._checkpoint_like()
    honest = _answer(peer, 2)
    r, checkpoint, proofs = wire.decode_state(honest[1:])
    loaded = decode_pytree(checkpoint, like)
    bent = jax.tree_util.tree_map(lambda x: x + 1.0, loaded["opt_state"])
    forged = encode_pytree({"opt_state": bent, "params": loaded["params"]})
    assert forged != checkpoint
    node.on_message("validator/0", wire.encode_state(2, forged, proofs))
    node.on_message("validator/3", honest)
    assert 2 not in node.transfer.checkpoints  # one forged, one honest: no f + 1 agree
    node.on_message("validator/2", honest)
    assert node.transfer.checkpoints[2] == checkpoint  # two honest copies agree


def test_forged_models_proofs_and_unasked_state_are_dropped_with_a_reason(finished, tmp_path):
    from pot_jax.protocol.transcript import decode_fraud_record

    records = finished[3]
    node = _behind(finished, tmp_path)
    peer = _peer(finished, tmp_path, 2)
    k = min(r for r in _needed(records) if peer.proof_records.get(r))  # a round citing a proof
    unneeded = min(set(range(ROUNDS)) - _needed(records))
    _, checkpoint, proofs = wire.decode_state(_answer(peer, k)[1:])
    loaded = decode_pytree(checkpoint, node._checkpoint_like())
    other = jax.tree_util.tree_map(lambda x: x * 0.5, loaded["params"])
    wrong = encode_pytree({"opt_state": loaded["opt_state"], "params": other})
    prover, proof = decode_fraud_record(proofs[0])
    cites = {v for v, _ in cited_proofs(node.transfer.rounds[k].inputs)}
    forged = [encode_fraud_record(prover, proof + b"x")]  # a proof nobody cited
    forged += [encode_fraud_record(v, proof) for v in range(4) if v not in cites][:1]  # by another
    for sender in ("validator/0", "validator/3"):  # f + 1 of them: agreement is not enough
        node.on_message(sender, wire.encode_state(k, wrong, forged))
    node.on_message("validator/0", wire.encode_state(unneeded, checkpoint, []))
    node.on_message("workers/0", wire.encode_state(k, checkpoint, proofs))  # not a validator
    node.on_message("validator/3", wire.encode_state(k, b"\x00garbage", []))
    node.on_message("validator/3", b"\x0c\x00\x00")  # truncated
    dropped = {key: n for key, n in node.stats.items() if key.startswith("dropped")}
    undecodable = [key for key in dropped if "a checkpoint that does not decode" in key]
    assert len(undecodable) == 1 and dropped.pop(undecodable[0]) == 1
    assert dropped == {
        "dropped: state: a checkpoint whose model is not the committed one of its round": 2,
        "dropped: state: a fraud proof the round's certified inputs do not cite": 2 * len(forged),
        f"dropped: state for round {unneeded}, which this transfer does not need": 1,
        "dropped: state from a non-validator or that nobody asked for": 1,
        "dropped: malformed state (state is truncated)": 1,
    }
    t = node.transfer
    assert k not in t.checkpoints and not t.proofs[k] and node.state.round == 0
    # Canary: the honest answer, from f + 1 validators, is taken.
    for sender in ("validator/0", "validator/3"):
        node.on_message(sender, wire.encode_state(k, checkpoint, proofs))
    assert t.checkpoints[k] == checkpoint and len(t.proofs[k]) == len(t.rounds[k].cited)


def test_certified_rounds_that_do_not_follow_from_its_state_write_nothing(finished, tmp_path):
    """A validator whose own state differs from what the certificates say (a corrupted
    state) cannot adopt: it says so and its transcript is left as it was."""
    node = _behind(finished, tmp_path)
    size = (node.data_dir / TRANSCRIPT_NAME).stat().st_size
    node.state = dataclasses.replace(node.state, params_hash=b"\x01" * 32)
    peer = _peer(finished, tmp_path, 2)
    for r in sorted(_needed(finished[3])):
        for sender in ("validator/2", "validator/3"):
            node.on_message(sender, _answer(peer, r))
    failed = [k for k in node.stats if k.startswith("state transfer failed")]
    assert failed == ["state transfer failed: round 0: its input model is not round -1's output"]
    assert node.transfer is None and node.state.round == 0
    assert (node.data_dir / TRANSCRIPT_NAME).stat().st_size == size
    node._maybe_transfer()  # and it does not start over (asking its peers for ever)
    assert node.transfer is None


def test_a_validator_only_a_few_rounds_behind_re_derives_instead(finished, tmp_path):
    ctx, keys, _, records = finished
    node = _node(ctx, keys, tmp_path / "v", 1, transfer_after=ROUNDS + 1)
    for decision, cert in _decisions(records):
        node.pstate.ledger[decision.seq] = cert
        node.queue.append(decision)
    node._drain()
    assert node.transfer is None and not _asked(node)
    # It asks for the round's reports, then for the gradients they accepted (as before).
    assert any(d[0] == wire.REPORTS_REQUEST for _, d in node.transport.sent)


def test_a_transfer_needs_one_committed_value_per_round():
    with pytest.raises(TransferError, match="nothing to adopt"):
        StateTransfer(3, 3, [], checkpoint_every=2, f=1, like={}, spec=None)
    with pytest.raises(TransferError, match="0 committed values"):
        StateTransfer(0, 2, [], checkpoint_every=2, f=1, like={}, spec=None)


def test_a_validator_stuck_on_a_round_adopts_once_enough_later_rounds_commit(finished, tmp_path):
    """The first decision it cannot commit comes alone (not far behind yet: it asks for the
    gradients); the later ones arrive from its replica while it waits. Those arrivals must
    start the transfer: its fetch retry timer is postponed by every request it sends again,
    and in a real cluster it never fired (the validator asked for gradients for ever)."""
    from types import SimpleNamespace

    ctx, keys, _, records = finished
    node = _node(ctx, keys, tmp_path / "v", 1, history_rounds=1, transfer_after=2)
    decisions = _decisions(records)
    for decision, cert in decisions:
        node.pstate.ledger[decision.seq] = cert
    node.queue.append(decisions[0][0])
    node._drain()
    assert node.pending_commit is not None and node.transfer is None
    later = SimpleNamespace(
        state=node.pstate,
        drops=(),
        evidence=(),
        sends=(),
        timers=(),
        decisions=[d for d, _ in decisions[1:]],
    )
    node._apply(later)
    assert node.transfer is not None and node.transfer.target == ROUNDS
