"""Byzantine worker behaviours: what a cheating worker sends instead of its gradient.

An attack is a factory returning an :class:`Attack`, a small record with a
pure-ish ``apply(ctx, worker, rng) -> sent``: given the round
(:class:`AttackContext`), the Byzantine worker's index and a seeded
``numpy.random.Generator``, it returns the object the worker sends as its
gradient (deterministic in the generator's state).

What an attacker may know is ``Attack.knowledge`` (issue 13: a Byzantine
worker computes its attack from what it can know; one that needs the honest
workers' gradients colludes through a named channel):

* ``"own"``: its own honest gradient ``ctx.grads_WxP[worker]``, its public
  batch, the model and other public data. Such an attack reads no other row
  of ``ctx.grads_WxP`` (its shape aside), so the protocol may hand it a
  matrix holding only the worker's row. Here: honest, sign flip, scaling,
  Gaussian noise, label flipping, lazy, free-riding with ``mode="zero"``,
  garbage, NaN/Inf, wrong shape (and ``inf`` and ``drift`` in
  :mod:`pot_jax.attacks.robust`).
* ``"colluding"``: also every other worker's honest gradient of the round
  (``ctx.grads_WxP``), as ALIE and IPM assume (an omniscient attacker).
  Here: ALIE, IPM, free-riding with ``mode="copy"`` (it copies another
  worker), and the attacks in :mod:`pot_jax.attacks.robust` other than
  ``inf`` and ``drift``. ``cheat_sometimes`` knows what its inner attack knows.

``Attack.knowledge`` defaults to ``"colluding"``, the assumption that
restricts nothing: an attack built without saying (a plugin written before
the field existed) keeps seeing every row.

Two families, flagged by ``Attack.malformed``:

* well-formed but wrong (float32 of shape (P,), finite): sign flip, scaling,
  Gaussian noise, ALIE, IPM, label flipping, lazy, free-riding. The worker
  commits to and signs what it sends (:func:`commitment_of`), so the cheap
  checks pass; only recomputation (or a robust aggregator) catches them.
* malformed: random garbage, NaN/Inf, wrong shape. The cheap checks reject
  them; their commitments may be garbage too.

``cheat_sometimes`` wraps another attack and is honest except in a fraction q
of rounds. Which workers are Byzantine is :func:`choose_byzantine`.
``ATTACK_NAMES`` are the attacks defined here; ``ATTACKS`` (the registry)
also holds those of :mod:`pot_jax.attacks.robust` and any registered plugin.

Depends on ``pot_jax.learning`` only.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import struct
from collections.abc import Callable
from fractions import Fraction
from numbers import Real
from statistics import NormalDist
from typing import Any, NamedTuple, Protocol

import numpy as np

from pot_jax.learning.encoding import flat_digest
from pot_jax.learning.steps import Learner
from pot_jax.registry import Registry, parse_spec

__all__ = [
    "ATTACK_NAMES",
    "GARBAGE_KINDS",
    "KNOWLEDGE",
    "WRONG_SHAPE_KINDS",
    "Attack",
    "AttackContext",
    "alie",
    "alie_z",
    "attack_defaults",
    "build_attack",
    "cheat_sometimes",
    "choose_byzantine",
    "commitment_of",
    "free_rider",
    "garbage",
    "gaussian",
    "honest",
    "ipm",
    "label_flip",
    "lazy",
    "make_attack",
    "nan_inf",
    "scaled",
    "sign_flip",
    "wrong_shape",
]

_BYZANTINE_TAG = b"POT_JAX_BYZANTINE_V1"

KNOWLEDGE = ("own", "colluding")
"""Values of ``Attack.knowledge``: what an attack needs to know (module docstring)."""


class AttackContext(NamedTuple):
    """What a Byzantine worker knows in a round.

    Attributes:
      learner: the run's learner (``worker_gradient`` is the honest computation).
      params: the round's model ``theta_r``.
      batch_of: ``worker -> (x_Bx..., y_B)``, each worker's public batch.
      grads_WxP: every worker's honest gradient this round (W x P float32),
        as honest workers send them.
      round: the round number.
      byzantine: the indices of the Byzantine workers.
      stale_params: ``theta_{r-k}`` for the lazy attack; None when there is no
        older model (round 0), and a lazy worker is then honest.
      num_classes: for label flipping; default: the model's ``num_classes``.
      n_validators: the committee size (public), 0 when unknown.
      chain_id: the run's chain id (public; the VRF input of every sample).
    """

    learner: Learner
    params: Any
    batch_of: Callable[[int], tuple[np.ndarray, np.ndarray]]
    grads_WxP: Any
    round: int
    byzantine: tuple[int, ...]
    stale_params: Any = None
    num_classes: int | None = None
    n_validators: int = 0
    chain_id: bytes = b""

    @property
    def n_workers(self) -> int:
        return int(np.shape(self.grads_WxP)[0])

    @property
    def n_byzantine(self) -> int:
        return len(self.byzantine)


class ApplyFn(Protocol):
    def __call__(self, ctx: AttackContext, worker: int, rng: np.random.Generator) -> Any:
        """What Byzantine ``worker`` sends as its gradient this round.

        Args:
          ctx: the round, as the attacker sees it.
          worker: the Byzantine worker's index.
          rng: randomness; the output is a function of its state.

        Returns:
          Anything; honest workers send float32 arrays of shape (P,).
        """


class Attack(NamedTuple):
    """A named Byzantine worker behaviour.

    Attributes:
      name: the registry name (``ATTACKS.names()``).
      apply: ``(ctx, worker, rng) -> sent``.
      malformed: True if what it sends fails the cheap checks (shape, dtype,
        finiteness); False if it is a well-formed float32 gradient, wrong
        (or, for ``honest`` and the honest rounds of ``cheat_sometimes``, right).
      params: the factory's parameters as ``(name, value)`` pairs.
      knowledge: ``"own"`` if ``apply`` reads only the worker's own row of
        ``ctx.grads_WxP`` (besides its batch, the model and public data);
        ``"colluding"`` if it reads other workers' honest gradients. See
        ``KNOWLEDGE`` and the module docstring.
    """

    name: str
    apply: ApplyFn
    malformed: bool = False
    params: tuple[tuple[str, Any], ...] = ()
    knowledge: str = "colluding"

    @property
    def label(self) -> str:
        """The attack with its parameters, e.g. ``scaled(factor=10.0)``."""
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params)})"


# --------------------------------------------------------------------------- #
# Parameter validation
# --------------------------------------------------------------------------- #


def _real(attack: str, field: str, value: Any, *, expect: str, ok: Callable[[float], bool]):
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
        raise ValueError(f"{attack}: {field} = {value!r}, expected {expect}")
    value = float(value)
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{attack}: {field} = {value!r}, expected {expect}")
    return value


def _choice(attack: str, field: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{attack}: {field} = {value!r}, expected one of {options}")
    return value


def _honest_row(ctx: AttackContext, worker: int) -> np.ndarray:
    return np.array(np.asarray(ctx.grads_WxP)[worker], dtype=np.float32)


def _gradient(learner: Learner, params: Any, x_B: np.ndarray, y_B: np.ndarray) -> np.ndarray:
    return np.array(learner.worker_gradient(params, x_B, y_B), dtype=np.float32)


# --------------------------------------------------------------------------- #
# Well-formed attacks
# --------------------------------------------------------------------------- #


def honest() -> Attack:
    """Sends the honest gradient (a baseline, and the honest rounds of ``cheat_sometimes``)."""

    def apply(ctx, worker, rng):
        return _honest_row(ctx, worker)

    return Attack("honest", apply, knowledge="own")


def sign_flip() -> Attack:
    """Sends ``-g``, its own gradient reversed.

    ByzFL's ``SignFlipping`` sends minus the mean of the honest gradients
    (after Allen-Zhu et al., ICLR 2021), a colluding attack: here that is
    ``ipm`` with ``epsilon=1``.
    """

    def apply(ctx, worker, rng):
        return -_honest_row(ctx, worker)

    return Attack("sign_flip", apply, knowledge="own")


def scaled(*, factor: float = 10.0) -> Attack:
    """Sends ``factor * g`` (``factor != 1``; large factors trip the norm bound)."""
    factor = _real(
        "scaled", "factor", factor, expect="a finite number other than 1", ok=lambda v: v != 1
    )

    def apply(ctx, worker, rng):
        return (np.float32(factor) * _honest_row(ctx, worker)).astype(np.float32)

    return Attack("scaled", apply, params=(("factor", factor),), knowledge="own")


def gaussian(*, sigma: float = 1.0, around_honest: bool = False) -> Attack:
    """Sends ``N(0, sigma^2 I)`` (the usual Gaussian attack), or ``g + N(0, sigma^2 I)``.

    ByzFL's ``Gaussian`` also takes a mean ``mu`` (default 0).
    """
    sigma = _real("gaussian", "sigma", sigma, expect="a finite number > 0", ok=lambda v: v > 0)
    if not isinstance(around_honest, bool):
        raise ValueError(f"gaussian: around_honest = {around_honest!r}, expected a bool")

    def apply(ctx, worker, rng):
        P = np.shape(ctx.grads_WxP)[1]
        noise = (sigma * rng.standard_normal(P)).astype(np.float32)
        return _honest_row(ctx, worker) + noise if around_honest else noise

    return Attack(
        "gaussian",
        apply,
        params=(("sigma", sigma), ("around_honest", around_honest)),
        knowledge="own",
    )


def alie_z(n_workers: int, n_byzantine: int) -> float:
    """Baruch et al. (2019), "A little is enough": ``z_max = Phi^-1((n - s) / n)``.

    ``s = floor(n / 2 + 1) - f`` is the number of honest workers the attacker
    needs on its side for a majority. Outside the paper's range (f so large
    that s < 1, or n < 2) s is clamped to ``[1, n - 1]``; for n < 2, z = 0.
    """
    if n_workers < 2:
        return 0.0
    s = math.floor(n_workers / 2 + 1) - n_byzantine
    s = min(max(s, 1), n_workers - 1)
    return NormalDist().inv_cdf((n_workers - s) / n_workers)


def alie(*, z: float | None = None) -> Attack:
    """Sends ``mean - z * std`` of the honest gradients (per coordinate).

    ``z`` defaults to the paper's ``alie_z(W, f)``; every ALIE worker sends
    the same vector, so together they shift the median and mean. The
    statistics are over all W honest gradients, the std is the population
    one. ByzFL's ``ALittleIsEnough`` sends ``mean + tau * std`` with the
    unbiased std and a fixed ``tau = 1.5``; ``optimal_alie`` searches z.
    """
    if z is not None:
        z = _real("alie", "z", z, expect="a finite number (or None)", ok=lambda v: True)

    def apply(ctx, worker, rng):
        grads = np.asarray(ctx.grads_WxP, dtype=np.float64)
        zz = alie_z(ctx.n_workers, ctx.n_byzantine) if z is None else z
        return (grads.mean(axis=0) - zz * grads.std(axis=0)).astype(np.float32)

    return Attack("alie", apply, params=(("z", z),), knowledge="colluding")


def ipm(*, epsilon: float = 0.1) -> Attack:
    """Inner-product manipulation (Xie et al. 2020): sends ``-epsilon * mean(honest)``.

    The mean is over all W honest gradients. ByzFL's
    ``InnerProductManipulation`` is the same with default ``tau = 2.0``;
    ``fall_of_empires`` and ``optimal_ipm`` are the large and the searched epsilon.
    """
    epsilon = _real("ipm", "epsilon", epsilon, expect="a finite number > 0", ok=lambda v: v > 0)

    def apply(ctx, worker, rng):
        grads = np.asarray(ctx.grads_WxP, dtype=np.float64)
        return (-epsilon * grads.mean(axis=0)).astype(np.float32)

    return Attack("ipm", apply, params=(("epsilon", epsilon),), knowledge="colluding")


def label_flip() -> Attack:
    """Recomputes the gradient with labels ``y -> num_classes - 1 - y``."""

    def apply(ctx, worker, rng):
        x_B, y_B = ctx.batch_of(worker)
        classes = ctx.num_classes
        if classes is None:
            classes = int(ctx.learner.model.module.num_classes)
        y_B = np.asarray(y_B)
        return _gradient(ctx.learner, ctx.params, x_B, (classes - 1 - y_B).astype(y_B.dtype))

    return Attack("label_flip", apply, knowledge="own")


def lazy() -> Attack:
    """Sends the gradient at the stale model ``ctx.stale_params`` (cached old work)."""

    def apply(ctx, worker, rng):
        x_B, y_B = ctx.batch_of(worker)
        stale = ctx.params if ctx.stale_params is None else ctx.stale_params
        return _gradient(ctx.learner, stale, x_B, y_B)

    return Attack("lazy", apply, knowledge="own")


def free_rider(*, mode: str = "zero") -> Attack:
    """Does no work: sends zeros (``mode="zero"``) or another worker's honest gradient (``"copy"``).

    Copying needs another worker's gradient before the round's submissions
    close, so ``"copy"`` is a colluding attack; ``"zero"`` knows nothing.
    """
    mode = _choice("free_rider", "mode", mode, ("zero", "copy"))

    def apply(ctx, worker, rng):
        P = np.shape(ctx.grads_WxP)[1]
        if mode == "zero" or ctx.n_workers < 2:
            return np.zeros(P, np.float32)
        other = int(rng.integers(ctx.n_workers - 1))
        return _honest_row(ctx, other + (other >= worker))

    return Attack(
        "free_rider",
        apply,
        params=(("mode", mode),),
        knowledge="own" if mode == "zero" else "colluding",
    )


# --------------------------------------------------------------------------- #
# Malformed attacks
# --------------------------------------------------------------------------- #

GARBAGE_KINDS = ("bytes", "int32", "float64", "float16", "list", "none", "string", "object")


def garbage(*, kind: str = "random") -> Attack:
    """Sends something that is not a float32 gradient (``kind``, or one at random).

    ``bytes``: 4 P random bytes; ``int32``/``float64``/``float16``: arrays of
    shape (P,) of the wrong dtype; ``list``: a Python list of floats;
    ``none``; ``string``; ``object``: a plain ``object()``.
    """
    kind = _choice("garbage", "kind", kind, ("random", *GARBAGE_KINDS))

    def apply(ctx, worker, rng):
        P = int(np.shape(ctx.grads_WxP)[1])
        k = GARBAGE_KINDS[int(rng.integers(len(GARBAGE_KINDS)))] if kind == "random" else kind
        if k == "bytes":
            return rng.bytes(4 * P)
        if k == "int32":
            return rng.integers(-(2**31), 2**31, size=P, dtype=np.int32)
        if k == "float64":
            return rng.standard_normal(P)
        if k == "float16":
            return rng.standard_normal(P).astype(np.float16)
        if k == "list":
            return rng.standard_normal(P).tolist()
        if k == "none":
            return None
        if k == "string":
            return "gradient"
        return object()

    return Attack("garbage", apply, malformed=True, params=(("kind", kind),), knowledge="own")


def nan_inf(*, kind: str = "nan", fraction: float = 0.01) -> Attack:
    """The honest gradient with ``ceil(fraction * P)`` entries set to NaN, Inf, or both (``mixed``)."""
    kind = _choice("nan_inf", "kind", kind, ("nan", "inf", "mixed"))
    fraction = _real(
        "nan_inf", "fraction", fraction, expect="a number in (0, 1]", ok=lambda v: 0 < v <= 1
    )

    def apply(ctx, worker, rng):
        g = _honest_row(ctx, worker)
        count = math.ceil(fraction * g.size)
        where = rng.choice(g.size, size=count, replace=False)
        if kind == "nan":
            g[where] = np.nan
        elif kind == "inf":
            g[where] = np.where(rng.random(count) < 0.5, np.inf, -np.inf)
        else:
            g[where] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), size=count)
        return g

    return Attack(
        "nan_inf",
        apply,
        malformed=True,
        params=(("kind", kind), ("fraction", fraction)),
        knowledge="own",
    )


WRONG_SHAPE_KINDS = ("truncated", "extended", "matrix", "empty")


def wrong_shape(*, kind: str = "random") -> Attack:
    """A float32 array of the wrong shape: ``(P-1,)``, ``(P+1,)``, ``(1, P)`` or ``(0,)``."""
    kind = _choice("wrong_shape", "kind", kind, ("random", *WRONG_SHAPE_KINDS))

    def apply(ctx, worker, rng):
        g = _honest_row(ctx, worker)
        k = (
            WRONG_SHAPE_KINDS[int(rng.integers(len(WRONG_SHAPE_KINDS)))]
            if kind == "random"
            else kind
        )
        if k == "truncated":
            return g[:-1].copy()
        if k == "extended":
            return np.concatenate([g, np.zeros(1, np.float32)])
        if k == "matrix":
            return g.reshape(1, -1)
        return np.zeros(0, np.float32)

    return Attack("wrong_shape", apply, malformed=True, params=(("kind", kind),), knowledge="own")


# --------------------------------------------------------------------------- #
# Composition
# --------------------------------------------------------------------------- #


def cheat_sometimes(
    *, attack: Attack | str = "sign_flip", q: float = 0.5, rule: Any = None
) -> Attack:
    """Honest except in a fraction ``q`` of rounds, where it runs ``attack``.

    Each round the worker cheats iff ``rng.random() < q``, so with a
    per-round, per-worker generator the decision is independent across rounds
    (and of the validators' samples, which the worker cannot predict).
    ``rule`` is handed to an ``attack`` named by a string that searches
    against an aggregation rule (``optimal_alie``); in a run it defaults to
    the run's aggregation (:func:`attack_defaults`).
    """
    if isinstance(attack, str):
        if attack == "cheat_sometimes":
            raise ValueError("cheat_sometimes: attack = 'cheat_sometimes', expected another attack")
        factory = _FACTORIES.get(attack)
        searches = factory is not None and "rule" in inspect.signature(factory).parameters
        inner = (
            make_attack(attack, rule=rule) if searches and rule is not None else make_attack(attack)
        )
    elif isinstance(attack, Attack):
        inner = attack
    else:
        raise ValueError(
            f"cheat_sometimes: attack = {attack!r}, expected an attack name or an Attack"
        )
    q = _real("cheat_sometimes", "q", q, expect="a number in [0, 1]", ok=lambda v: 0 <= v <= 1)

    def apply(ctx, worker, rng):
        if rng.random() < q:
            return inner.apply(ctx, worker, rng)
        return _honest_row(ctx, worker)

    return Attack(
        "cheat_sometimes",
        apply,
        malformed=inner.malformed,
        params=(("attack", inner.label), ("q", q)),
        knowledge=inner.knowledge,
    )


_FACTORIES: dict[str, Callable[..., Attack]] = {
    "honest": honest,
    "sign_flip": sign_flip,
    "scaled": scaled,
    "gaussian": gaussian,
    "alie": alie,
    "ipm": ipm,
    "label_flip": label_flip,
    "lazy": lazy,
    "free_rider": free_rider,
    "garbage": garbage,
    "nan_inf": nan_inf,
    "wrong_shape": wrong_shape,
    "cheat_sometimes": cheat_sometimes,
}
ATTACK_NAMES: tuple[str, ...] = tuple(_FACTORIES)
ATTACKS = Registry("worker attack", _FACTORIES)


def register_attack(name: str, factory: Callable[..., Attack]) -> None:
    """Make an attack factory selectable as ``--attack NAME[:params]`` (and in audits)."""
    ATTACKS.register(name, factory)


def make_attack(name: str, **params: Any) -> Attack:
    """The attack called ``name`` with keyword ``params`` (e.g. ``make_attack("scaled", factor=-4)``)."""
    try:
        factory = _FACTORIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown attack {name!r}; expected one of {', '.join(ATTACKS.names())}"
        ) from None
    accepted = inspect.signature(factory).parameters
    takes = ", ".join(accepted) if accepted else "no parameters"
    for key in params:
        if key not in accepted:
            raise ValueError(f"attack {name} has no parameter {key!r}; it takes {takes}")
    return factory(**params)


def attack_defaults(text: str, *, aggregation: Any, flag: str = "--attack") -> dict[str, Any]:
    """What the attack ``text`` names takes from its run when its spec does not say.

    An attack whose factory has a ``rule`` parameter searches against an
    aggregation rule (``optimal_ipm``, ``optimal_alie``; ``sample_aware`` and
    ``cheat_sometimes`` hand it to such an inner attack). Like ByzFL's optimal
    attacks, it attacks the rule the run aggregates with: this returns
    ``{"rule": aggregation}`` for it, unless the spec names a rule (an
    override, e.g. ``optimal_alie:rule=krum:f=3``), and ``{}`` for any other
    attack. Raises ValueError for a spec that names no attack.
    """
    spec = parse_spec(text, flag=flag)
    factory = ATTACKS.factory(spec, flag=flag)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without a signature takes no run defaults
        return {}
    if "rule" not in parameters or "rule" in spec.kwargs:
        return {}
    return {"rule": aggregation}


def build_attack(text: str, *, aggregation: Any, flag: str = "--attack") -> Attack:
    """The attack ``text`` names, built for a run that aggregates with ``aggregation``.

    ``aggregation`` (a rule spec such as ``"nnm+krum:f=3"``, or an
    ``AggregationRule``) is the rule a searching attack targets unless its
    spec names another (:func:`attack_defaults`); ``Attack.label`` says which
    rule it searched against. The runner, the config check and the audit
    build a run's attack this way.
    """
    defaults = attack_defaults(text, aggregation=aggregation, flag=flag)
    return ATTACKS.build(text, flag=flag, **defaults)


def choose_byzantine(n_workers: int, fraction: float, seed: int) -> tuple[int, ...]:
    """Which workers are Byzantine: ``floor(fraction * n_workers)`` of them, sorted.

    Deterministic in ``seed`` and independent of numpy's generator
    algorithms: workers are ranked by ``SHA-256(tag || seed || worker)`` and
    the lowest ranks are Byzantine. A larger fraction adds workers and never
    drops any. ``fraction`` is read exactly as written (``0.3 * 10`` is 3).
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers = {n_workers!r}: expected an int >= 1")
    if isinstance(fraction, bool) or not isinstance(fraction, Real):
        raise ValueError(f"fraction = {fraction!r}: expected a number in [0, 1]")
    if isinstance(fraction, float) and not math.isfinite(fraction):
        raise ValueError(f"fraction = {fraction!r}: expected a number in [0, 1]")
    exact = fraction if isinstance(fraction, int | Fraction) else Fraction(str(fraction))
    if not 0 <= exact <= 1:
        raise ValueError(f"fraction = {fraction!r}: expected a number in [0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed = {seed!r}: expected a 64-bit signed int")
    count = math.floor(exact * n_workers)
    prefix = _BYZANTINE_TAG + struct.pack(">q", seed)

    def rank(w: int) -> bytes:
        return hashlib.sha256(prefix + struct.pack(">Q", w)).digest()

    return tuple(sorted(sorted(range(n_workers), key=rank)[:count]))


def commitment_of(
    sent: Any, header: bytes, rng: np.random.Generator, *, hash_name: str = "sha256"
) -> bytes:
    """The commitment a Byzantine worker signs for what it sends.

    For a numeric array it is ``flat_digest(header, sent)``, the hash of
    exactly what it sends, so the signature and commitment checks pass and
    only later checks (shape, dtype, finiteness, norm, recomputation) can
    catch it. Anything else cannot be hashed as a gradient, so it gets 32
    random bytes.
    """
    if isinstance(sent, np.ndarray) and sent.dtype.kind in "fiucb":
        return flat_digest(header, sent, hash_name=hash_name)
    return rng.bytes(32)
