"""Attacks that know the spot checks: correct when they might be recomputed, attacking otherwise.

Against robust aggregation plus spot checks (issue 15), the strongest worker
is the one that sends its honest gradient in every round some honest
validator recomputes it and the best attack on the rule in every other
round. Whether it can is a question of keys: a validator's sample is its
BLS-VRF output on ``(chain id, "sample", round)`` (``spot_check.select``),
a function of the validator's *secret* key.

``sample_aware`` wraps any registered attack (the *inner* attack) at one of
two explicit knowledge levels, ``knows``:

* ``"oracle"``: it holds every validator's secret key: the ``derived``
  (SIMULATION ONLY) key source, whose secrets are a public function
  (:func:`pot_jax.protocol.keys.derived_keys`), or leaked keys passed as
  ``keys``. Each round it runs every validator's real selection
  (``spot_check(budget).select`` with that validator's key) and sends the
  honest gradient when any validator it does not collude with will
  recompute it, the inner attack otherwise: with the right keys it is never
  caught.
* ``"blind"``: secret keys (``random`` or ``files``), the real setting. It
  cannot predict the samples, so in each round it attacks with probability
  ``p`` and is honest otherwise; the first time an honest validator samples
  it while it attacks, it is caught and banned.

Whose coin decides is ``coin`` (``SAMPLE_COINS``):

* ``"own"`` (the default): each worker flips its own (the per-worker,
  per-round generator), so with p < 1 only some Byzantine workers of a round
  attack, which weakens attacks that need collusion (ALIE against a trimmed
  mean needs every Byzantine row on the same side).
* ``"shared"``: the colluders agreed on a ``seed`` off-protocol and all read
  one coin per round, :func:`shared_coin` of (seed, round): they attack in
  the same rounds. The seed is theirs, not the validators', so this costs
  the validators nothing they keep secret; each worker is still caught at
  the same rate per attacking round.
* ``"turns"``: the colluders take turns: in round r only the one of rank
  ``r mod f`` among the Byzantine workers (``ctx.byzantine``, sorted) may
  attack, when the shared coin says so; the others are honest. Only one
  risks a check per round, and each attacks in a fraction p / f of rounds.

``start`` delays every attack to round ``start`` (the run length is public:
colluders that strike in the last rounds leave the model no time to recover
before they are banned). The inner attack is unchanged (a searching one
crafts its vector as if every Byzantine worker sent it, which is true only
with ``coin="shared"`` and p = 1, or the oracle unsampled).

What it may know is the inner attack's ``knowledge`` (``"own"`` or
``"colluding"``, :mod:`pot_jax.attacks.workers`), plus, for ``"oracle"``,
the validators' secret keys and the run's public spot-check parameters
(budget, committee size, chain id). It never reads the validators' state.

Depends on ``pot_jax.learning`` only when imported (and JAX, for the shared
coin, which the benchmark's traced model draws too); the oracle imports the
VRF selection (``pot_jax.verification``) and the simulation keys
(``pot_jax.consensus``) when it first runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pot_jax.attacks.workers import ATTACKS, Attack, AttackContext, _choice, _honest_row, _real
from pot_jax.registry import parse_spec

__all__ = [
    "SAMPLE_COINS",
    "SAMPLE_KNOWLEDGE",
    "SAMPLING_ATTACK_NAMES",
    "inner_spec",
    "predicted_samples",
    "sample_aware",
    "shared_attack",
    "shared_coin",
]

SAMPLE_KNOWLEDGE = ("oracle", "blind")
"""Values of ``sample_aware``'s ``knows``: predicts the validators' samples, or cannot."""

SAMPLE_COINS = ("own", "shared", "turns")
"""Values of ``sample_aware``'s ``coin``: each worker's own, one shared by all, or turns."""

_SHARED_COIN_TAG = 0x5C0  # separates the colluders' coin from any other use of their seed


def shared_coin(seed, round_) -> jax.Array:
    """The colluders' coin of a round: a float32 uniform in [0, 1) of (seed, round) alone.

    Threefry from ``jax.random.key(seed)``, so the protocol attack (Python
    ints, eagerly) and the benchmark's traced model (traced round) draw the
    same bits. Every colluder computes it; no honest participant's secret
    enters it.
    """
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _SHARED_COIN_TAG), round_)
    return jax.random.uniform(key, dtype=jnp.float32)


def shared_attack(seed, round_, p: float) -> jax.Array:
    """Whether the shared coin says attack: ``shared_coin(seed, round) < float32(p)``.

    The one comparison both the protocol and the model make, in float32, so
    their decisions agree bit for bit.
    """
    return shared_coin(seed, round_) < jnp.float32(p)


def inner_spec(text: Any) -> str:
    """The inner attack's spec: in ``sample_aware``'s spec its parameters are joined by ';'.

    ``sample_aware:inner=optimal_alie:low=0.1;points=12,knows=blind`` wraps
    ``optimal_alie:low=0.1,points=12`` (',' separates ``sample_aware``'s own
    parameters). Raises ValueError if it is not an attack spec.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            f"sample_aware: inner = {text!r}, expected an attack spec such as "
            "'optimal_alie' or 'min_max:direction=std' (';' between its parameters)"
        )
    spec = text.replace(";", ",")
    if parse_spec(spec, flag="sample_aware: inner").name == "sample_aware":
        raise ValueError("sample_aware: inner = 'sample_aware...', expected another attack")
    return spec


def _int_at_least(field: str, value: Any, low: int, *, below: int | None = None) -> int:
    bound = f"an int >= {low}" if below is None else f"an int in [{low}, {below})"
    if (
        isinstance(value, bool | np.bool_)
        or not isinstance(value, Integral)
        or value < low
        or (below is not None and value >= below)
    ):
        raise ValueError(f"sample_aware: {field} = {value!r}, expected {bound}")
    return int(value)


def _colluders(value: Any) -> tuple[int, ...]:
    """Validator indices as an int, ``"i;j"`` (a spec value) or a sequence of ints."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(";") if p.strip()]
        if not all(p.isdigit() for p in parts):
            raise ValueError(
                f"sample_aware: colluders = {value!r}, expected validator indices such as '0;2'"
            )
        items: Sequence[Any] = [int(p) for p in parts]
    elif isinstance(value, Integral) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, Sequence):
        items = value
    else:
        raise ValueError(f"sample_aware: colluders = {value!r}, expected validator indices")
    if any(isinstance(v, bool) or not isinstance(v, Integral) or v < 0 for v in items):
        raise ValueError(f"sample_aware: colluders = {value!r}, expected indices >= 0")
    return tuple(sorted({int(v) for v in items}))


def _validator_keys(keys: Any):
    """``n -> secret keys``: the derived (simulation) keys, or the given (leaked) ones."""
    if keys == "derived":
        cache: dict[int, tuple[int, ...]] = {}

        def derived(n: int) -> tuple[int, ...]:
            if n not in cache:
                # derived_keys gives validators simulation_keys(n): public, whatever the seed.
                from pot_jax.consensus.keys import simulation_keys

                cache[n] = simulation_keys(n)[0]
            return cache[n]

        return derived, "derived"
    if (
        isinstance(keys, Sequence)
        and not isinstance(keys, str | bytes)
        and keys
        and all(isinstance(k, Integral) and not isinstance(k, bool) and k > 0 for k in keys)
    ):
        given = tuple(int(k) for k in keys)

        def leaked(n: int) -> tuple[int, ...]:
            if n != len(given):
                raise ValueError(
                    f"sample_aware: the oracle holds {len(given)} validator keys, the run has "
                    f"{n} validators"
                )
            return given

        return leaked, "given"
    raise ValueError(
        f"sample_aware: keys = {keys!r}, expected 'derived' (the simulation key source) or a "
        "sequence of the validators' BLS secret keys"
    )


def predicted_samples(
    ctx: AttackContext, secret_keys: Sequence[int], *, budget: float
) -> tuple[tuple[int, ...], ...]:
    """Each validator's spot-check sample this round, by its real VRF with the key given.

    Runs ``spot_check(budget).select`` for validator ``v`` with
    ``secret_keys[v]`` on the round's public inputs. With the validators'
    true keys this is exactly what each will recompute; with other keys it is
    a guess independent of the true samples.
    """
    from pot_jax.verification.context import RoundContext
    from pot_jax.verification.schemes import spot_check

    n = len(secret_keys)
    if ctx.n_validators < 1 or ctx.n_validators != n:
        raise ValueError(
            f"sample_aware: the round has n_validators = {ctx.n_validators}, the oracle holds "
            f"{n} keys (an oracle needs the committee size; 0 means the caller did not say)"
        )
    if not ctx.chain_id:
        raise ValueError("sample_aware: the round's chain_id is empty; the oracle needs it")
    round_ctx = RoundContext(
        chain_id=ctx.chain_id,
        round=ctx.round,
        params=ctx.params,
        learner=ctx.learner,
        batch_of=ctx.batch_of,
        n_workers=ctx.n_workers,
    )
    scheme = spot_check(budget)
    return tuple(scheme.select(round_ctx, v, n, secret_keys[v]).workers for v in range(n))


def sample_aware(
    *,
    inner: Any = "min_max",
    knows: str = "blind",
    p: float = 1.0,
    keys: Any = "derived",
    budget: float = 0.1,
    colluders: Any = "",
    rule: Any = None,
    coin: str = "own",
    seed: Any = 0,
    start: Any = 0,
) -> Attack:
    """Honest when it might be recomputed, ``inner`` otherwise (see the module docstring).

    Each round the worker first draws from the protocol's per-worker,
    per-round generator, ``rng.random()``; its coin says attack when that is
    below ``p`` (``coin="own"``), or when :func:`shared_attack` of ``seed``
    and the round does (``"shared"``; ``"turns"`` also needs the worker's
    turn), and never before round ``start``. Then:

    * ``knows="blind"``: it attacks iff the coin says so, else it sends its
      honest gradient. It cannot do better: without the keys its coin is
      independent of the samples.
    * ``knows="oracle"``: it attacks iff the coin says so and no validator
      outside ``colluders`` samples it this round
      (:func:`predicted_samples` with ``keys``, for the run's spot-check
      ``budget``); with the true keys it is never caught. ``p`` defaults to
      1 (attack whenever unobserved).

    Args:
      inner: the attack to run when attacking: a spec (its parameters joined
        by ';', :func:`inner_spec`) or an :class:`Attack`.
      knows: ``"oracle"`` or ``"blind"`` (``SAMPLE_KNOWLEDGE``).
      p: the probability of attacking in a round, in [0, 1].
      keys: oracle only: ``"derived"`` (the simulation keys, which anyone
        can compute) or a sequence of the validators' BLS secret keys (leaked).
      budget: oracle only: the run's spot-check budget (public; it sizes the samples).
      colluders: oracle only: Byzantine validators that collude with the
        attacker and will not report it, so their samples are ignored
        (``"0;2"``, or an int); default none, which is always safe.
      rule: the aggregation rule handed to ``inner`` when it searches
        against one and its spec names none (``optimal_alie``, ``optimal_ipm``);
        in a run, the run's aggregation unless given
        (:func:`~pot_jax.attacks.build_attack`).
      coin: ``"own"``, ``"shared"`` or ``"turns"`` (``SAMPLE_COINS``).
      seed: ``"shared"`` and ``"turns"``: the colluders' shared seed, an int
        in [0, 2**31).
      start: the first round it may attack (an int >= 0).
    """
    knows = _choice("sample_aware", "knows", knows, SAMPLE_KNOWLEDGE)
    p = _real("sample_aware", "p", p, expect="a number in [0, 1]", ok=lambda v: 0 <= v <= 1)
    coin = _choice("sample_aware", "coin", coin, SAMPLE_COINS)
    seed = _int_at_least("seed", seed, 0, below=2**31)
    start = _int_at_least("start", start, 0)
    if isinstance(inner, Attack):
        wrapped = inner
    else:
        text = inner_spec(inner)
        named = "rule" in parse_spec(text, flag="sample_aware: inner").kwargs
        extra = {"rule": rule} if rule is not None and not named else {}
        wrapped = ATTACKS.build(text, flag="sample_aware: inner", **extra)
    if wrapped.name == "sample_aware":
        raise ValueError("sample_aware: inner is a sample_aware attack, expected another attack")
    params: tuple[tuple[str, Any], ...] = (("inner", wrapped.label), ("knows", knows), ("p", p))
    if coin != "own":  # the own coin's label is unchanged, so earlier runs keep theirs
        params += (("coin", coin), ("seed", seed))
    if start:
        params += (("start", start),)
    decided: dict[int, bool] = {}

    def coin_says_attack(ctx, worker, rng) -> bool:
        own = rng.random() < p  # always drawn, so the inner attack's stream is the same
        if ctx.round < start:
            return False
        if coin == "own":
            return bool(own)
        if coin == "turns":
            if worker not in ctx.byzantine:
                raise ValueError(
                    f"sample_aware: coin = 'turns', but worker {worker} is not among the "
                    f"round's Byzantine workers {ctx.byzantine}; taking turns needs them"
                )
            if ctx.round % len(ctx.byzantine) != sorted(ctx.byzantine).index(worker):
                return False
        if ctx.round not in decided:  # the Byzantine workers of a round share one draw
            decided.clear()
            decided[ctx.round] = bool(shared_attack(seed, ctx.round, p))
        return decided[ctx.round]

    if knows == "blind":

        def apply(ctx, worker, rng):
            if coin_says_attack(ctx, worker, rng):
                return wrapped.apply(ctx, worker, rng)
            return _honest_row(ctx, worker)

    else:
        keys_of, key_source = _validator_keys(keys)
        budget = _real(
            "sample_aware", "budget", budget, expect="a number in (0, 1]", ok=lambda v: 0 < v <= 1
        )
        ignored = _colluders(colluders)
        params += (("keys", key_source), ("budget", budget), ("colluders", ignored))

        last: dict[tuple, tuple[tuple[int, ...], ...]] = {}

        def samples(ctx):  # the Byzantine workers of a round share one prediction
            key = (ctx.chain_id, ctx.round, ctx.n_workers, ctx.n_validators)
            if key not in last:
                if ctx.n_validators < 1:
                    raise ValueError(
                        "sample_aware: the round's n_validators is 0 (not given); the oracle "
                        "needs the committee size"
                    )
                last.clear()
                last[key] = predicted_samples(ctx, keys_of(ctx.n_validators), budget=budget)
            return last[key]

        def apply(ctx, worker, rng):
            attack = coin_says_attack(ctx, worker, rng)
            if attack:
                watched = (s for v, s in enumerate(samples(ctx)) if v not in ignored)
                attack = not any(worker in s for s in watched)
            if attack:
                return wrapped.apply(ctx, worker, rng)
            return _honest_row(ctx, worker)

    return Attack(
        "sample_aware",
        apply,
        malformed=wrapped.malformed,
        params=params,
        knowledge=wrapped.knowledge,
    )


SAMPLING_ATTACK_NAMES: tuple[str, ...] = ("sample_aware",)
ATTACKS.register("sample_aware", sample_aware)  # once, on import (``pot_jax.attacks`` imports it)
