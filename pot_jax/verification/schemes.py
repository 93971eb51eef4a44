"""The shipped verification schemes: spot checks, full recomputation, robust aggregation only.

**How the validators' spot-check samples combine.** Each of the n_v
validators draws its own sample of ``p / n_v * W`` workers on average (the
size randomly rounded, ``vrf_sample``) from its own BLS-VRF output on
``sample_input(chain_id, round)``, so the committee recomputes ``p * W``
gradients a round on average: the budget p is summed over validators. The samples are independent and may overlap. We
chose independent draws over a partition of the workers among validators
because a partition needs one shared random permutation per round, which
the validators would have to agree on before sampling: a common coin or a
beacon derived from everyone's VRF outputs, where the last validator to
reveal (or one that withholds) can bias it, and a Byzantine validator's
block of the partition goes unchecked as a block. Independent draws need no
coordination, every sample is checkable on its own (``verify_selection``),
and a Byzantine validator cannot influence an honest one's sample. The price
is the overlap: with q = p / n_v, a given worker is recomputed by some honest
validator with probability

    1 - (1 - q)^h          (h of the n_v validators honest)

against ``h * q`` for a partition; the gap is at most ``(h q)^2 / 2``, under
0.5 percentage points for p <= 0.1. (The original design states the same
formula with each validator sampling a fraction p; here that fraction is
p / n_v: docs/architecture.md, "Differences from the original design".) A
worker that cheats in a fraction c of rounds, independently of the sampling
it cannot predict, escapes ``R`` rounds with probability
``(1 - c (1 - (1 - q)^h))^R``: see :func:`detection_probability`.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable, Mapping
from fractions import Fraction
from numbers import Real
from typing import Any

from pot_jax.crypto.vrf import (
    sample_input,
    sample_workers,
    vrf_prove,
    vrf_verify,
    vrf_verify_many,
)
from pot_jax.learning.aggregation import AggregationRule, make_rule
from pot_jax.learning.aggregation import mean as mean_rule
from pot_jax.registry import Registry
from pot_jax.verification.checks import Verdict, check_submissions
from pot_jax.verification.context import RoundContext, Submission
from pot_jax.verification.fraud_proof import MODES
from pot_jax.verification.scheme import Selection, VerificationScheme

__all__ = [
    "SCHEME_NAMES",
    "detection_probability",
    "full_recompute",
    "make_scheme",
    "robust_only",
    "spot_check",
    "validator_fraction",
]


def _number(field: str, value: Any, *, low: float, high: float, low_open: bool) -> Fraction:
    """``value`` as an exact fraction of its decimal form, checked against the range."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{field} = {value!r}: expected a number in {_range(low, high, low_open)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field} = {value!r}: expected a number in {_range(low, high, low_open)}")
    exact = value if isinstance(value, int | Fraction) else Fraction(str(value))
    if exact > high or exact < low or (low_open and exact == low):
        raise ValueError(f"{field} = {value!r}: expected a number in {_range(low, high, low_open)}")
    return Fraction(exact)


def _range(low: float, high: float, low_open: bool) -> str:
    return f"{'(' if low_open else '['}{low}, {high}]"


def _positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} = {value!r}: expected an int >= 1")
    return value


_SIZE_TAG = b"POT_JAX_SAMPLE_SIZE_V1"


def vrf_sample(vrf_output: bytes, n_workers: int, fraction: Fraction) -> tuple[int, ...]:
    """A VRF-determined sample whose size is ``fraction * n_workers`` randomly rounded.

    With ``x = fraction * n_workers``, the size is ``floor(x) + 1`` with
    probability ``frac(x)`` (a 64-bit uniform from SHA-256 of the output under
    its own tag) and ``floor(x)`` otherwise, so every worker's inclusion
    probability is exactly ``fraction`` and the expected size is ``x``.
    """
    x = Fraction(fraction) * n_workers
    base = math.floor(x)
    u = int.from_bytes(hashlib.sha256(_SIZE_TAG + bytes(vrf_output)).digest()[:8], "little")
    extra = 1 if Fraction(u, 1 << 64) < x - base else 0
    k = min(base + extra, n_workers)
    return sample_workers(vrf_output, n_workers, Fraction(k, n_workers)) if k else ()


def validator_fraction(budget: float, n_validators: int) -> Fraction:
    """The fraction of workers each validator samples: ``budget / n_validators``, exactly."""
    exact = _number("budget", budget, low=0, high=1, low_open=True)
    return exact / _positive_int("n_validators", n_validators)


def detection_probability(
    budget: float,
    n_validators: int,
    honest: int,
    cheat_rate: float = 1.0,
    rounds: int = 1,
    *,
    n_workers: int | None = None,
) -> float:
    """Probability that ``spot_check(budget)`` catches a cheating worker at least once.

    Each validator samples a fraction ``q = budget / n_validators`` of the
    workers independently (``vrf_sample``: each worker's inclusion probability
    is exactly q); only the ``honest`` ones recompute. Per round the worker cheats with probability
    ``cheat_rate``, independently of the samples. Then::

        per_round = cheat_rate * (1 - (1 - q)^honest)
        P(caught within rounds) = 1 - (1 - per_round)^rounds

    Args:
      budget: the scheme's budget p in (0, 1].
      n_validators: the committee size n_v.
      honest: h, the validators that recompute honestly, ``0 <= h <= n_v``.
      cheat_rate: the fraction of rounds the worker cheats in, in [0, 1].
      rounds: how many rounds, ``>= 1``.
      n_workers: W; accepted for compatibility, the inclusion probability is q for any W.
    """
    q = validator_fraction(budget, n_validators)
    if isinstance(honest, bool) or not isinstance(honest, int) or not 0 <= honest <= n_validators:
        raise ValueError(
            f"honest = {honest!r}: expected an int in [0, n_validators={n_validators}]"
        )
    c = _number("cheat_rate", cheat_rate, low=0, high=1, low_open=False)
    rounds = _positive_int("rounds", rounds)
    if n_workers is not None:
        _positive_int("n_workers", n_workers)
    per_round = float(c) * (1.0 - (1.0 - float(q)) ** honest)
    return 1.0 - (1.0 - per_round) ** rounds


def _check_committee(validator_index: Any, n_validators: Any) -> None:
    _positive_int("n_validators", n_validators)
    if (
        isinstance(validator_index, bool)
        or not isinstance(validator_index, int)
        or not 0 <= validator_index < n_validators
    ):
        raise ValueError(
            f"validator_index = {validator_index!r}: expected an int in [0, {n_validators})"
        )


def _mode_threshold(mode: Any, threshold: Any) -> float:
    if mode not in MODES:
        raise ValueError(f"mode = {mode!r}: expected one of {MODES}")
    if mode == "bitwise":
        if threshold not in (None, 0, 0.0):
            raise ValueError(
                f"threshold = {threshold!r}: bitwise mode takes no threshold (leave it None)"
            )
        return 0.0
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, Real)
        or not (math.isfinite(threshold) and threshold > 0)
    ):
        raise ValueError(
            f"threshold = {threshold!r}: tolerance mode needs a finite number > 0 "
            "(see calibrate_threshold)"
        )
    return float(threshold)


def _in_committee(validator_index: Any, n_validators: Any) -> bool:
    try:
        _check_committee(validator_index, n_validators)
    except ValueError:
        return False
    return True


def _aggregation(rule: Any) -> AggregationRule:
    if rule is None:
        return mean_rule()
    if not isinstance(rule, AggregationRule):
        raise ValueError(f"aggregation = {rule!r}: expected an AggregationRule (make_rule(...))")
    return rule


def _is_selection_of(selection: Any, validator_index: Any) -> bool:
    return (
        isinstance(selection, Selection)
        and isinstance(selection.workers, tuple)
        and type(selection.validator) is int
        and selection.validator == validator_index
    )


def spot_check(
    budget: float = 0.1,
    *,
    mode: str = "bitwise",
    threshold: float | None = None,
    aggregation: AggregationRule | None = None,
) -> VerificationScheme:
    """Each validator recomputes a VRF-chosen sample of ``budget / n_v * W`` workers on average.

    The sample size is that expectation randomly rounded (``vrf_sample``), so
    the committee recomputes exactly ``budget * W`` gradients per round on
    average, even when ``budget / n_v * W < 1``: with ceil rounding, 4
    validators at p = 0.1 over 16 workers would recompute 4 a round (25%).

    Every gradient gets the cheap checks; the sampled ones are recomputed and
    compared bitwise or within ``threshold`` (``calibrate_threshold``). See
    the module docstring for how samples combine and why.

    Args:
      budget: p in (0, 1], the fraction of the round's gradients the
        committee recomputes, summed over validators.
      mode: ``"bitwise"`` (same platform, deterministic XLA) or ``"tolerance"``.
      threshold: tolerance mode's normalised-distance threshold.
      aggregation: the rule it pairs with (default: the paper's mean).
    """
    exact_budget = _number("budget", budget, low=0, high=1, low_open=True)
    threshold = _mode_threshold(mode, threshold)
    rule = _aggregation(aggregation)

    def select(ctx, validator_index, n_validators, validator_sk):
        _check_committee(validator_index, n_validators)
        output, proof = vrf_prove(validator_sk, sample_input(ctx.chain_id, ctx.round))
        fraction = validator_fraction(exact_budget, n_validators)
        return Selection(
            validator_index, vrf_sample(output, ctx.n_workers, fraction), output, proof
        )

    def verify_selection(ctx, validator_index, n_validators, validator_pk, selection):
        if not _is_selection_of(selection, validator_index):
            return False
        if not all(
            isinstance(b, bytes) for b in (validator_pk, selection.vrf_output, selection.vrf_proof)
        ):
            return False
        try:
            _check_committee(validator_index, n_validators)
        except ValueError:
            return False
        alpha = sample_input(ctx.chain_id, ctx.round)
        if not vrf_verify(validator_pk, alpha, selection.vrf_output, selection.vrf_proof):
            return False
        fraction = validator_fraction(exact_budget, n_validators)
        return selection.workers == vrf_sample(selection.vrf_output, ctx.n_workers, fraction)

    def verify_selections(ctx, items):
        well_formed, vrf_items = [], []
        for validator_index, n_validators, validator_pk, selection in items:
            good = (
                _is_selection_of(selection, validator_index)
                and all(
                    isinstance(b, bytes)
                    for b in (validator_pk, selection.vrf_output, selection.vrf_proof)
                )
                and _in_committee(validator_index, n_validators)
            )
            well_formed.append(good)
            if good:
                vrf_items.append(
                    (
                        validator_pk,
                        sample_input(ctx.chain_id, ctx.round),
                        selection.vrf_output,
                        selection.vrf_proof,
                    )
                )
        proofs = iter(vrf_verify_many(vrf_items))
        out = []
        for good, (_, n_validators, _, selection) in zip(well_formed, items, strict=True):
            if not good or not next(proofs):
                out.append(False)
                continue
            fraction = validator_fraction(exact_budget, n_validators)
            out.append(
                selection.workers == vrf_sample(selection.vrf_output, ctx.n_workers, fraction)
            )
        return out

    def check(
        ctx: RoundContext, submissions: Mapping[int, Submission], selection: Selection
    ) -> list[Verdict]:
        return check_submissions(
            ctx,
            submissions,
            recompute=selection.workers,
            mode=mode,
            threshold=threshold,
            validator=selection.validator,
        )

    def recomputations(n_workers: int, n_validators: int) -> float:
        # Expected value: each validator samples budget / n_v * W workers on average.
        return float(n_validators * validator_fraction(exact_budget, n_validators) * n_workers)

    params: tuple[tuple[str, Any], ...] = (("budget", budget), ("mode", mode))
    if mode == "tolerance":
        params += (("threshold", threshold),)
    return VerificationScheme(
        name="spot_check",
        select=select,
        verify_selection=verify_selection,
        check=check,
        aggregation=rule,
        budget=float(exact_budget),
        mode=mode,
        threshold=threshold,
        params=params,
        recomputations=recomputations,
        verify_selections=verify_selections,
    )


def full_recompute(
    *,
    mode: str = "bitwise",
    threshold: float | None = None,
    aggregation: AggregationRule | None = None,
) -> VerificationScheme:
    """The expensive reference (p = 1): every validator recomputes every gradient.

    Not a partition: with a partition a Byzantine validator's share would go
    unchecked; here each honest validator alone catches every wrong
    gradient, at a cost of ``n_v * W`` recomputations a round.
    """
    threshold = _mode_threshold(mode, threshold)
    rule = _aggregation(aggregation)

    def select(ctx, validator_index, n_validators, validator_sk):
        _check_committee(validator_index, n_validators)
        return Selection(validator_index, tuple(range(ctx.n_workers)))

    def verify_selection(ctx, validator_index, n_validators, validator_pk, selection):
        return _is_selection_of(selection, validator_index) and selection == Selection(
            validator_index, tuple(range(ctx.n_workers))
        )

    def check(ctx, submissions, selection):
        return check_submissions(
            ctx,
            submissions,
            recompute=range(ctx.n_workers),
            mode=mode,
            threshold=threshold,
            validator=selection.validator,
        )

    params: tuple[tuple[str, Any], ...] = (("mode", mode),)
    if mode == "tolerance":
        params += (("threshold", threshold),)
    return VerificationScheme(
        name="full_recompute",
        select=select,
        verify_selection=verify_selection,
        check=check,
        aggregation=rule,
        budget=1.0,
        mode=mode,
        threshold=threshold,
        params=params,
        recomputations=lambda n_workers, n_validators: n_validators * n_workers,
    )


def robust_only(
    rule_name: str | None = None, *, aggregation: AggregationRule | None = None, **params: Any
) -> VerificationScheme:
    """No recomputation: every gradient that passes the cheap checks is accepted.

    The robust aggregation rule does the defending: ``aggregation`` (a built
    rule), or ``make_rule(rule_name, **params)`` (e.g.
    ``robust_only("coordinate_median")``, ``robust_only("krum", f=2)``).
    """
    if aggregation is not None:
        if rule_name is not None or params:
            raise ValueError("robust_only: give aggregation or rule_name (+ params), not both")
        rule = _aggregation(aggregation)
    else:
        if rule_name is None:
            raise ValueError("robust_only needs an aggregation rule (rule_name or aggregation)")
        rule = make_rule(rule_name, **params)

    def select(ctx, validator_index, n_validators, validator_sk):
        _check_committee(validator_index, n_validators)
        return Selection(validator_index, ())

    def verify_selection(ctx, validator_index, n_validators, validator_pk, selection):
        return _is_selection_of(selection, validator_index) and selection == Selection(
            validator_index, ()
        )

    def check(ctx, submissions, selection):
        return check_submissions(ctx, submissions, validator=selection.validator)

    return VerificationScheme(
        name="robust_only",
        select=select,
        verify_selection=verify_selection,
        check=check,
        aggregation=rule,
        budget=0.0,
        mode="none",
        threshold=0.0,
        params=(("rule", rule.label),),
        recomputations=lambda n_workers, n_validators: 0,
    )


_FACTORIES: dict[str, Callable[..., VerificationScheme]] = {
    "spot_check": spot_check,
    "full_recompute": full_recompute,
    "robust_only": robust_only,
}
SCHEME_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def _robust_only_scheme(*, aggregation: AggregationRule) -> VerificationScheme:
    return robust_only(aggregation=aggregation)


# What flags, config files and the audit build from: each scheme takes the run's
# aggregation rule, and spot_check / full_recompute also the run's budget and mode.
SCHEMES = Registry(
    "verification scheme",
    {
        "spot_check": spot_check,
        "full_recompute": full_recompute,
        "robust_only": _robust_only_scheme,
    },
)


def register_scheme(name: str, factory: Callable[..., VerificationScheme]) -> None:
    """Make a scheme factory selectable as ``--verification NAME[:params]``.

    The factory is called with its spec's parameters plus whichever of
    ``budget``, ``mode``, ``threshold`` and ``aggregation`` it accepts.
    """
    SCHEMES.register(name, factory)


def make_scheme(name: str, **params: Any) -> VerificationScheme:
    """The scheme called ``name`` with keyword ``params``.

    ``make_scheme("spot_check", budget=0.1, mode="bitwise")``;
    ``make_scheme("robust_only", rule_name="krum", f=2)`` (rule parameters pass through).
    """
    try:
        factory = _FACTORIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown verification scheme {name!r}; expected one of {', '.join(SCHEME_NAMES)}"
        ) from None
    signature = inspect.signature(factory)
    takes = ", ".join(p for p in signature.parameters if p != "params")
    if name != "robust_only":
        for key in params:
            if key not in signature.parameters:
                raise ValueError(f"{name} has no parameter {key!r}; it takes {takes}")
    elif "rule_name" not in params:
        raise ValueError(
            "robust_only needs parameter 'rule_name' (an aggregation rule, e.g. "
            "'coordinate_median'), plus that rule's parameters"
        )
    return factory(**params)
