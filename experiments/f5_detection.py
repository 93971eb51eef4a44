"""F5: spot-check detection, measured with the real VRF sampling vs the closed form."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.common import (
    DATA_CSV,
    figure,
    plain_log_axis,
    read_csv,
    read_metadata,
    save_figure,
    write_csv,
)

NAME = "f5_detection"


@dataclass(frozen=True)
class Config:
    """Figure f5_detection: probability that a worker cheating in a fraction of rounds is
    caught within ``rounds`` rounds, against the budget p, for several cheat rates:
    measured points (real BLS-VRF samples of the honest validators; binomial 1-sigma
    error bars over ``seeds`` seeds) vs closed-form curves ``detection_probability``.

    Command: ``pot-jax figures --only f5_detection --scale paper``.
    Expected: every measured point within ~2 sigma of its curve; p = 0.1 with 3
    honest of 4 validators catches a 10%-of-rounds cheater within 100 rounds w.p. ~0.52.
    Runtime: smoke ~1 s; paper ~70 s (measured 66 s idle, 99-158 s with another job).
    """

    budgets: tuple[float, ...]
    cheat_rates: tuple[float, ...]
    rounds: int
    seeds: int
    n_validators: int = 4
    byzantine_validators: int = 1
    n_workers: int = 16


CONFIGS = {
    "smoke": Config(budgets=(0.1, 0.5), cheat_rates=(0.5,), rounds=10, seeds=10),
    "paper": Config(
        budgets=(0.02, 0.05, 0.1, 0.2, 0.5), cheat_rates=(0.02, 0.1, 0.5), rounds=100, seeds=200
    ),
}


def run(config: Config, data_dir: Path) -> None:
    from pot_jax.bench.detection import measure_detection

    rows = []
    for cheat in config.cheat_rates:
        for budget in config.budgets:
            r = measure_detection(
                budget=budget,
                n_validators=config.n_validators,
                byzantine_validators=config.byzantine_validators,
                n_workers=config.n_workers,
                cheat_rate=cheat,
                rounds=config.rounds,
                seeds=config.seeds,
            )
            rows.append(
                {
                    k: r[k]
                    for k in (
                        "budget",
                        "cheat_rate",
                        "rounds",
                        "seeds",
                        "n_validators",
                        "byzantine_validators",
                        "n_workers",
                        "caught_fraction",
                        "closed_form",
                        "closed_form_stderr",
                        "wall_seconds",
                    )
                }
            )
    write_csv(Path(data_dir) / DATA_CSV, rows)


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    from pot_jax.verification import detection_probability

    rows = read_csv(Path(data_dir) / DATA_CSV)
    scale = read_metadata(data_dir)["scale"]
    first = rows[0]
    n_v, byz, rounds, n_w = (
        first["n_validators"],
        first["byzantine_validators"],
        first["rounds"],
        first["n_workers"],
    )
    grid = np.geomspace(min(r["budget"] for r in rows) * 0.5, 1.0, 200)
    with figure() as (fig, ax):
        for k, cheat in enumerate(sorted({r["cheat_rate"] for r in rows})):
            color = f"C{k}"
            curve = [
                detection_probability(p, n_v, n_v - byz, cheat, rounds, n_workers=n_w) for p in grid
            ]
            ax.plot(
                grid, curve, "-", color=color, label=f"closed form, cheats in {cheat:.0%} of rounds"
            )
            pts = sorted((r for r in rows if r["cheat_rate"] == cheat), key=lambda r: r["budget"])
            err = [
                math.sqrt(
                    max(r["caught_fraction"] * (1 - r["caught_fraction"]), 1e-12) / r["seeds"]
                )
                for r in pts
            ]
            ax.errorbar(
                [r["budget"] for r in pts],
                [r["caught_fraction"] for r in pts],
                yerr=err,
                fmt="o",
                color=color,
                capsize=2,
            )
        ax.set(
            xscale="log",
            xlabel="spot-check budget p (fraction of gradients recomputed)",
            ylabel=f"P(caught within {rounds} rounds)",
            ylim=(-0.02, 1.02),
            title=f"{n_v} validators ({byz} Byzantine), {n_w} workers; "
            f"points: measured over {first['seeds']} seeds",
        )
        plain_log_axis(ax.xaxis, subs=(1.0, 2.0, 5.0))
        ax.legend(loc="lower right")
        return save_figure(fig, fig_dir, NAME, scale=scale)
