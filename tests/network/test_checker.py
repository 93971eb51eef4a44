"""Colluders whose invalid votes cancel in a plain sum, end to end; and a safety checker
that does not trust the replicas' shared memo.

The argument is in proofs/qc-unforgeability.md ("Batched and cached vote checks");
the verifier's own tests are in tests/consensus/test_verifier.py.
"""

import dataclasses

import pytest

from pot_jax.consensus.keys import simulation_keys
from pot_jax.consensus.messages import CHECKPOINT, COMMIT, PREPARE, value_digest
from pot_jax.consensus.pbft import ALL_TO_ALL, LINEAR, Certified
from pot_jax.consensus.verifier import Verifier, VerifierStats
from pot_jax.crypto import bls
from pot_jax.crypto.quorum import sign_vote, vote_message
from pot_jax.network import byzantine
from pot_jax.network.checker import SafetyChecker
from pot_jax.network.scenario import ScenarioConfig, make_cluster, run_scenario
from pot_jax.network.simulator import NetworkConfig, TimedNetwork

COLLUDERS = (5, 6)  # n = 7 tolerates f = 2
SEEDS = range(8)  # the old plain-sum check let the pair through on some of these, not all


def _certificates(node, chain_id: bytes):
    """(signed message, certificate) for every certificate a node holds."""
    st = node.state
    for s, cert in st.ledger.items():
        yield vote_message(chain_id, COMMIT, cert.view, s, cert.digest), cert
    for s, cert in st.prepared.items():
        yield vote_message(chain_id, PREPARE, cert.view, s, cert.digest), cert
    if st.stable.seq > 0:
        yield vote_message(chain_id, CHECKPOINT, 0, st.stable.seq, st.stable.digest), st.stable


def bad_certificates(cluster) -> list[str]:
    """Certificates held by honest nodes that fail a check by the draft's own Verify and
    FastAggregateVerify on encoded keys (no memo, no batching, no decoded-key cache)."""
    c = cluster.config
    pks = c.validators.public_keys
    valid: dict = {}  # many nodes hold the same certificate or vote: check each once

    def holds(msg, cert) -> bool:
        if cert.qc is not None:
            key = (msg, cert.qc.signature, cert.qc.signers)
            if key not in valid:
                signers = [pks[i] for i in cert.qc.signer_indices()]
                valid[key] = bls.FastAggregateVerify(signers, msg, cert.qc.signature)
            return valid[key]
        for i, s in cert.votes.items():
            if (i, msg, s) not in valid:
                valid[i, msg, s] = bls.Verify(pks[i], msg, s)
        return all(valid[i, msg, s] for i, s in cert.votes.items())

    return [
        f"node {node.id}: {type(cert).__name__} on {msg.hex()[-16:]}"
        for node in cluster.honest()
        for msg, cert in _certificates(node, c.chain_id)
        if not holds(msg, cert)
    ]


def poisoned_entries(memo: dict, validators) -> list[tuple]:
    """Memo entries that call a vote valid although Verify rejects it."""
    return [
        key
        for key, ok in memo.items()
        if key[0] == "v" and ok and not bls.Verify(validators.public_keys[key[1]], key[2], key[3])
    ]


def _colluding_cluster(pattern: str, seed: int, memo: dict):
    strategies = {i: byzantine.cancelling_votes() for i in COLLUDERS}
    cluster = make_cluster(7, pattern, strategies=strategies, memo=memo, seed=seed)
    net = TimedNetwork(cluster, NetworkConfig(), seed=seed)
    for k in range(4):
        net.submit_at(float(k), b"value-%d-%d" % (seed, k))
    net.run(until=200.0)
    return cluster


@pytest.mark.parametrize("pattern", [ALL_TO_ALL, LINEAR])
def test_cancelling_vote_pairs_never_reach_a_certificate_or_the_shared_memo(pattern):
    """Two colluders (f = 2 of n = 7) send sig_5 + X and sig_6 - X for every vote. With a
    memo shared by all replicas, over several schedules: every value is decided, no honest
    node holds a certificate that fails an independent check, the memo calls no invalid
    vote valid, and the safety checker reports nothing."""
    for seed in SEEDS:
        memo: dict = {}
        cluster = _colluding_cluster(pattern, seed, memo)
        assert all(len(node.decisions) == 4 for node in cluster.honest()), seed
        assert bad_certificates(cluster) == [], seed
        assert poisoned_entries(memo, cluster.config.validators) == [], seed
        assert SafetyChecker(cluster).violations() == [], seed


def test_run_scenario_with_cancelling_votes_is_safe_and_live():
    """The default path (shared memo, checker inside run_scenario) under the same attack,
    all-to-all, where every replica forms certificates from votes. (Under the linear
    pattern the old check's damage showed in the shared memo only: the collector's QC
    summed the pair back to a valid aggregate; the test above covers that.)"""
    for seed in SEEDS:
        r = run_scenario(
            ScenarioConfig(
                n=7,
                pattern=ALL_TO_ALL,
                values=4,
                seed=seed,
                byzantine=tuple((i, "cancelling_votes") for i in COLLUDERS),
            )
        )
        assert r["safety_violations"] == [], seed
        assert r["all_decided"], seed
        assert r["replica_drops"].get("bad-signature", 0) > 0, seed


def test_checker_does_not_trust_a_poisoned_shared_memo():
    """Canary: node 0 holds a prepare certificate whose votes 5 and 6 are sig + X and
    sig - X, and the shared memo calls both valid (what the old plain-sum batch check
    wrote). A checker reading that memo would pass the certificate without running any
    cryptography; the SafetyChecker, given the same memo, reports it."""
    sks, validators = simulation_keys(7)
    cluster = make_cluster(7, ALL_TO_ALL)
    c = cluster.config
    digest = value_digest(b"v")
    msg = vote_message(c.chain_id, PREPARE, 0, 1, digest)
    x = bls.sign_with_dst(1, b"offset X", b"pot-jax/test/offset")
    minus_x = bls.sign_with_dst(bls.CURVE_ORDER - 1, b"offset X", b"pot-jax/test/offset")
    votes = {i: sign_vote(sks[i], msg) for i in (0, 1, 2)}
    votes[5] = bls.Aggregate([sign_vote(sks[5], msg), x])
    votes[6] = bls.Aggregate([sign_vote(sks[6], msg), minus_x])
    poisoned = {("v", i, msg, s): True for i, s in votes.items()}

    trusting = Verifier(validators, dict(poisoned))
    assert all(trusting.verify_votes(msg, votes).values())
    assert trusting.stats == VerifierStats()  # nothing was checked

    node = cluster.nodes[0]
    node.state = dataclasses.replace(
        node.state, prepared={1: Certified(0, digest, b"v", votes, None)}
    )
    assert SafetyChecker(cluster, dict(poisoned)).violations() == [
        "qc soundness: node 0 holds a bad prepare certificate for 1"
    ]
