"""Vote batch verification is sound: random linear combinations, bisection, a memo
written only after a deciding check.

The argument these tests check is in proofs/qc-unforgeability.md ("Batched and
cached vote checks"); the scenario and checker tests for the same attack are in
tests/network/test_checker.py.
"""

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pot_jax.consensus.keys import simulation_keys
from pot_jax.consensus.messages import PREPARE, value_digest
from pot_jax.consensus.verifier import Verifier, VerifierStats
from pot_jax.crypto import bls
from pot_jax.crypto.quorum import sign_vote, vote_message

N = 7
SKS, VALIDATORS = simulation_keys(N)
MSG = vote_message(b"pot-jax/test", PREPARE, 0, 1, value_digest(b"value"))
OTHER_MSG = vote_message(b"pot-jax/test", PREPARE, 0, 2, value_digest(b"value"))
SIGS = [sign_vote(sk, MSG) for sk in SKS]
# X and -X: the hash of a label "signed" under the keys 1 and r - 1.
X = bls.sign_with_dst(1, b"offset X", b"pot-jax/test/offset")
MINUS_X = bls.sign_with_dst(bls.CURVE_ORDER - 1, b"offset X", b"pot-jax/test/offset")


def plus(signature: bytes, offset: bytes) -> bytes:
    return bls.Aggregate([signature, offset])


def cancelling_votes() -> dict[int, bytes]:
    """Three honest votes and the colluders' pair sig_5 + X, sig_6 - X."""
    return {0: SIGS[0], 1: SIGS[1], 2: SIGS[2], 5: plus(SIGS[5], X), 6: plus(SIGS[6], MINUS_X)}


def plain_sum_accepts(votes: dict[int, bytes]) -> bool:
    """The check verify_votes used to make: the plain sum of the signatures, one pairing."""
    points = VALIDATORS.public_key_points()
    aggregate = bls.Aggregate(list(votes.values()))
    return bls.fast_aggregate_verify_points([points[i] for i in votes], MSG, aggregate)


def test_cancelling_pair_passes_a_plain_sum_but_each_vote_is_invalid():
    """The canary for the attack: what the old batch check accepted."""
    votes = cancelling_votes()
    assert plain_sum_accepts(votes)
    assert not bls.Verify(VALIDATORS.public_keys[5], MSG, votes[5])
    assert not bls.Verify(VALIDATORS.public_keys[6], MSG, votes[6])


def test_cancelling_pair_is_rejected_and_neither_vote_is_cached_valid():
    memo: dict = {}
    votes = cancelling_votes()
    result = Verifier(VALIDATORS, memo).verify_votes(MSG, votes)
    assert result == {0: True, 1: True, 2: True, 5: False, 6: False}
    assert memo[("v", 5, MSG, votes[5])] is False
    assert memo[("v", 6, MSG, votes[6])] is False
    # Alone, the pair is rejected too, and a verifier sharing the memo agrees.
    pair = {5: votes[5], 6: votes[6]}
    assert Verifier(VALIDATORS).verify_votes(MSG, pair) == {5: False, 6: False}
    other = Verifier.shared(VALIDATORS, memo)
    assert other.verify_votes(MSG, pair) == {5: False, 6: False}
    assert other.stats == VerifierStats()  # answered from the memo


def test_constant_scalars_would_accept_the_pair(monkeypatch):
    """Canary for the randomness: scalars all 1 make the combination a plain sum."""
    monkeypatch.setattr(bls.secrets, "randbelow", lambda bound: 0)
    memo: dict = {}
    result = Verifier(VALIDATORS, memo).verify_votes(MSG, cancelling_votes())
    assert all(result.values())


def test_batch_scalars_are_fresh_nonzero_and_64_bit():
    draws = [bls._batch_scalars(8) for _ in range(4)]
    flat = [r for d in draws for r in d]
    assert all(1 <= r < 2**64 for r in flat)
    assert len(set(flat)) == len(flat)  # 32 draws of 64 bits: a repeat would be a broken RNG


def test_a_valid_batch_costs_one_check_and_is_cached():
    memo: dict = {}
    verifier = Verifier(VALIDATORS, memo)
    votes = dict(enumerate(SIGS))
    assert verifier.verify_votes(MSG, votes) == dict.fromkeys(range(N), True)
    assert verifier.stats == VerifierStats(batch_checks=1)
    assert all(memo[("v", i, MSG, s)] for i, s in votes.items())
    assert verifier.verify_votes(MSG, votes) == dict.fromkeys(range(N), True)
    assert verifier.stats == VerifierStats(batch_checks=1)


def test_malformed_and_undecodable_votes_are_rejected_without_a_batch():
    verifier = Verifier(VALIDATORS)
    votes = {0: SIGS[0], 1: b"\x00" * 95, 2: b"\xff" * 96, N: SIGS[0]}
    assert verifier.verify_votes(MSG, votes) == {0: True, 1: False, 2: False, N: False}
    assert verifier.stats == VerifierStats(single_checks=1)


def _bad_votes(n: int, bad: set[int], kinds: list[int]) -> dict[int, bytes]:
    """n votes; the bad ones cancel in pairs (+X, -X, +X, ...) or sign another message."""
    votes = {}
    sign = 1
    for i in range(n):
        if i not in bad:
            votes[i] = SIGS[i]
        elif kinds[i] == 0:
            votes[i] = plus(SIGS[i], X if sign > 0 else MINUS_X)
            sign = -sign
        else:
            votes[i] = sign_vote(SKS[i], OTHER_MSG)
    return votes


_BATCHES = st.integers(1, N).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.sets(st.integers(0, n - 1)),
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
    )
)


@settings(max_examples=20)
@given(batch=_BATCHES)
@example(batch=(7, {5, 6}, [0] * 7))  # the attack: one cancelling pair among honest votes
@example(batch=(7, {3}, [1] * 7))  # one bad vote: a few checks, not one per vote
@example(batch=(7, set(range(7)), [0] * 7))  # every vote bad; six cancel in pairs
def test_bisection_finds_exactly_the_bad_votes(batch):
    """For any set of k bad votes among n (cancelling pairs or votes on another message),
    verify_votes marks exactly those bad, caches exactly what it returns, and runs at
    most 1 + 2k * ceil(log2 n) checks (bisection, not one check per vote)."""
    n, bad, kinds = batch
    votes = _bad_votes(n, bad, kinds)
    memo: dict = {}
    verifier = Verifier(VALIDATORS, memo)
    result = verifier.verify_votes(MSG, votes)
    assert result == {i: i not in bad for i in range(n)}
    assert memo == {("v", i, MSG, s): i not in bad for i, s in votes.items()}
    checks = verifier.stats.single_checks + verifier.stats.batch_checks
    assert checks <= 1 + 2 * len(bad) * math.ceil(math.log2(n))
