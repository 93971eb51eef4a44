"""Calibrating the tolerance-mode threshold from honest runs.

In tolerance mode (workers on mixed hardware) an honest gradient differs from
the validator's recomputation by float rounding: the same sums in another
order. ``calibrate_threshold`` measures that noise as the normalised
distance ``||g - g*|| / max(||g*||, eps)`` between gradients computed by a
second, differently compiled path (by default ``Learner.worker_gradients``,
the vmapped fast path, whose rows differ from ``worker_gradient`` by reduction
order) and the canonical ``worker_gradient``, then sets

    threshold = max(multiple * max observed distance, floor)

with ``multiple = 10`` and ``floor = 1e-6`` by default. The margin is there
because a few hundred honest samples do not pin down the tail of the noise;
the floor (about 8 float32 ulps, relative) keeps the threshold positive when
the two paths happen to agree bit for bit. A cheater hiding under the
threshold can move its gradient by at most ``threshold * ||g*||``. The false
rejection rate is measured on fresh honest batches not used for calibration.
On real mixed hardware, pass the other platform's gradients as
``submitted_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from pot_jax.learning.steps import Learner
from pot_jax.verification.fraud_proof import gradient_distance

__all__ = ["DEFAULT_FLOOR", "DEFAULT_MULTIPLE", "CalibrationStats", "calibrate_threshold"]

DEFAULT_MULTIPLE = 10.0
DEFAULT_FLOOR = 1e-6


class CalibrationStats(NamedTuple):
    """What ``calibrate_threshold`` measured.

    Attributes:
      multiple, floor: the rule ``threshold = max(multiple * max_distance, floor)``.
      max_distance, mean_distance: over the calibration gradients.
      n_calibration: how many gradients calibrated it.
      fresh_max_distance: the largest distance on the fresh honest gradients.
      n_fresh: how many fresh gradients.
      false_rejections: fresh gradients whose distance exceeds the threshold.
      false_rejection_rate: ``false_rejections / n_fresh``.
    """

    multiple: float
    floor: float
    max_distance: float
    mean_distance: float
    n_calibration: int
    fresh_max_distance: float
    n_fresh: int
    false_rejections: int
    false_rejection_rate: float


def _distances(
    learner: Learner,
    params: Any,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    submitted_fn: Callable,
    what: str,
) -> np.ndarray:
    out = []
    for i, (x_WxB, y_WxB) in enumerate(batches):
        rows = np.asarray(submitted_fn(params, x_WxB, y_WxB))
        if rows.ndim != 2 or rows.shape[0] != len(y_WxB) or rows.shape[1] != learner.num_params:
            raise ValueError(
                f"{what}[{i}]: submitted_fn returned shape {rows.shape}, expected "
                f"({len(y_WxB)}, {learner.num_params})"
            )
        for w in range(rows.shape[0]):
            canonical = np.asarray(learner.worker_gradient(params, x_WxB[w], y_WxB[w]))
            out.append(gradient_distance(rows[w], canonical))
    if not out:
        raise ValueError(f"{what} is empty: expected at least one (x_WxB, y_WxB) batch")
    distances = np.asarray(out)
    if not np.all(np.isfinite(distances)):
        raise ValueError(f"{what}: some honest gradients are not finite; calibrate on a sane model")
    return distances


def calibrate_threshold(
    learner: Learner,
    params: Any,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    fresh_batches: Sequence[tuple[np.ndarray, np.ndarray]],
    multiple: float = DEFAULT_MULTIPLE,
    floor: float = DEFAULT_FLOOR,
    submitted_fn: Callable | None = None,
) -> tuple[float, CalibrationStats]:
    """The tolerance-mode threshold from honest gradients, and its measured false-rejection rate.

    Args:
      learner: the run's learner.
      params: the model the gradients are taken at.
      batches: calibration rounds, each ``(x_WxBx..., y_WxB)`` for W workers.
      fresh_batches: other honest rounds, to measure false rejections on.
      multiple: the safety factor over the largest observed distance.
      floor: the smallest threshold returned.
      submitted_fn: ``(params, x_WxBx..., y_WxB) -> grads_WxP``, the honest
        workers' path; default ``learner.worker_gradients``.

    Returns:
      ``(threshold, stats)``.
    """
    if not (np.isfinite(multiple) and multiple >= 1):
        raise ValueError(f"multiple = {multiple!r}: expected a finite number >= 1")
    if not (np.isfinite(floor) and floor > 0):
        raise ValueError(f"floor = {floor!r}: expected a finite number > 0")
    fn = learner.worker_gradients if submitted_fn is None else submitted_fn
    calibration = _distances(learner, params, batches, fn, "batches")
    fresh = _distances(learner, params, fresh_batches, fn, "fresh_batches")
    threshold = max(float(multiple) * float(calibration.max()), float(floor))
    false_rejections = int(np.count_nonzero(fresh > threshold))
    return threshold, CalibrationStats(
        multiple=float(multiple),
        floor=float(floor),
        max_distance=float(calibration.max()),
        mean_distance=float(calibration.mean()),
        n_calibration=int(calibration.size),
        fresh_max_distance=float(fresh.max()),
        n_fresh=int(fresh.size),
        false_rejections=false_rejections,
        false_rejection_rate=false_rejections / fresh.size,
    )
