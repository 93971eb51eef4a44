"""Detection experiment: how fast spot checks catch a worker that cheats sometimes.

A worker cheats in each round with probability ``cheat_rate`` (its own coin);
each honest validator samples workers with its real BLS-VRF (the
``spot_check`` scheme's ``select``); a Byzantine validator never reports. The
worker is caught in the first round where it cheats and some honest
validator sampled it. Per seed we record that round (or none within
``rounds``) and compare the fraction caught within ``rounds`` with the
closed form ``detection_probability``. Recomputation itself is not run: with
bitwise checks a sampled wrong gradient is always caught (tested in
tests/verification and tests/protocol), so the sampling is what decides.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time

import numpy as np

from pot_jax.consensus.keys import simulation_keys
from pot_jax.crypto import bls
from pot_jax.verification import detection_probability, make_scheme


class _Ctx:
    """The two RoundContext fields that sampling reads."""

    def __init__(self, chain_id: bytes, round_: int, n_workers: int):
        self.chain_id, self.round, self.n_workers = chain_id, round_, n_workers


def measure_detection(
    *,
    budget: float = 0.1,
    n_validators: int = 4,
    byzantine_validators: int = 1,
    n_workers: int = 16,
    cheat_rate: float = 0.1,
    rounds: int = 1000,
    seeds: int = 100,
    worker: int = 0,
) -> dict:
    """Fraction of seeds in which the cheater is caught within ``rounds``, and the closed form."""
    scheme = make_scheme("spot_check", budget=budget)
    sks, _ = simulation_keys(n_validators)
    honest = list(range(byzantine_validators, n_validators))
    start = time.perf_counter()
    caught_at = []
    for seed in range(seeds):
        chain_id = b"pot-jax/detection/%d" % seed
        coin = np.random.default_rng(seed)
        when = None
        for r in range(rounds):
            if coin.random() >= cheat_rate:
                continue  # honest this round: nothing to catch
            ctx = _Ctx(chain_id, r, n_workers)
            if any(worker in scheme.select(ctx, v, n_validators, sks[v]).workers for v in honest):
                when = r
                break
        caught_at.append(when)
    caught = [r for r in caught_at if r is not None]
    expected = detection_probability(
        budget, n_validators, len(honest), cheat_rate, rounds, n_workers=n_workers
    )
    measured = len(caught) / seeds
    stderr = math.sqrt(max(expected * (1 - expected), 1e-12) / seeds)
    per_round = detection_probability(budget, n_validators, len(honest), cheat_rate, 1)
    return {
        "budget": budget,
        "n_validators": n_validators,
        "byzantine_validators": byzantine_validators,
        "n_workers": n_workers,
        "cheat_rate": cheat_rate,
        "rounds": rounds,
        "seeds": seeds,
        "caught_fraction": measured,
        "closed_form": expected,
        "closed_form_stderr": stderr,
        "per_round_closed_form": per_round,
        "mean_round_caught": float(np.mean(caught)) if caught else None,
        "expected_mean_round": (1 / per_round - 1) if per_round else None,
        "wall_seconds": time.perf_counter() - start,
    }


def measure_prediction(
    *,
    keys: str = "secret",
    budget: float = 0.1,
    n_validators: int = 4,
    byzantine_validators: int = 1,
    n_workers: int = 16,
    rounds: int = 100,
    seeds: int = 100,
    worker: int = 0,
    secret: bytes | None = None,
) -> dict:
    """A cheater that cheats only where it predicts that no validator samples it.

    Its prediction runs each validator's real VRF sampling with the keys it
    can compute from public values: ``simulation_keys``, the derivation every
    run used before secret keys. With ``keys="derived"`` those are the real
    keys and the cheater is never caught. With ``keys="secret"`` the real keys
    come from ``secret`` (or, when None, the operating system), which the
    cheater does not know: its guess is then independent of the real samples,
    and it is caught in each cheating round with the closed form's per-round
    probability d. Per seed, the chance of being caught within ``rounds`` is
    ``1 - (1 - d)^k`` for its k cheating rounds (a public function of its
    guess), and ``expected`` is the mean of that over seeds.
    """
    if keys not in ("derived", "secret"):
        raise ValueError(f"keys = {keys!r}: expected 'derived' or 'secret'")
    scheme = make_scheme("spot_check", budget=budget)
    guess, _ = simulation_keys(n_validators)
    honest = range(byzantine_validators, n_validators)
    d = detection_probability(budget, n_validators, len(honest), 1.0, 1, n_workers=n_workers)
    start = time.perf_counter()
    caught = cheating_rounds = 0
    chances = []
    for seed in range(seeds):
        chain_id = b"pot-jax/prediction/%d" % seed
        if keys == "derived":
            real = guess
        else:
            real = tuple(
                bls.KeyGen(
                    hashlib.sha256(secret + chain_id + i.to_bytes(4, "big")).digest()
                    if secret is not None
                    else secrets.token_bytes(32)
                )
                for i in range(n_validators)
            )
        k, was_caught = 0, False
        for r in range(rounds):
            ctx = _Ctx(chain_id, r, n_workers)
            sampled = (
                worker in scheme.select(ctx, v, n_validators, guess[v]).workers
                for v in range(n_validators)
            )
            if any(sampled):
                continue  # it predicts a check: honest this round
            k += 1
            if not was_caught and any(
                worker in scheme.select(ctx, v, n_validators, real[v]).workers for v in honest
            ):
                was_caught = True
        caught += was_caught
        cheating_rounds += k
        chances.append(1 - (1 - d) ** k)
    expected = float(np.mean(chances))
    stderr = math.sqrt(max(sum(p * (1 - p) for p in chances), 1e-12)) / seeds
    return {
        "keys": keys,
        "budget": budget,
        "n_validators": n_validators,
        "byzantine_validators": byzantine_validators,
        "n_workers": n_workers,
        "rounds": rounds,
        "seeds": seeds,
        "cheating_rounds": cheating_rounds,
        "caught_fraction": caught / seeds,
        "expected": expected,
        "stderr": stderr,
        "per_round_detection": d,
        "wall_seconds": time.perf_counter() - start,
    }
