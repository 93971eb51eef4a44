"""F1 (claim 1): test accuracy of Proof of Training against centralized training."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from experiments.common import (
    DATA_CSV,
    DATA_JSONL,
    figure,
    read_csv,
    read_jsonl,
    read_metadata,
    save_figure,
    sibling_data,
    write_csv,
    write_jsonl,
)
from experiments.protocol_runs import run_and_collect

NAME = "f1_accuracy"
THROUGHPUT = "throughput.csv"


@dataclass(frozen=True)
class Config:
    """Figure f1_accuracy (paper claim 1, "85% of the performance of centralized
    alternatives"): PoT test accuracy and the centralized model's (trained alongside on
    the union of the workers' batches) against rounds and against wall time, for
    Byzantine worker fractions 0..0.3 running ``attack``, spread over seeds; plus the
    PoT-core throughput ratio copied from f8_overhead's data when f8 ran first.

    Command: ``pot-jax figures --only f1_accuracy --scale paper``.
    Expected: with spot checks, accuracy ratio ~1.0 at every fraction (caught cheaters
    are banned; the README's default run: 0.657 vs 0.650); the gap to "85%" is in
    throughput (f8), not in accuracy.
    Runtime: smoke ~30 s (teacher dataset, 10 rounds); paper ~28 min (MNIST-1D,
    1500 rounds, 4 fractions x 3 seeds; measured 1680 s and 1748 s on an idle machine).
    """

    dataset: str
    rounds: int
    eval_every: int
    workers: int
    batch_size: int
    hidden: tuple[int, ...]
    byzantine_fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    attack: str = "alie"
    verification: str = "spot_check"
    budget: float = 0.1
    validators: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)
    scale: str = "paper"  # f8 data is copied only if made at this scale


CONFIGS = {
    "smoke": Config(
        dataset="teacher",
        rounds=10,
        eval_every=5,
        workers=8,
        batch_size=8,
        hidden=(32,),
        seeds=(0, 1),
        scale="smoke",
    ),
    "paper": Config(
        dataset="mnist1d", rounds=1500, eval_every=250, workers=16, batch_size=8, hidden=(256, 256)
    ),
}


def run(config: Config, data_dir: Path) -> None:
    data_dir = Path(data_dir)
    records = []
    for fraction in config.byzantine_fractions:
        for seed in config.seeds:
            metrics, summary = run_and_collect(
                {
                    "dataset": config.dataset,
                    "rounds": config.rounds,
                    "eval_every": config.eval_every,
                    "workers": config.workers,
                    "batch_size": config.batch_size,
                    "hidden": config.hidden,
                    "byzantine_fraction": fraction,
                    "attack": config.attack,
                    "verification": config.verification,
                    "budget": config.budget,
                    "validators": config.validators,
                    "seed": seed,
                }
            )
            key = {"byzantine_fraction": fraction, "seed": seed}
            records += [{"kind": "eval", **key, **m} for m in metrics]
            records.append(
                {
                    "kind": "summary",
                    **key,
                    **{
                        k: summary[k]
                        for k in (
                            "pot_accuracy",
                            "centralized_accuracy",
                            "accuracy_ratio",
                            "cheaters_caught",
                            "byzantine_workers",
                            "wrong_gradients_accepted_unchecked",
                            "verification_compute_ratio",
                            "wall_seconds",
                        )
                    },
                }
            )
    write_jsonl(data_dir / DATA_JSONL, records)
    f8 = sibling_data(data_dir, "f8_overhead", DATA_CSV, config.scale)
    if f8 is not None:  # the throughput half of "performance", measured by f8
        write_csv(data_dir / THROUGHPUT, read_csv(f8))


def _band(ax, xs_by_seed, ys_by_seed, label, style, color):
    """Mean over seeds with a min-max band."""
    xs = [statistics.mean(v) for v in zip(*xs_by_seed, strict=True)]
    cols = list(zip(*ys_by_seed, strict=True))
    ax.plot(xs, [statistics.mean(c) for c in cols], style, label=label, color=color)
    ax.fill_between(xs, [min(c) for c in cols], [max(c) for c in cols], alpha=0.15, color=color)


def round_of(r: dict) -> float:
    return r["round"]


def centralized_seconds(r: dict) -> float:
    """Wall seconds the centralized baseline's own steps took up to this evaluation."""
    return r["centralized_wall_seconds"]


def pot_seconds(r: dict) -> float:
    """Wall seconds of the PoT run up to this evaluation, without the baseline's steps."""
    return r["wall_seconds"] - r["centralized_wall_seconds"]


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    data_dir = Path(data_dir)
    records = read_jsonl(data_dir / DATA_JSONL)
    scale = read_metadata(data_dir)["scale"]
    evals = [r for r in records if r["kind"] == "eval"]
    summaries = [r for r in records if r["kind"] == "summary"]
    fractions = sorted({r["byzantine_fraction"] for r in evals})
    seeds = sorted({r["seed"] for r in evals})
    with figure(1, 3, figsize=(13, 3.8)) as (fig, (ax_r, ax_w, ax_s)):
        for k, frac in enumerate(fractions):
            runs = [
                sorted(
                    (r for r in evals if r["byzantine_fraction"] == frac and r["seed"] == s),
                    key=lambda r: r["round"],
                )
                for s in seeds
            ]
            color = f"C{k}"
            for ax, x in ((ax_r, round_of), (ax_w, pot_seconds)):
                _band(
                    ax,
                    [[x(r) for r in run] for run in runs],
                    [[r["pot_test_accuracy"] for r in run] for run in runs],
                    f"PoT, {frac:.0%} Byzantine",
                    "o-",
                    color,
                )
            if k == 0:
                for ax, x in ((ax_r, round_of), (ax_w, centralized_seconds)):
                    _band(
                        ax,
                        [[x(r) for r in run] for run in runs],
                        [[r["centralized_test_accuracy"] for r in run] for run in runs],
                        "centralized (same union batch)",
                        "--",
                        "k",
                    )
        ax_r.set(xlabel="round", ylabel="test accuracy", title="Accuracy vs rounds")
        ax_w.set(
            xscale="log",
            xlabel="wall seconds (PoT: whole protocol; centralized: its own steps)",
            ylabel="test accuracy",
            title="Accuracy vs wall time",
        )
        ax_r.legend()
        ratios = [
            [s["accuracy_ratio"] for s in summaries if s["byzantine_fraction"] == f]
            for f in fractions
        ]
        ax_s.bar(
            [f"{f:.0%}" for f in fractions],
            [statistics.mean(r) for r in ratios],
            yerr=[
                [statistics.mean(r) - min(r) for r in ratios],
                [max(r) - statistics.mean(r) for r in ratios],
            ],
            capsize=3,
            label="final accuracy ratio PoT / centralized",
        )
        ax_s.axhline(0.85, color="C3", ls=":", label="paper: 85% of centralized")
        throughput = data_dir / THROUGHPUT
        if throughput.exists():
            rows = read_csv(throughput)
            mlp = [r for r in rows if r["model"] == "mlp" and r["commitment_hash"] == "sha256"]
            best = max(mlp or rows, key=lambda r: r["batch"])
            ax_s.axhline(
                best["ratio"],
                color="C2",
                ls="--",
                label=f"PoT-core throughput ratio (f8: {best['model']}, "
                f"B={best['batch']}) = {best['ratio']:.2f}",
            )
        ax_s.set(
            xlabel="Byzantine worker fraction",
            ylabel="ratio",
            title="Final accuracy ratio (mean, min-max over seeds)",
        )
        ax_s.legend(loc="lower left")
        return save_figure(fig, fig_dir, NAME, scale=scale)
