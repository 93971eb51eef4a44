"""The verification-scheme interface: choose what to check, return verdicts.

A scheme is a factory returning a :class:`VerificationScheme`, a small record
of pure functions in the style of ``optax.GradientTransformation``. Given the
round's public inputs (:class:`RoundContext`), the workers' signed
submissions and the validator's randomness, a scheme

1. ``select``: picks the workers a validator recomputes, from randomness the
   validator cannot choose (its VRF output on ``(chain id, "sample", round)``);
2. ``verify_selection``: lets anyone check that a validator's sample came
   from its VRF (so a validator cannot skip a friend or target a rival);
3. ``check``: returns one :class:`Verdict` per worker, with a reason, and a
   :class:`FraudProof` for every gradient recomputation showed to be wrong;

and names the aggregation rule it pairs with and its recomputation budget.
The shipped schemes are ``spot_check`` (VRF-sampled recomputation),
``full_recompute`` (the expensive reference) and ``robust_only`` (no
recomputation; a robust aggregator defends). The building blocks
``cheap_checks``, ``recheck`` and ``check_submissions`` do the checking, so a
new scheme only decides *what* to recompute. For example, a scheme that
recomputes the gradients farthest from the coordinate median::

    import math

    import numpy as np

    from pot_jax.learning import mean
    from pot_jax.verification import (
        Selection, VerificationScheme, cheap_checks, check_submissions)


    def outlier_check(*, fraction: float = 0.2) -> VerificationScheme:
        \"\"\"Recompute the ceil(fraction * W) gradients farthest from the median.\"\"\"

        def select(ctx, validator_index, n_validators, validator_sk):
            return Selection(validator_index, ())  # chosen in check, from the data

        def verify_selection(ctx, validator_index, n_validators, validator_pk, selection):
            return selection == Selection(validator_index, ())

        def check(ctx, submissions, selection):
            ok = {w: np.asarray(s.gradient) for w, s in submissions.items()
                  if cheap_checks(ctx, s, worker=w) is None}
            center = np.median(np.stack(list(ok.values())), axis=0) if ok else 0.0
            far = sorted(ok, key=lambda w: -np.linalg.norm(ok[w] - center))
            chosen = far[: math.ceil(fraction * ctx.n_workers)]
            return check_submissions(
                ctx, submissions, recompute=chosen, validator=selection.validator)

        return VerificationScheme(
            name="outlier_check", select=select, verify_selection=verify_selection,
            check=check, aggregation=mean(), budget=fraction, mode="bitwise",
            recomputations=lambda n_workers, n_validators:
                n_validators * math.ceil(fraction * n_workers))

(A data-driven choice like this one is predictable: a cheater that stays near
the median is never checked. That is why ``spot_check`` samples by VRF.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from pot_jax.learning.aggregation import AggregationRule
from pot_jax.verification.checks import Verdict
from pot_jax.verification.context import RoundContext, Submission

__all__ = [
    "SCHEME_MODES",
    "CheckFn",
    "SelectFn",
    "Selection",
    "VerificationScheme",
    "VerifySelectionFn",
]

SCHEME_MODES = ("bitwise", "tolerance", "none")
"""How a scheme compares recomputations; ``none``: it never recomputes."""


class Selection(NamedTuple):
    """The workers a validator recomputes this round, and the randomness behind them.

    Attributes:
      validator: the validator's index in the committee.
      workers: the chosen workers, sorted ascending.
      vrf_output: the validator's 32-byte VRF output (empty if the scheme uses none).
      vrf_proof: the 96-byte VRF proof (a BLS signature) that anyone can verify.
    """

    validator: int
    workers: tuple[int, ...]
    vrf_output: bytes = b""
    vrf_proof: bytes = b""


class SelectFn(Protocol):
    def __call__(
        self, ctx: RoundContext, validator_index: int, n_validators: int, validator_sk: int
    ) -> Selection:
        """Chooses what validator ``validator_index`` of ``n_validators`` recomputes.

        Args:
          ctx: the round's public inputs.
          validator_index: the validator's index in ``[0, n_validators)``.
          n_validators: the committee size.
          validator_sk: the validator's BLS secret key (its VRF key).

        Returns:
          The validator's :class:`Selection`.
        """


class VerifySelectionFn(Protocol):
    def __call__(
        self,
        ctx: RoundContext,
        validator_index: int,
        n_validators: int,
        validator_pk: bytes,
        selection: Selection,
    ) -> bool:
        """Whether ``selection`` is what ``select`` gives this validator; never raises."""


class CheckFn(Protocol):
    def __call__(
        self, ctx: RoundContext, submissions: Mapping[int, Submission], selection: Selection
    ) -> list[Verdict]:
        """One verdict per worker ``0..W-1``, sorted by worker; never raises on bad submissions.

        Args:
          ctx: the round's public inputs.
          submissions: worker index -> what that worker sent (absent: sent nothing).
          selection: this validator's selection (its ``validator`` is recorded
            in the verdicts).
        """


class VerificationScheme(NamedTuple):
    """A verification scheme as a record of pure functions.

    Attributes:
      name: the scheme's name (``SCHEME_NAMES`` for the shipped ones).
      select: ``(ctx, validator_index, n_validators, validator_sk) -> Selection``.
      verify_selection: ``(ctx, validator_index, n_validators, validator_pk,
        selection) -> bool``.
      check: ``(ctx, submissions, selection) -> list[Verdict]``.
      aggregation: the aggregation rule the scheme pairs with.
      budget: the nominal recomputation budget p, as a fraction of the
        round's W gradients (``spot_check``: the validators' samples
        together; ``full_recompute``: 1; ``robust_only``: 0).
      mode: ``"bitwise"``, ``"tolerance"`` or ``"none"`` (never recomputes);
        pass it with ``threshold`` to ``verify_fraud_proof``.
      threshold: the tolerance-mode threshold (0.0 otherwise).
      params: the factory's parameters as ``(name, value)`` pairs.
      recomputations: ``(n_workers, n_validators) -> int``, the gradients the
        whole committee recomputes per round (the scheme's cost); None if unknown.
      verify_selections: optional ``(ctx, [(validator_index, n_validators,
        validator_pk, selection)]) -> [bool]``, ``verify_selection`` of many at
        once with the same answers (``spot_check`` batches the VRF pairings);
        None: one ``verify_selection`` call each.
    """

    name: str
    select: SelectFn
    verify_selection: VerifySelectionFn
    check: CheckFn
    aggregation: AggregationRule
    budget: float
    mode: str = "none"
    threshold: float = 0.0
    params: tuple[tuple[str, Any], ...] = ()
    recomputations: Callable[[int, int], int] | None = None
    verify_selections: Callable[..., list[bool]] | None = None

    def check_selections(self, ctx, items) -> list[bool]:
        """``verify_selection`` of each ``(validator_index, n_validators, pk, selection)``."""
        if self.verify_selections is not None:
            return list(self.verify_selections(ctx, items))
        return [bool(self.verify_selection(ctx, *item)) for item in items]

    @property
    def label(self) -> str:
        """The scheme with its parameters, e.g. ``spot_check(budget=0.1, mode=bitwise)``."""
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params)})"
