"""Timing of the BLS layer per backend: what ``pot-jax bench crypto`` reports.

Keys, proofs of possession and votes are generated with the arkworks backend
(byte-identical to py_ecc, and ~100x faster); only the operation being timed
runs on the backend under test. Each figure is the minimum and the median
over repeats, in milliseconds; with other processes on the machine the
minimum is the better estimate of the intrinsic cost.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable, Sequence

from . import bls
from .quorum import ValidatorSet, aggregate_votes, verify_qc, vote_message

__all__ = ["DEFAULT_SIZES", "bench_bls"]

DEFAULT_SIZES = (4, 16, 64, 256, 1024)


def _time_ms(fn: Callable[[], object], *, budget_s: float, max_repeats: int) -> dict[str, float]:
    """Run fn at least once and until budget_s or max_repeats; min/median in ms. Each
    repeat starts with an empty hash_to_G2 memo, so hashing is always timed."""
    times: list[float] = []
    start = time.perf_counter()
    while not times or (len(times) < max_repeats and time.perf_counter() - start < budget_s):
        bls.clear_hash_cache()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"min": min(times), "median": statistics.median(times), "repeats": len(times)}


def _secret_keys(count: int) -> list[int]:
    return [bls.KeyGen(hashlib.sha256(b"pot-jax bench %d" % i).digest()) for i in range(count)]


def bench_bls(
    backend: str,
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    aggregate_count: int = 64,
    budget_s: float = 0.5,
    max_repeats: int = 50,
) -> dict:
    """Milliseconds for Sign, Verify, Aggregate(aggregate_count) and verify_qc per committee size.

    Returns ``{"backend", "sign_ms", "verify_ms", "aggregate_ms",
    "aggregate_count", "qc_verify_ms": {n: ...}, "qc_signers": {n: quorum}}``
    where each timing is ``{"min", "median", "repeats"}``. A QC over n
    validators carries exactly quorum_size(n) signatures. For py_ecc, the
    first use of a set decodes its keys (~7 ms per key), outside the timing.
    """
    largest = max([*sizes, aggregate_count])
    with bls.use_backend("arkworks"):
        sks = _secret_keys(largest)
        pks = [bls.SkToPk(sk) for sk in sks]
        pops = [bls.PopProve(sk) for sk in sks]
        message = vote_message(b"pot-jax-bench", "commit", 0, 0, hashlib.sha256(b"r").digest())
        votes = [bls.Sign(sk, message) for sk in sks]
        sets = {
            n: ValidatorSet.from_registrations(list(zip(pks[:n], pops[:n], strict=True)))
            for n in sizes
        }
        qcs = {
            n: aggregate_votes(vs, dict(enumerate(votes[: vs.quorum]))) for n, vs in sets.items()
        }

    timing = {"budget_s": budget_s, "max_repeats": max_repeats}
    with bls.use_backend(backend) as active:
        result: dict = {"backend": active.name, "aggregate_count": aggregate_count}
        result["sign_ms"] = _time_ms(lambda: bls.Sign(sks[0], message), **timing)
        result["verify_ms"] = _time_ms(lambda: bls.Verify(pks[0], message, votes[0]), **timing)
        result["aggregate_ms"] = _time_ms(lambda: bls.Aggregate(votes[:aggregate_count]), **timing)
        result["qc_verify_ms"] = {}
        result["qc_signers"] = {}
        for n, vs in sets.items():
            vs.public_key_points()  # decode once for this backend, untimed
            qc = qcs[n]
            if not verify_qc(vs, message, qc):
                raise RuntimeError(f"benchmark QC over {n} validators does not verify")
            result["qc_verify_ms"][n] = _time_ms(
                lambda vs=vs, qc=qc: verify_qc(vs, message, qc), **timing
            )
            result["qc_signers"][n] = vs.quorum
    return result
