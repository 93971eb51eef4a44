"""Deterministic validator keys for simulations, tests and benchmarks.

Keys are derived from a seed with the draft's KeyGen, registered with real
proofs of possession, and cached per (n, seed) so a test session pays for
key generation once. Never use these keys outside a simulation: anyone who
knows the seed knows every secret key.
"""

from __future__ import annotations

import functools
import hashlib

from pot_jax.crypto import bls
from pot_jax.crypto.quorum import ValidatorSet

__all__ = ["simulation_keys"]


@functools.lru_cache(maxsize=16)
def simulation_keys(
    n: int, seed: bytes = b"pot-jax/simulation"
) -> tuple[tuple[int, ...], ValidatorSet]:
    """(secret keys, validator set) for n validators, reproducible from ``seed``."""
    if n < 1:
        raise ValueError(f"need at least one validator, got n={n}")
    sks = tuple(bls.KeyGen(hashlib.sha256(seed + i.to_bytes(4, "big")).digest()) for i in range(n))
    registrations = [(bls.SkToPk(sk), bls.PopProve(sk)) for sk in sks]
    return sks, ValidatorSet.from_registrations(registrations)
