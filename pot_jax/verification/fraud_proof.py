"""Fraud proofs: self-contained evidence that a worker signed a wrong gradient.

A proof carries the worker's signed commitment (chain id, round, worker,
commitment, signature, public key), the gradient bytes it committed to, and
the digests of the public inputs that reproduce the correct gradient (the
model ``theta_r`` and the worker's batch), plus the comparison rule. Anyone
holding the round's public inputs checks it with one recomputation
(:func:`verify_fraud_proof`):

1. the signature binds the worker to the commitment, and the commitment is
   the hash of the carried gradient, so the worker cannot deny having sent it;
2. the canonical recomputation ``worker_gradient(theta_r, batch)`` differs
   from it: in ``bitwise`` mode any differing byte; in ``tolerance`` mode a
   normalised distance ``||g - g*|| / max(||g*||, eps)`` above the threshold.

The gradient is carried in both modes. In tolerance mode a digest mismatch
alone proves nothing (honest gradients from other hardware have other
digests); in bitwise mode it lets the verifier check the commitment instead
of trusting the prover.

Encoding (integers big-endian, floats IEEE 754 binary64 big-endian)::

    b"POTJAXFP" || u8 version (1)
    || u8 len(chain_id) || chain_id || u64 round || u32 worker
    || 32-byte commitment
    || u16 len(signature) || signature || u16 len(public_key) || public_key
    || u8 len(hash_name) || hash_name (ascii)
    || 32-byte params digest || 32-byte batch digest
    || u8 mode (0 bitwise, 1 tolerance) || f64 threshold
    || u64 len(gradient) || gradient (little-endian float32)

``FraudProof.decode`` accepts exactly the bytes ``encode`` produces and raises
:class:`FraudProofDecodeError` naming the field otherwise.
"""

from __future__ import annotations

import dataclasses
import hmac
import math
import struct

import numpy as np

from pot_jax.crypto.worker_signatures import WorkerSignatureScheme, worker_message
from pot_jax.learning.encoding import COMMITMENT_HASHES, DIGEST_SIZE, flat_digest, flat_row_bytes
from pot_jax.verification.context import RoundContext, batch_digest

__all__ = [
    "DISTANCE_EPS",
    "MODES",
    "FraudProof",
    "FraudProofDecodeError",
    "check_fraud_proof",
    "compare_gradients",
    "gradient_distance",
    "l2_norm",
    "verify_fraud_proof",
]

MODES = ("bitwise", "tolerance")
"""Comparison rules of a recomputation; the run's configuration picks one."""

DISTANCE_EPS = 1e-12
"""Floor of the normaliser in ``gradient_distance`` (avoids 0/0 at a zero gradient)."""

_MAGIC = b"POTJAXFP"
_VERSION = 1
_MODE_CODES = {"bitwise": 0, "tolerance": 1}
_MAX_FIELD = 2**16 - 1


class FraudProofDecodeError(ValueError):
    """Bytes that are not a canonical fraud-proof encoding."""


def _as_bytes(name: str, value) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"FraudProof.{name} must be bytes, got {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class FraudProof:
    """Evidence that ``worker`` signed a wrong gradient in ``round``.

    Attributes:
      chain_id, round, worker, commitment, signature, public_key: the worker's
        signed commitment (``worker_message(chain_id, round, worker, commitment)``).
      gradient: the committed gradient, little-endian float32 bytes (4 P bytes).
      hash_name: the commitment hash of the run.
      params_digest: SHA-256 of the canonical encoding of ``theta_r``.
      batch_digest: ``batch_digest(x_B, y_B)`` of the worker's public batch.
      mode: ``"bitwise"`` or ``"tolerance"``.
      threshold: the tolerance-mode threshold (0.0 in bitwise mode).
    """

    chain_id: bytes
    round: int
    worker: int
    commitment: bytes
    signature: bytes
    public_key: bytes
    gradient: bytes
    hash_name: str
    params_digest: bytes
    batch_digest: bytes
    mode: str
    threshold: float

    def __post_init__(self):
        for name in ("chain_id", "commitment", "signature", "public_key", "gradient"):
            object.__setattr__(self, name, _as_bytes(name, getattr(self, name)))
        for name in ("params_digest", "batch_digest"):
            object.__setattr__(self, name, _as_bytes(name, getattr(self, name)))
        if not 1 <= len(self.chain_id) <= 255:
            raise ValueError(
                f"FraudProof.chain_id: expected 1 to 255 bytes, got {len(self.chain_id)}"
            )
        for name, high in (("round", 2**64), ("worker", 2**32)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < high:
                raise ValueError(f"FraudProof.{name} = {value!r}: expected an int in [0, {high})")
        for name in ("commitment", "params_digest", "batch_digest"):
            if len(getattr(self, name)) != DIGEST_SIZE:
                raise ValueError(
                    f"FraudProof.{name}: expected {DIGEST_SIZE} bytes, got {len(getattr(self, name))}"
                )
        for name in ("signature", "public_key"):
            if len(getattr(self, name)) > _MAX_FIELD:
                raise ValueError(f"FraudProof.{name}: longer than {_MAX_FIELD} bytes")
        if len(self.gradient) % 4:
            raise ValueError(
                f"FraudProof.gradient: {len(self.gradient)} bytes is not a whole number of float32"
            )
        if self.hash_name not in COMMITMENT_HASHES:
            raise ValueError(
                f"FraudProof.hash_name = {self.hash_name!r}: expected one of "
                f"{sorted(COMMITMENT_HASHES)}"
            )
        if self.mode not in MODES:
            raise ValueError(f"FraudProof.mode = {self.mode!r}: expected one of {MODES}")
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError(f"FraudProof.threshold = {threshold!r}: expected a number")
        threshold = float(threshold)
        if self.mode == "bitwise" and threshold != 0.0:
            raise ValueError(f"FraudProof.threshold = {threshold}: bitwise mode expects 0.0")
        if self.mode == "tolerance" and not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(
                f"FraudProof.threshold = {threshold}: tolerance mode expects a finite number > 0"
            )
        object.__setattr__(self, "threshold", threshold)

    def gradient_array(self) -> np.ndarray:
        """The committed gradient as a flat float32 array (read-only)."""
        return np.frombuffer(self.gradient, dtype="<f4")

    def message(self) -> bytes:
        """The bytes the worker signed."""
        return worker_message(self.chain_id, self.round, self.worker, self.commitment)

    def encode(self) -> bytes:
        """The canonical bytes of this proof (see the module docstring)."""
        hash_name = self.hash_name.encode("ascii")
        return b"".join(
            (
                _MAGIC,
                bytes([_VERSION, len(self.chain_id)]),
                self.chain_id,
                struct.pack(">QI", self.round, self.worker),
                self.commitment,
                struct.pack(">H", len(self.signature)),
                self.signature,
                struct.pack(">H", len(self.public_key)),
                self.public_key,
                bytes([len(hash_name)]),
                hash_name,
                self.params_digest,
                self.batch_digest,
                struct.pack(">Bd", _MODE_CODES[self.mode], self.threshold),
                struct.pack(">Q", len(self.gradient)),
                self.gradient,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> FraudProof:
        """Inverse of ``encode``.

        Raises:
          FraudProofDecodeError: naming the field that is truncated or invalid,
            or the trailing bytes.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FraudProofDecodeError(
                f"a fraud proof is decoded from bytes, got {type(data).__name__}"
            )
        view = bytes(data)
        pos = 0

        def take(n: int, field: str) -> bytes:
            nonlocal pos
            if pos + n > len(view):
                raise FraudProofDecodeError(
                    f"fraud proof truncated in {field}: needs {n} bytes at offset {pos}, "
                    f"only {len(view) - pos} left"
                )
            out = view[pos : pos + n]
            pos += n
            return out

        magic = take(len(_MAGIC), "magic")
        if magic != _MAGIC:
            raise FraudProofDecodeError(f"fraud proof starts with {magic!r}, expected {_MAGIC!r}")
        version = take(1, "version")[0]
        if version != _VERSION:
            raise FraudProofDecodeError(f"fraud proof version {version}, expected {_VERSION}")
        chain_id = take(take(1, "chain id length")[0], "chain id")
        round_, worker = struct.unpack(">QI", take(12, "round and worker"))
        commitment = take(DIGEST_SIZE, "commitment")
        signature = take(struct.unpack(">H", take(2, "signature length"))[0], "signature")
        public_key = take(struct.unpack(">H", take(2, "public key length"))[0], "public key")
        raw_hash = take(take(1, "hash name length")[0], "hash name")
        params_digest = take(DIGEST_SIZE, "params digest")
        batch = take(DIGEST_SIZE, "batch digest")
        mode_code, threshold = struct.unpack(">Bd", take(9, "mode and threshold"))
        (length,) = struct.unpack(">Q", take(8, "gradient length"))
        gradient = take(length, "gradient")
        if pos != len(view):
            raise FraudProofDecodeError(
                f"fraud proof has {len(view) - pos} trailing bytes after the gradient"
            )
        modes = {code: name for name, code in _MODE_CODES.items()}
        if mode_code not in modes:
            raise FraudProofDecodeError(f"fraud proof mode code {mode_code}, expected 0 or 1")
        try:
            hash_name = raw_hash.decode("ascii")
            return cls(
                chain_id=chain_id,
                round=round_,
                worker=worker,
                commitment=commitment,
                signature=signature,
                public_key=public_key,
                gradient=gradient,
                hash_name=hash_name,
                params_digest=params_digest,
                batch_digest=batch,
                mode=modes[mode_code],
                threshold=threshold,
            )
        except (UnicodeDecodeError, ValueError) as error:
            raise FraudProofDecodeError(f"invalid fraud proof: {error}") from None


def l2_norm(x: np.ndarray) -> float:
    """The L2 norm of a flat array, accumulated in float64.

    numpy's pairwise summation rather than a BLAS dot: the result is the same
    on every machine with the same numpy, which matters for a consensus rule
    like the norm bound (and BLAS thread pools idle after XLA work made
    ``np.linalg.norm`` ~100x slower here).
    """
    return math.sqrt(float(np.add.reduce(np.square(np.asarray(x).reshape(-1), dtype=np.float64))))


def gradient_distance(submitted_P: np.ndarray, expected_P: np.ndarray) -> float:
    """Normalised distance ``||g - g*|| / max(||g*||, DISTANCE_EPS)``, in float64."""
    g = np.asarray(submitted_P, dtype=np.float64)
    g_star = np.asarray(expected_P, dtype=np.float64)
    return l2_norm(g - g_star) / max(l2_norm(g_star), DISTANCE_EPS)


def compare_gradients(
    submitted_P: np.ndarray, expected_P: np.ndarray, *, mode: str, threshold: float = 0.0
) -> tuple[bool, str]:
    """Whether a well-formed submitted gradient matches the recomputation, and why.

    Equal bytes always match. ``bitwise``: nothing else does. ``tolerance``:
    a normalised distance at most ``threshold`` matches. If the recomputation
    itself is not finite (a diverged model) the comparison is bitwise, since
    distances to it mean nothing.
    """
    got = flat_row_bytes(submitted_P)
    want = flat_row_bytes(expected_P)
    if got.shape == want.shape and np.array_equal(got, want):
        return True, "matches the recomputation bit for bit"
    if mode == "tolerance" and np.all(np.isfinite(expected_P)):
        distance = gradient_distance(submitted_P, expected_P)
        if distance <= threshold:
            return True, f"normalised distance {distance:.3g} <= threshold {threshold:.3g}"
        return False, f"normalised distance {distance:.3g} > threshold {threshold:.3g}"
    if got.shape != want.shape:
        return False, f"{got.size // 4} entries where the recomputation has {want.size // 4}"
    differ = int(np.count_nonzero(np.any(got.reshape(-1, 4) != want.reshape(-1, 4), axis=1)))
    return False, f"{differ} of {want.size // 4} entries differ from the recomputation bitwise"


def check_fraud_proof(
    proof: FraudProof,
    ctx: RoundContext,
    *,
    signature_scheme: WorkerSignatureScheme | None = None,
    mode: str | None = None,
    threshold: float | None = None,
) -> tuple[bool, str]:
    """:func:`verify_fraud_proof`, with the reason for the answer."""
    if not isinstance(proof, FraudProof):
        return False, f"not a FraudProof: {type(proof).__name__}"
    scheme = ctx.signature_scheme if signature_scheme is None else signature_scheme
    who = f"proof against worker {proof.worker}"
    if proof.chain_id != ctx.chain_id or proof.round != ctx.round:
        return False, (
            f"{who} is for chain {proof.chain_id!r} round {proof.round}, "
            f"this context is chain {ctx.chain_id!r} round {ctx.round}"
        )
    if proof.worker >= ctx.n_workers:
        return False, f"{who}: no such worker (n_workers = {ctx.n_workers})"
    if mode is not None and proof.mode != mode:
        return False, f"{who} uses {proof.mode} mode, the run uses {mode}"
    rule_threshold = proof.threshold if threshold is None else float(threshold)
    keys = ctx.worker_public_keys
    if keys is not None and not hmac.compare_digest(proof.public_key, keys[proof.worker]):
        return False, f"{who}: public key is not the worker's registered key"
    try:
        signed = scheme.verify(proof.public_key, proof.message(), proof.signature)
    except (TypeError, ValueError):
        signed = False
    if not signed:
        return False, f"{who}: the worker's signature does not verify"
    if proof.hash_name != ctx.hash_name:
        return False, f"{who} uses commitment hash {proof.hash_name}, the run uses {ctx.hash_name}"
    if len(proof.gradient) != 4 * ctx.num_params:
        return False, (
            f"{who}: gradient has {len(proof.gradient) // 4} entries, model expects {ctx.num_params}"
        )
    submitted = proof.gradient_array()
    digest = flat_digest(ctx.learner.header, submitted, hash_name=ctx.hash_name)
    if not hmac.compare_digest(digest, proof.commitment):
        return False, f"{who}: the carried gradient does not hash to the signed commitment"
    if not hmac.compare_digest(proof.params_digest, ctx.params_digest):
        return False, f"{who} is about another model than this round's theta_r"
    x_B, y_B = ctx.batch_of(proof.worker)
    if not hmac.compare_digest(proof.batch_digest, batch_digest(x_B, y_B)):
        return False, f"{who} names another batch than the worker's public batch"
    expected = np.asarray(ctx.learner.worker_gradient(ctx.params, x_B, y_B))
    matches, detail = compare_gradients(
        submitted, expected, mode=proof.mode, threshold=rule_threshold
    )
    if matches:
        return False, f"{who} fails: the signed gradient {detail}"
    return True, f"{who} holds: the signed gradient {detail}"


def verify_fraud_proof(
    proof: FraudProof,
    ctx: RoundContext,
    *,
    signature_scheme: WorkerSignatureScheme | None = None,
    mode: str | None = None,
    threshold: float | None = None,
) -> bool:
    """Whether ``proof`` shows that its worker signed a wrong gradient in ``ctx``'s round.

    One recomputation (``worker_gradient`` on the worker's public batch). A
    proof against an honest worker fails. Never raises on a bad proof.

    Args:
      proof: the fraud proof.
      ctx: the round's public inputs (model, batches, signature scheme, keys).
      signature_scheme: overrides ``ctx.signature_scheme``.
      mode: the run's comparison mode; the proof must use it. Pass it (and
        ``threshold``): otherwise the proof's own rule is trusted, and a
        tolerance-mode proof with a tiny threshold could convict an honest
        worker on other hardware.
      threshold: the run's tolerance threshold; the distance must exceed it.
    """
    return check_fraud_proof(
        proof, ctx, signature_scheme=signature_scheme, mode=mode, threshold=threshold
    )[0]
