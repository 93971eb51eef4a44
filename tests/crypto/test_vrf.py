"""Tests for pot_jax.crypto.vrf: the BLS-based VRF and uniform worker sampling."""

import hashlib
import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from py_arkworks_bls12381 import G2Point
from scipy import stats

from pot_jax.crypto import bls
from pot_jax.crypto.vrf import (
    VRF_DST,
    VRF_OUTPUT_PREFIX,
    _uniform_below,
    sample_input,
    sample_size,
    sample_workers,
    vrf_proof_to_output,
    vrf_prove,
    vrf_verify,
    vrf_verify_many,
)

# Chi-square tests reject at this p-value. With a fixed seed they are
# deterministic; the threshold is loose enough that a correct sampler passes
# on any seed with probability 1 - 1e-4, and tight enough that the canary's
# bias (a plain textbook bug) is rejected with a p-value that underflows to 0.
P_THRESHOLD = 1e-4


def _key(i: int) -> tuple[int, bytes]:
    sk = bls.KeyGen(hashlib.sha256(b"test-validator" + bytes([i])).digest())
    return sk, bls.SkToPk(sk)


SK, PK = _key(0)
OTHER_SK, OTHER_PK = _key(1)


# --- the VRF ----------------------------------------------------------------


def test_proof_is_a_bls_signature_under_the_vrf_tag_and_output_its_hash():
    alpha = sample_input(b"chain", 3)
    output, proof = vrf_prove(SK, alpha)
    assert proof == bls.sign_with_dst(SK, alpha, VRF_DST)
    assert (
        output == hashlib.sha256(VRF_OUTPUT_PREFIX + proof).digest() == vrf_proof_to_output(proof)
    )
    assert len(output) == 32 and len(proof) == 96
    assert vrf_verify(PK, alpha, output, proof)


def test_vrf_proof_is_not_a_ciphersuite_signature():
    """Domain separation: a VRF proof is no valid vote or worker signature, and vice versa."""
    alpha = sample_input(b"chain", 3)
    _, proof = vrf_prove(SK, alpha)
    assert not bls.Verify(PK, alpha, proof)
    signature = bls.Sign(SK, alpha)
    assert not vrf_verify(PK, alpha, vrf_proof_to_output(signature), signature)


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_verify_rejects_wrong_key_input_output_and_proof(alpha, other_alpha):
    output, proof = vrf_prove(SK, alpha)
    assert vrf_verify(PK, alpha, output, proof)
    assert not vrf_verify(OTHER_PK, alpha, output, proof)
    other_output, other_proof = vrf_prove(SK, other_alpha)
    if other_alpha != alpha:
        assert not vrf_verify(PK, other_alpha, output, proof)
        assert not vrf_verify(PK, alpha, other_output, proof)
        assert not vrf_verify(PK, alpha, other_output, other_proof)
    flipped = bytearray(output)
    flipped[0] ^= 1
    assert not vrf_verify(PK, alpha, bytes(flipped), proof)


def test_verify_rejects_malformed_and_degenerate_inputs():
    alpha = b"alpha"
    output, proof = vrf_prove(SK, alpha)
    infinity_g1 = b"\xc0" + b"\x00" * 47
    infinity_g2 = b"\xc0" + b"\x00" * 95
    assert not vrf_verify(infinity_g1, alpha, vrf_proof_to_output(infinity_g2), infinity_g2)
    assert not vrf_verify(PK[:-1], alpha, output, proof)
    assert not vrf_verify(b"\xff" * 48, alpha, output, proof)
    assert not vrf_verify(PK, alpha, output[:-1], proof)
    assert not vrf_verify(PK, alpha, output, proof[:-1])
    assert not vrf_verify(PK, alpha, output, b"\xff" * 96)
    assert not vrf_verify(PK, alpha, vrf_proof_to_output(infinity_g2), infinity_g2)


def test_inputs_must_be_bytes():
    with pytest.raises(TypeError, match="alpha must be bytes, got int"):
        vrf_prove(SK, 5)
    with pytest.raises(TypeError, match="chain_id must be bytes, got int"):
        sample_input(3, 1)


def test_output_is_unique_per_key_and_input():
    """Proving is deterministic, and no other valid-looking proof verifies.

    Candidates that a cheating prover could try, all of them subgroup points
    with a correct output hash: the negated proof, the proof of another input,
    the proof under another key, and the proof plus a random G2 point.
    """
    alpha = sample_input(b"chain", 9)
    output, proof = vrf_prove(SK, alpha)
    assert vrf_prove(SK, alpha) == (output, proof)
    point = G2Point.from_compressed_bytes(proof)
    candidates = [
        (-point).to_compressed_bytes(),
        vrf_prove(SK, sample_input(b"chain", 10))[1],
        vrf_prove(OTHER_SK, alpha)[1],
        (point + G2Point.hash_to_curve(b"TEST_DST", b"shift")).to_compressed_bytes(),
    ]
    for candidate in candidates:
        assert candidate != proof
        assert not vrf_verify(PK, alpha, vrf_proof_to_output(candidate), candidate)
    outputs = {
        vrf_prove(sk, sample_input(b"chain", r))[0] for sk in (SK, OTHER_SK) for r in range(5)
    }
    assert len(outputs) == 10


def test_sample_is_reproducible_by_anyone_holding_the_proof():
    """A verifier recomputes the validator's sample from (pk, input, proof) alone."""
    alpha = sample_input(b"chain", 4)
    output, proof = vrf_prove(SK, alpha)
    validator_sample = sample_workers(output, 1000, 0.05)
    derived = vrf_proof_to_output(proof)
    assert vrf_verify(PK, alpha, derived, proof)
    assert sample_workers(derived, 1000, 0.05) == validator_sample
    assert len(validator_sample) == 50


def test_sample_input_is_canonical_and_validated():
    assert sample_input(b"chain", 1) != sample_input(b"chain", 2)
    assert sample_input(b"chain", 1) != sample_input(b"chaim", 1)
    assert sample_input(b"ab", 1) == b"\x14POT_JAX_SAMPLE_INPUT\x01\x02ab" + (1).to_bytes(8, "big")
    with pytest.raises(ValueError, match="chain_id must be 1 to 255 bytes, got 0"):
        sample_input(b"", 1)
    with pytest.raises(ValueError, match="round must be an int in .*got -1"):
        sample_input(b"c", -1)


@pytest.mark.slow
def test_vrf_is_identical_on_the_py_ecc_backend():
    """The reference backend produces the same proof and accepts it."""
    alpha = sample_input(b"chain", 2)
    output, proof = vrf_prove(SK, alpha)
    with bls.use_backend("py_ecc"):
        assert vrf_prove(SK, alpha) == (output, proof)
        assert vrf_verify(PK, alpha, output, proof)


# --- sample size and argument checks ----------------------------------------


@pytest.mark.parametrize(
    ("n", "fraction", "k"),
    [
        (30, 0.1, 3),  # float 0.1 * 30 = 3.0000000000000004; k is the exact ceil
        (10, 0.05, 1),  # at least 1 when fraction > 0
        (7, 1e-9, 1),
        (7, 0.0, 0),
        (7, 1.0, 7),
        (7, 1, 7),
        (1000, 0.05, 50),
        (1000, 0.0501, 51),
        (3, Fraction(1, 3), 1),
        (7, 3 / 7, 3),
        (7, np.float64(0.5), 4),
    ],
)
def test_sample_size_is_the_ceiling_of_the_written_fraction(n, fraction, k):
    assert sample_size(n, fraction) == k
    assert len(sample_workers(bytes(32), n, fraction)) == k


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((bytes(32), 0, 0.5), "n_workers must be a positive int, got 0"),
        ((bytes(32), -3, 0.5), "n_workers must be a positive int, got -3"),
        ((bytes(32), 2.0, 0.5), "n_workers must be a positive int, got 2.0"),
        ((bytes(32), True, 0.5), "n_workers must be a positive int, got True"),
        ((bytes(32), 2**32 + 1, 0.5), r"n_workers must be at most 2\*\*32.*got 4294967297"),
        ((bytes(32), 5, float("nan")), r"fraction must be in \[0, 1\], got nan"),
        ((bytes(32), 5, -0.1), r"fraction must be in \[0, 1\], got -0.1"),
        ((bytes(32), 5, 1.5), r"fraction must be in \[0, 1\], got 1.5"),
        ((bytes(32), 5, float("inf")), r"fraction must be in \[0, 1\], got inf"),
        ((bytes(32), 5, "0.5"), r"fraction must be a number in \[0, 1\], got '0.5'"),
        ((bytes(31), 5, 0.5), "vrf_output must be 32 bytes, got 31"),
        (("x" * 32, 5, 0.5), "vrf_output must be bytes, got str"),
    ],
)
def test_sample_workers_rejects_invalid_arguments_by_name(args, match):
    with pytest.raises(ValueError, match=match):
        sample_workers(*args)


@given(
    st.binary(min_size=32, max_size=32),
    st.integers(1, 300),
    st.floats(0, 1, allow_nan=False),
)
def test_sample_is_a_sorted_subset_of_the_right_size_and_deterministic(output, n, fraction):
    sample = sample_workers(output, n, fraction)
    assert len(sample) == sample_size(n, fraction) == math.ceil(Fraction(str(fraction)) * n)
    assert list(sample) == sorted(set(sample))
    assert all(0 <= i < n for i in sample)
    assert sample_workers(output, n, fraction) == sample


@given(st.binary(min_size=32, max_size=32), st.integers(1, 200), st.data())
def test_samples_are_nested_in_the_fraction(output, n, data):
    """For one VRF output, raising the fraction only adds workers."""
    low = data.draw(st.floats(0, 1))
    high = data.draw(st.floats(low, 1))
    assert set(sample_workers(output, n, low)) <= set(sample_workers(output, n, high))


def test_sample_workers_scales_to_large_rounds():
    """O(k) memory and time: a 1% sample of a million workers."""
    sample = sample_workers(hashlib.sha256(b"big").digest(), 10**6, 0.01)
    assert len(set(sample)) == 10_000 and sample[-1] < 10**6


# --- uniformity -------------------------------------------------------------


def test_rejection_sampling_is_exactly_uniform():
    """Exhaustive over 8-bit words: every residue is produced by the same number of words."""

    class Rejected(Exception):
        pass

    for m in range(1, 257):
        hits = Counter()
        for word in range(256):
            words = iter([word])

            def next_word(words=words):
                try:
                    return next(words)
                except StopIteration:
                    raise Rejected from None

            try:
                hits[_uniform_below(m, next_word, word_bits=8)] += 1
            except Rejected:
                pass
        assert set(hits) == set(range(m)), m
        assert set(hits.values()) == {256 // m}, m


def _outputs(count: int, seed: int) -> list[bytes]:
    """Distinct pseudo-random 32-byte VRF outputs (SHA-256 outputs in practice)."""
    rng = np.random.default_rng(seed)
    return [rng.bytes(32) for _ in range(count)]


def _subset_chi_square(sampler, n: int, k: int, outputs: list[bytes]) -> float:
    """p-value of the chi-square test that sampler's k-subsets of range(n) are uniform."""
    subsets = list(itertools.combinations(range(n), k))
    counts = Counter(sampler(output) for output in outputs)
    assert set(counts) <= set(subsets)
    observed = [counts[s] for s in subsets]
    return stats.chisquare(observed).pvalue


def _naive_shuffle_sampler(n: int, k: int):
    """A classic biased shuffle: swap position i with any position, not one in [i, n)."""

    def sampler(output: bytes) -> tuple[int, ...]:
        values = list(range(n))
        for i in range(k):
            digest = hashlib.sha256(output + bytes([i])).digest()
            j = int.from_bytes(digest, "big") % n  # negligible modulo bias: not the bug tested
            values[i], values[j] = values[j], values[i]
        return tuple(sorted(values[:k]))

    return sampler


def test_subsets_are_uniform_chi_square():
    """All C(7, 3) = 35 subsets occur equally often over 14000 distinct VRF outputs."""
    outputs = _outputs(14_000, seed=20240601)
    p = _subset_chi_square(lambda out: sample_workers(out, 7, 0.4), 7, 3, outputs)
    assert p > P_THRESHOLD


def test_uniformity_test_catches_a_biased_sampler():
    """Canary: the same test, same outputs, rejects the naive-shuffle sampler."""
    outputs = _outputs(14_000, seed=20240601)
    p = _subset_chi_square(_naive_shuffle_sampler(7, 3), 7, 3, outputs)
    assert p < P_THRESHOLD


def test_each_worker_is_sampled_equally_often_chi_square():
    """Marginals for n = 20, k = 5: each worker in 1/4 of 8000 samples.

    Counts within a sample are negatively correlated (no worker twice), which
    makes the multinomial chi-square conservative here.
    """
    outputs = _outputs(8_000, seed=7)
    counts = Counter(i for out in outputs for i in sample_workers(out, 20, 0.25))
    observed = [counts[i] for i in range(20)]
    assert sum(observed) == 8_000 * 5
    assert stats.chisquare(observed).pvalue > P_THRESHOLD


def test_real_vrf_outputs_sample_uniformly():
    """End to end with real proofs: 700 rounds of one validator, 35 subsets."""
    outputs = [vrf_prove(SK, sample_input(b"uniformity", r))[0] for r in range(700)]
    assert len(set(outputs)) == 700
    p = _subset_chi_square(lambda out: sample_workers(out, 7, 0.4), 7, 3, outputs)
    assert p > P_THRESHOLD


def test_verifying_many_proofs_at_once_gives_each_proofs_own_answer():
    """One batched pairing for a round's selections; a bad proof never hides a good one."""
    sks = [bls.KeyGen(bytes([i + 1]) * 32) for i in range(5)]
    pks = [bls.SkToPk(sk) for sk in sks]
    alpha = sample_input(b"chain", 7)
    items = []
    for sk, pk in zip(sks, pks, strict=True):
        output, proof = vrf_prove(sk, alpha)
        items.append((pk, alpha, output, proof))
    assert vrf_verify_many(items) == [True] * 5
    swapped = list(items)
    swapped[1] = (pks[2], *items[1][1:])  # another validator's key
    wrong_output = list(items)
    wrong_output[3] = (*items[3][:2], hashlib.sha256(b"x").digest(), items[3][3])
    other_input = list(items)
    other_input[0] = (pks[0], sample_input(b"chain", 8), *items[0][2:])
    truncated = list(items)
    truncated[4] = (*items[4][:3], items[4][3][:-1])
    for bad in (swapped, wrong_output, other_input, truncated):
        assert vrf_verify_many(bad) == [vrf_verify(*x) for x in bad]
        assert vrf_verify_many(bad).count(False) == 1
    assert vrf_verify_many([]) == []
