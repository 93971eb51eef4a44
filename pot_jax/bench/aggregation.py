"""Cost of every aggregation rule and pre-aggregator (issue 15, "Speed").

For W = 16 and 64 workers and P = 203,530 parameters (the 784-256-10 MLP),
each registered rule, and each pre-aggregator composed with the mean (plus
the issue's ``nnm+krum``), is jitted once with the mask as an argument and
timed against the mean in the same process: every round times every rule
once, in a rotated order; a sample repeats a rule until it lasts
``min_sample_ms`` (each call blocked on); a rule's ``jax_ms`` is the median
over rounds and its ``ratio_to_mean`` the median over rounds of its ms over
the mean's ms in that round. The first call (trace and compile) is timed
apart and excluded. The plain NumPy reference
(:mod:`pot_jax.learning.reference`, float64) is timed the same way with
fewer rounds, and ``rel_diff`` is the largest difference between the two
outputs over the largest reference value.

Settings: float32 standard normal rows (seed 0), all W rows accepted; ``f``
is W // 4, lowered to the largest the rule is defined for with W rows
(Bulyan: (W - 3) // 4); ``trimmed_mean`` trims f, ``multi_krum`` averages
``m = W - f``, ``centered_clipping`` and ``clipping`` use 1.0, ``bucketing``
``s = 2``. MDA at W = 64 with f = 16 would search C(64, 16) ~ 4.9e14 subsets:
it is reported as skipped, with the reason, and ``mda_cost`` times the exact
search over (W, f) pairs it can do.

Run: ``python -m pot_jax.bench.aggregation --json`` (about 2 minutes on a
2-core CPU, most of it NumPy at W = 64); writes
benchmarks/results/aggregation.json and refuses to overwrite it without
``--force``. Numbers are noisy on a shared machine; the ratios, measured
within one run, are what to compare.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pot_jax.learning import reference
from pot_jax.learning.aggregation import PRE_AGGREGATOR_NAMES, RULE_NAMES, RULES, make_rule
from pot_jax.registry import ComponentSpec
from pot_jax.runinfo import run_metadata

MLP_PARAMS = 203_530  # 784-256-10: 784*256 + 256 + 256*10 + 10
DEFAULT_OUT = Path("benchmarks/results/aggregation.json")
# The (W, f) pairs whose exact MDA search is timed (C(W, f) subsets each); (32, 4)
# and (64, 3) are past its bound and show up as skipped.
MDA_GRID = ((16, 2), (16, 4), (16, 7), (32, 2), (32, 3), (32, 4), (64, 1), (64, 2), (64, 3))

# Why each rule costs what it does, next to the mean's one pass over the W x P
# rows (memory-bound, ~0.3 ms at W=16). The Gram matrix X X^T that pairwise
# distances need is W^2 P multiply-adds, ~2.5-3 ms at W=16, the same in NumPy.
_GRAM = "the Gram matrix X X^T for pairwise distances (W^2 P multiply-adds, ~W/2 x the mean's work)"
_SORT = "a sorting network per coordinate (W=16: 63 compare-exchanges; W>32 layer by layer)"
COST = {
    "mean": "one pass over the rows",
    "coordinate_median": _SORT,
    "trimmed_mean": _SORT,
    "krum": _GRAM,
    "multi_krum": _GRAM,
    "geometric_median": f"the coordinate-wise median it starts from, then {_GRAM}",
    "centered_clipping": _GRAM,
    "mda": f"{_GRAM}, then C(W, f) W^2 work over the subsets (exponential in f)",
    "monna": "the coordinate-wise median (its reference), then one distance per row",
    "meamed": f"{_SORT}, then a window of n - f ranks around the median",
    "caf": f"{_GRAM}, then 2f exact eigendecompositions of W x W matrices (W=64: 32)",
    "bulyan": f"{_GRAM}, W - 2f Krum picks in W-space, then {_SORT} and a window",
    "nnm": f"{_GRAM} and a W x W mixing product over P (another W^2 P)",
    "bucketing": "a ceil(W/s) x W mixing product over P",
    "clipping": "row norms, then a scaling pass",
    "arc": "row norms, then a scaling pass",
}


def bench_specs(num_workers: int) -> list[tuple[str, dict[str, Any]]]:
    """The (name, parameters) pairs measured at W workers, f as the module says."""
    f = num_workers // 4
    specs = [(name, {}) for name in RULE_NAMES] + [
        (f"{pre}+mean", {}) for pre in PRE_AGGREGATOR_NAMES
    ]
    specs.append(("nnm+krum", {}))
    fixed = {
        "trimmed_mean": {"trim": f},
        "multi_krum": {"f": f, "m": num_workers - f},
        "centered_clipping": {"tau": 1.0},
        "clipping+mean": {"c": 1.0},
        "bucketing+mean": {"s": 2, "seed": 0},
    }
    out = []
    for name, _ in specs:
        params = fixed.get(name)
        if params is None:
            params = {"f": f} if "f" in _takes(name) else {}
        while "f" in params and make_rule(name, **params).min_accepted > num_workers:
            params = {**params, "f": params["f"] - 1}
        out.append((name, params))
    return out


def _takes(name: str) -> set[str]:
    """The parameters the rule or composition ``name`` takes."""
    factory = RULES.factory(ComponentSpec(name), flag="bench aggregation")
    return set(inspect.signature(factory).parameters)


def _spec_text(name: str, params: dict[str, Any]) -> str:
    return name + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")


def _sample_ms(fn: Callable[[], Any], number: int) -> float:
    """ms per call of ``fn`` over ``number`` calls, each blocked on."""
    t0 = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t0) * 1e3 / number


def _calls_per_sample(one_call_ms: float, min_sample_ms: float) -> int:
    return max(1, min(1000, math.ceil(min_sample_ms / max(one_call_ms, 1e-3))))


def _interleaved(
    calls: dict[str, Callable[[], Any]], rounds: int, min_sample_ms: float
) -> dict[str, list[float]]:
    """ms per call of each function, one sample per round, the order rotated each round."""
    names = list(calls)
    number = {k: _calls_per_sample(_sample_ms(calls[k], 1), min_sample_ms) for k in names}
    samples: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            samples[k].append(_sample_ms(calls[k], number[k]))
    return samples


def _ratio(samples: list[float], base: list[float]) -> float:
    return statistics.median(s / b for s, b in zip(samples, base, strict=True))


def _measure_workers(
    num_workers: int, num_params: int, repeats: int, numpy_repeats: int, min_sample_ms: float
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    grads_np = rng.standard_normal((num_workers, num_params)).astype(np.float32)
    mask_np = np.ones(num_workers, dtype=bool)
    grads_WxP, mask_W = jnp.asarray(grads_np), jnp.asarray(mask_np)
    rows, jax_calls, numpy_calls, outputs = {}, {}, {}, {}
    for name, params in bench_specs(num_workers):
        rule = make_rule(name, **params)
        row = {
            "rule": name,
            "spec": _spec_text(name, params),
            "label": rule.label,
            "W": num_workers,
            "P": num_params,
            "f": params.get("f", params.get("trim")),
            "cost": COST[name.split("+")[0]],
        }
        rows[name] = row
        aggregate = jax.jit(rule.aggregate)
        t0 = time.perf_counter()
        try:
            out_P = jax.block_until_ready(aggregate(grads_WxP, mask_W))
        except ValueError as err:  # mda refuses a search it cannot do exactly
            row["skipped"] = str(err)
            continue
        row["compile_s"] = round(time.perf_counter() - t0, 3)
        outputs[name] = np.asarray(out_P, np.float64)
        jax_calls[name] = functools.partial(aggregate, grads_WxP, mask_W)
        numpy_calls[name] = functools.partial(
            reference.aggregate, name, grads_np, mask_np, **params
        )
    jax_ms = _interleaved(jax_calls, repeats, min_sample_ms)
    numpy_ms = _interleaved(numpy_calls, numpy_repeats, min_sample_ms)
    for name in jax_calls:
        expected = numpy_calls[name]()
        scale = float(np.max(np.abs(expected))) or 1.0
        rows[name].update(
            jax_ms=round(statistics.median(jax_ms[name]), 4),
            numpy_ms=round(statistics.median(numpy_ms[name]), 3),
            ratio_to_mean=round(_ratio(jax_ms[name], jax_ms["mean"]), 2),
            numpy_ratio_to_mean=round(_ratio(numpy_ms[name], numpy_ms["mean"]), 2),
            rel_diff=float(np.max(np.abs(outputs[name] - expected)) / scale),
        )
    return list(rows.values())


def _mda_cost(
    grid: Sequence[tuple[int, int]], num_params: int, repeats: int, min_sample_ms: float
) -> list[dict[str, Any]]:
    """ms of the exact MDA search per (W, f), each against the mean at that W."""
    out = []
    for num_workers, f in grid:
        row = {"W": num_workers, "f": f, "subsets": math.comb(num_workers, f)}
        grads_WxP = jnp.asarray(
            np.random.default_rng(0).standard_normal((num_workers, num_params)), jnp.float32
        )
        mask_W = jnp.ones(num_workers, bool)
        mda = jax.jit(make_rule("mda", f=f).aggregate)
        mean = jax.jit(make_rule("mean").aggregate)
        try:
            jax.block_until_ready(mda(grads_WxP, mask_W))
        except ValueError as err:
            out.append({**row, "skipped": str(err)})
            continue
        jax.block_until_ready(mean(grads_WxP, mask_W))
        ms = _interleaved(
            {
                "mda": functools.partial(mda, grads_WxP, mask_W),
                "mean": functools.partial(mean, grads_WxP, mask_W),
            },
            repeats,
            min_sample_ms,
        )
        out.append(
            {
                **row,
                "jax_ms": round(statistics.median(ms["mda"]), 3),
                "ratio_to_mean": round(_ratio(ms["mda"], ms["mean"]), 2),
            }
        )
    return out


def measure_aggregation(
    *,
    workers: Sequence[int] = (16, 64),
    params: int = MLP_PARAMS,
    repeats: int = 15,
    numpy_repeats: int = 3,
    min_sample_ms: float = 20.0,
    mda_grid: Sequence[tuple[int, int]] = MDA_GRID,
) -> dict[str, Any]:
    """ms per aggregation of every rule at each W, against the mean and NumPy (see module doc)."""
    start, load_start = time.perf_counter(), os.getloadavg()
    results = []
    for num_workers in workers:
        results += _measure_workers(num_workers, params, repeats, numpy_repeats, min_sample_ms)
    over = [
        {"spec": r["spec"], "ratio_to_mean": r["ratio_to_mean"], "reason": r["cost"]}
        for r in results
        if r["W"] == 16 and r.get("ratio_to_mean", 0) > 10
    ]
    return {
        "benchmark": "aggregation",
        "settings": {
            "workers": list(workers),
            "params": params,
            "dtype": "float32",
            "data": "standard normal, numpy seed 0; every row accepted (mask passed as an argument)",
            "f": "W // 4, lowered to the largest the rule is defined for with W rows",
            "repeats": repeats,
            "numpy_repeats": numpy_repeats,
            "min_sample_ms": min_sample_ms,
            "timing": "median over interleaved rounds; ratio: median of per-round ratios",
        },
        **run_metadata(),
        "numpy_version": np.__version__,
        "results": results,
        "over_10x_mean_at_W16": over,
        "mda_cost": _mda_cost(mda_grid, params, max(3, repeats // 3), min_sample_ms),
        "mda_note": (
            "exact MDA searches the C(W, f) sets of rows to drop, W^2 work each, and refuses "
            "C(W, f) W^2 > 2^24: practical for W <= 16 at any f, W = 32 with f <= 3, "
            "W = 64 with f <= 2; past that use another rule"
        ),
        "wall_seconds": round(time.perf_counter() - start, 1),
        # Other processes share the CPU: the 1, 5, 15-minute load averages at both ends.
        "load_average": {"start": load_start, "end": os.getloadavg()},
    }


def describe_existing(path: Path) -> str:
    """One line saying what a result file holds."""
    try:
        old = json.loads(path.read_text())
        return (
            f"{path} holds the aggregation benchmark of {old.get('utc_time')} "
            f"(git {str(old.get('git_commit'))[:10]}, W = {old['settings']['workers']}, "
            f"P = {old['settings']['params']})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return f"{path} exists ({path.stat().st_size} bytes, not an aggregation result)"


def table(result: dict[str, Any]) -> str:
    """The result as a text table: rule, W, JAX ms, NumPy ms, ratio to the mean."""
    lines = [f"{'rule':34s} {'W':>3s} {'JAX ms':>9s} {'NumPy ms':>10s} {'x mean':>7s}"]
    for r in result["results"]:
        if "skipped" in r:
            lines.append(f"{r['spec']:34s} {r['W']:3d} skipped: {r['skipped'][:60]}")
        else:
            lines.append(
                f"{r['spec']:34s} {r['W']:3d} {r['jax_ms']:9.2f} {r['numpy_ms']:10.1f} "
                f"{r['ratio_to_mean']:7.1f}"
            )
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _workers(text: str) -> tuple[int, ...]:
    return tuple(_positive_int(part) for part in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pot_jax.bench.aggregation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on one line")
    parser.add_argument("--workers", type=_workers, default=(16, 64), help="comma-separated W")
    parser.add_argument("--params", type=_positive_int, default=MLP_PARAMS, help="P per row")
    parser.add_argument("--repeats", type=_positive_int, default=15, help="interleaved JAX rounds")
    parser.add_argument(
        "--numpy-repeats", type=_positive_int, default=3, help="interleaved NumPy rounds"
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="result file ('-': none)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing result file")
    return parser


def run(
    *,
    workers: Sequence[int] = (16, 64),
    params: int = MLP_PARAMS,
    repeats: int = 15,
    numpy_repeats: int = 3,
    out: Path | None = DEFAULT_OUT,
    force: bool = False,
    as_json: bool = False,
) -> int:
    """Measures, writes ``out`` (refusing to overwrite it unless ``force``), prints; exit code."""
    if out is not None and out.exists() and not force:
        print(f"{describe_existing(out)}; pass --force to overwrite", file=sys.stderr)
        return 1
    result = measure_aggregation(
        workers=workers, params=params, repeats=repeats, numpy_repeats=numpy_repeats
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if as_json else table(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(
        workers=args.workers,
        params=args.params,
        repeats=args.repeats,
        numpy_repeats=args.numpy_repeats,
        out=None if args.out == "-" else Path(args.out),
        force=args.force,
        as_json=args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
