"""F1 (claim 1): test accuracy of Proof of Training against centralized training."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from experiments.common import (
    DATA_CSV,
    DATA_JSONL,
    display_name,
    figure,
    plain_log_axis,
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


PAPER_RATIO = 0.85


def _label_bars(ax, xs, heights, tops) -> None:
    """Each bar's value just above its bar (or its error bar)."""
    for x, h, top in zip(xs, heights, tops, strict=True):
        ax.annotate(
            f"{h:.3f}",
            (x, top),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            va="bottom",
            fontsize=7,
        )


def _throughput_panel(ax, data_dir: Path) -> None:
    """f8's PoT-core throughput ratio per model and batch: the other half of "performance"."""
    throughput = data_dir / THROUGHPUT
    ax.axhline(PAPER_RATIO, color="C3", ls=":")
    ax.set_ylabel("PoT-core / centralized throughput")
    if not throughput.exists():
        ax.set_title("(d) Throughput ratio: f8_overhead not run at this scale")
        ax.text(0.5, 0.5, "no f8 data", ha="center", va="center", transform=ax.transAxes)
        return
    rows = read_csv(throughput)
    shown_hash = "sha256" if any(r["commitment_hash"] == "sha256" for r in rows) else None
    shown_hash = shown_hash or rows[0]["commitment_hash"]
    rows = [r for r in rows if r["commitment_hash"] == shown_hash]
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        by_batch = {r["batch"]: r["ratio"] for r in rows if r["model"] == model}
        xs = [i + (k - (len(models) - 1) / 2) * width for i, b in enumerate(batches)]
        heights = [by_batch.get(b, 0.0) for b in batches]
        ax.bar(
            xs,
            heights,
            width,
            color=("C4", "C5", "C6")[k % 3],
            label=f"PoT-core throughput, f8 {display_name(model)}",
        )
        _label_bars(ax, xs, heights, heights)
    ax.set_xticks(range(len(batches)), [f"B = {b}" for b in batches])
    ax.set(
        ylim=(0, 1.12 * max(1.0, max(r["ratio"] for r in rows))),
        xlabel=f"per-worker batch (f8: MNIST-shaped models, W = {rows[0]['workers']}, "
        f"{display_name(shown_hash)})",
        title="(d) Throughput ratio PoT core / centralized SGD (f8)",
    )


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    """Accuracy against rounds and wall time (top), then the two ratios the paper's "85% of
    the performance" could mean, each in its own panel (bottom): final accuracy, throughput."""
    data_dir = Path(data_dir)
    records = read_jsonl(data_dir / DATA_JSONL)
    meta = read_metadata(data_dir)
    scale, config = meta["scale"], meta["config"]
    evals = [r for r in records if r["kind"] == "eval"]
    summaries = [r for r in records if r["kind"] == "summary"]
    fractions = sorted({r["byzantine_fraction"] for r in evals})
    seeds = sorted({r["seed"] for r in evals})
    with figure(2, 2, figsize=(11, 8)) as (fig, ((ax_r, ax_w), (ax_s, ax_t))):
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
                    f"PoT, {frac:.0%} Byzantine workers",
                    "o-",
                    color,
                )
            if k == 0:
                for ax, x in ((ax_r, round_of), (ax_w, centralized_seconds)):
                    _band(
                        ax,
                        [[x(r) for r in run] for run in runs],
                        [[r["centralized_test_accuracy"] for r in run] for run in runs],
                        "centralized SGD on the union of the batches",
                        "--",
                        "k",
                    )
        ax_r.set(
            xlabel="round",
            ylabel="test accuracy",
            title="(a) Accuracy vs rounds (mean, min-max over seeds)",
        )
        ax_w.set(
            xscale="log",
            xlabel="wall seconds (PoT: whole simulated protocol; centralized: its own steps)",
            ylabel="test accuracy",
            title="(b) Accuracy vs wall time (one process simulates every node)",
        )
        plain_log_axis(ax_w.xaxis, subs=(1.0, 2.0, 5.0))
        ratios = [
            [s["accuracy_ratio"] for s in summaries if s["byzantine_fraction"] == f]
            for f in fractions
        ]
        means = [statistics.mean(r) for r in ratios]
        ax_s.bar(
            range(len(fractions)),
            means,
            0.6,
            yerr=[
                [m - min(r) for m, r in zip(means, ratios, strict=True)],
                [max(r) - m for m, r in zip(means, ratios, strict=True)],
            ],
            capsize=3,
            color="0.6",
            label="final accuracy ratio PoT / centralized",
        )
        _label_bars(ax_s, range(len(fractions)), means, [max(r) for r in ratios])
        ax_s.axhline(PAPER_RATIO, color="C3", ls=":", label="paper: 85% of centralized")
        ax_s.set_xticks(range(len(fractions)), [f"{f:.0%}" for f in fractions])
        ax_s.set(
            ylim=(0, 1.12),
            xlabel="Byzantine worker fraction",
            ylabel="PoT / centralized test accuracy",
            title="(c) Final accuracy ratio (mean, min-max over seeds)",
        )
        _throughput_panel(ax_t, data_dir)
        handles = {}
        for ax in (ax_r, ax_s, ax_t):
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, h)
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=3)
        model = f"MLP {'-'.join(map(str, config['hidden']))} hidden"
        fig.suptitle(
            f"{display_name(config['dataset'])}, {model}, W = {config['workers']} workers "
            f"(batch {config['batch_size']}), {display_name(config['attack'])} attack by the "
            f"Byzantine workers, {display_name(config['verification'])} p = {config['budget']:g}, "
            f"{config['validators']} validators, {config['rounds']} rounds, {len(seeds)} seeds"
        )
        return save_figure(fig, fig_dir, NAME, scale=scale)
