"""A verifiable random function from BLS signatures, and worker sampling.

Validators choose which workers to spot-check from a VRF output, so workers
cannot predict the sample and the validator cannot choose it.

VRF: the proof is a BLS signature on the input under the VRF's own domain
tag (``VRF_DST``, so it is never a valid vote or worker signature); the output
is ``SHA-256(VRF_OUTPUT_PREFIX || proof)``. A BLS signature is unique: for a
valid public key and an input there is exactly one point that verifies, and
the decoder accepts exactly one encoding of it, so the output is a function
of (key, input) alone; it is unpredictable without the secret key because
BLS is unforgeable. (This is the construction of the BLS-based VRFs in the
literature, e.g. Dodis and Yampolskiy's "verifiable unpredictable function".)

Sampling: ``sample_workers`` expands the output with SHA-256 in counter mode
into 64-bit words, turns them into exactly uniform integers by rejection
sampling, and runs the first ``k`` steps of a Fisher-Yates shuffle of
``range(n_workers)``. The result is a uniformly random ``k``-subset that
anyone holding the proof can recompute.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Callable
from fractions import Fraction
from numbers import Real

from pot_jax.crypto import bls
from pot_jax.crypto.errors import CryptoError

__all__ = [
    "VRF_DST",
    "VRF_OUTPUT_PREFIX",
    "VRF_OUTPUT_SIZE",
    "sample_input",
    "sample_size",
    "sample_workers",
    "vrf_proof_to_output",
    "vrf_prove",
    "vrf_verify",
    "vrf_verify_many",
]

VRF_DST = b"POT_JAX_VRF_BLS12381G2_XMD:SHA-256_SSWU_RO_"
"""Hash-to-curve domain tag of VRF proofs (RFC 9380 section 3.1 tag format)."""

VRF_OUTPUT_PREFIX = b"POT_JAX_VRF_OUTPUT_V1"
VRF_OUTPUT_SIZE = 32

_SAMPLE_INPUT_TAG = b"POT_JAX_SAMPLE_INPUT"
_SAMPLE_INPUT_VERSION = 1
_SAMPLE_STREAM_PREFIX = b"POT_JAX_SAMPLE_WORKERS_V1"
_WORD_BITS = 64
_MAX_WORKERS = 2**32


def _as_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be bytes, got {type(value).__name__}")


def vrf_proof_to_output(proof: bytes) -> bytes:
    """The VRF output carried by ``proof``: ``SHA-256(VRF_OUTPUT_PREFIX || proof)``.

    Only meaningful for a proof that ``vrf_verify`` accepted.
    """
    return hashlib.sha256(VRF_OUTPUT_PREFIX + _as_bytes("proof", proof)).digest()


def vrf_prove(sk: int, alpha: bytes) -> tuple[bytes, bytes]:
    """Evaluate the VRF on ``alpha`` with secret key ``sk``.

    Args:
      sk: a BLS secret key (``bls.KeyGen``).
      alpha: the input, e.g. ``sample_input(chain_id, round)``.

    Returns:
      ``(output, proof)``: the 32-byte output and the 96-byte proof.
    """
    proof = bls.sign_with_dst(sk, _as_bytes("alpha", alpha), VRF_DST)
    return vrf_proof_to_output(proof), proof


def vrf_verify(pk: bytes, alpha: bytes, output: bytes, proof: bytes) -> bool:
    """Whether ``(output, proof)`` is the VRF evaluation of ``alpha`` under ``pk``.

    False for malformed keys or proofs, a key or proof that fails validation,
    a proof of another input or key, or an output that is not the proof's.
    """
    if (
        len(pk) != bls.PUBLIC_KEY_SIZE
        or len(proof) != bls.SIGNATURE_SIZE
        or len(output) != VRF_OUTPUT_SIZE
    ):
        return False
    pk, proof = _as_bytes("pk", pk), _as_bytes("proof", proof)
    try:
        # CoreVerify runs KeyValidate: a valid, non-identity key in G1 is what
        # makes the proof unique.
        if not bls.verify_with_dst(pk, _as_bytes("alpha", alpha), proof, VRF_DST):
            return False
    except CryptoError:
        return False
    return hmac.compare_digest(_as_bytes("output", output), vrf_proof_to_output(proof))


def vrf_verify_many(items) -> list[bool]:
    """``vrf_verify`` of each ``(pk, alpha, output, proof)``, with one batched pairing check.

    Sizes and outputs are checked one by one; the proofs are checked together
    (``bls.batch_verify_with_dst``: random linear combination, every point
    subgroup-checked first). If the batch fails, each is checked alone, so a
    bad proof never hides a good one and the answers equal ``vrf_verify``'s.
    """
    items = [tuple(x) for x in items]
    ok = []
    for pk, alpha, output, proof in items:
        ok.append(
            isinstance(pk, bytes | bytearray)
            and isinstance(proof, bytes | bytearray)
            and isinstance(output, bytes | bytearray)
            and isinstance(alpha, bytes | bytearray)
            and len(pk) == bls.PUBLIC_KEY_SIZE
            and len(proof) == bls.SIGNATURE_SIZE
            and len(output) == VRF_OUTPUT_SIZE
            and hmac.compare_digest(bytes(output), vrf_proof_to_output(bytes(proof)))
        )
    batch = [i for i, good in enumerate(ok) if good]
    if len(batch) > 1:
        try:
            if bls.batch_verify_with_dst(
                [bytes(items[i][0]) for i in batch],
                [bytes(items[i][1]) for i in batch],
                [bytes(items[i][3]) for i in batch],
                VRF_DST,
            ):
                return ok
        except CryptoError:
            pass
    return [good and vrf_verify(*items[i]) for i, good in enumerate(ok)]


def sample_input(chain_id: bytes, round: int) -> bytes:
    """VRF input for a validator's spot-check sample in ``round`` of ``chain_id``.

    Encodes ``(chain id, "sample", round)`` as
    ``u8 len(tag) || tag || u8 version || u8 len(chain_id) || chain_id || u64 round``.
    """
    chain_id = _as_bytes("chain_id", chain_id)
    if not 1 <= len(chain_id) <= 255:
        raise ValueError(f"chain_id must be 1 to 255 bytes, got {len(chain_id)}")
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round < 2**64:
        raise ValueError(f"round must be an int in [0, 2**64), got {round!r}")
    return b"".join(
        (
            bytes([len(_SAMPLE_INPUT_TAG)]),
            _SAMPLE_INPUT_TAG,
            bytes([_SAMPLE_INPUT_VERSION, len(chain_id)]),
            chain_id,
            struct.pack(">Q", round),
        )
    )


def sample_size(n_workers: int, fraction: float) -> int:
    """How many of ``n_workers`` a sample of ``fraction`` holds.

    ``k = ceil(fraction * n_workers)``, computed exactly on the decimal value of
    ``fraction`` as written (``str(fraction)``), so ``0.1 * 30`` gives 3 and not
    the 4 that float rounding would give. Hence ``k >= 1`` whenever
    ``fraction > 0``, ``k == 0`` only for ``fraction == 0``, and ``k <= n_workers``.

    Raises:
      ValueError: ``n_workers`` is not an int in [1, 2**32], or ``fraction`` is not a
        number in [0, 1] (NaN included).
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers <= 0:
        raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
    if n_workers > _MAX_WORKERS:
        raise ValueError(
            f"n_workers must be at most 2**32 (worker ids are 32-bit), got {n_workers}"
        )
    if isinstance(fraction, bool) or not isinstance(fraction, Real):
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if math.isnan(fraction) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    exact = fraction if isinstance(fraction, int | Fraction) else Fraction(str(fraction))
    return math.ceil(exact * n_workers)


def _uniform_below(m: int, next_word: Callable[[], int], word_bits: int = _WORD_BITS) -> int:
    """An exactly uniform integer in ``[0, m)`` from uniform ``word_bits``-bit words.

    Words at or above the largest multiple of ``m`` are rejected, so every
    residue is hit by the same number of words (no modulo bias).
    """
    span = 1 << word_bits
    limit = span - span % m
    while True:
        word = next_word()
        if word < limit:
            return word % m


class _HashWords:
    """64-bit words of SHA-256(prefix || seed || u64 counter), in order."""

    def __init__(self, seed: bytes):
        self._prefix = _SAMPLE_STREAM_PREFIX + seed
        self._counter = 0
        self._words: list[int] = []

    def __call__(self) -> int:
        if not self._words:
            block = hashlib.sha256(self._prefix + struct.pack(">Q", self._counter)).digest()
            self._counter += 1
            self._words = list(struct.unpack(">4Q", block))[::-1]
        return self._words.pop()


def sample_workers(vrf_output: bytes, n_workers: int, fraction: float) -> tuple[int, ...]:
    """A uniformly random subset of ``range(n_workers)`` determined by ``vrf_output``.

    The subset has ``sample_size(n_workers, fraction)`` members (ceil of
    ``fraction * n_workers``, at least 1 when ``fraction > 0``). For a fixed
    output and ``n_workers`` the samples are nested: a larger fraction adds
    workers and never drops any.

    Args:
      vrf_output: 32 bytes, e.g. from ``vrf_prove`` or ``vrf_proof_to_output``.
      n_workers: the number of workers in the round, positive.
      fraction: the share of workers to sample, in [0, 1].

    Returns:
      The sampled worker indices, sorted ascending.

    Raises:
      ValueError: naming the invalid argument and its value.
    """
    if not isinstance(vrf_output, bytes | bytearray | memoryview):
        raise ValueError(f"vrf_output must be bytes, got {type(vrf_output).__name__}")
    if len(vrf_output) != VRF_OUTPUT_SIZE:
        raise ValueError(f"vrf_output must be {VRF_OUTPUT_SIZE} bytes, got {len(vrf_output)}")
    k = sample_size(n_workers, fraction)
    next_word = _HashWords(bytes(vrf_output))
    # Fisher-Yates over a virtual array: `moved[p]` is the value now at
    # position p when it differs from p, so memory is O(k) not O(n_workers).
    moved: dict[int, int] = {}
    chosen = []
    for i in range(k):
        j = i + _uniform_below(n_workers - i, next_word)
        chosen.append(moved.get(j, j))
        moved[j] = moved.get(i, i)
    return tuple(sorted(chosen))
