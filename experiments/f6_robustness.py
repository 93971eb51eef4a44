"""F6: final accuracy for every (attack, defense) pair."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.common import DATA_CSV, figure, read_csv, read_metadata, save_figure, write_csv
from experiments.protocol_runs import run_and_collect

NAME = "f6_robustness"

# A defense is "spot_check" (VRF spot checks, the paper's mean) or "robust_only:RULE"
# (no recomputation; the aggregation rule defends). robust_only:mean is the paper's
# plain mean without verification. Rules that need the Byzantine count get it exactly.
NEEDS_COUNT = {"trimmed_mean": "trim", "krum": "f", "multi_krum": "f"}


@dataclass(frozen=True)
class Config:
    """Figure f6_robustness: heatmap of final PoT test accuracy (mean over seeds) for
    each worker attack x defense, at ``byzantine_fraction`` Byzantine workers, with the
    centralized accuracy of the same run for reference.

    Command: ``pot-jax figures --only f6_robustness --scale paper``.
    Expected: spot_check matches the centralized accuracy under every attack (cheaters
    are caught and banned); the plain mean without verification collapses under
    scaling/sign-flip attacks; robust rules survive some attacks and lose accuracy to ALIE.
    Runtime: smoke ~20 s (teacher dataset, 10 rounds, 2 attacks x 5 defenses);
    paper ~21 min (MNIST-1D, 300 rounds, 4 attacks x 5 defenses x 2 seeds; measured 1178 s
    on an idle machine).
    """

    dataset: str
    rounds: int
    eval_every: int
    workers: int
    batch_size: int
    hidden: tuple[int, ...]
    attacks: tuple[str, ...]
    defenses: tuple[str, ...] = (
        "spot_check",
        "robust_only:mean",
        "robust_only:coordinate_median",
        "robust_only:trimmed_mean",
        "robust_only:krum",
    )
    byzantine_fraction: float = 0.25
    budget: float = 0.1
    seeds: tuple[int, ...] = (0,)


CONFIGS = {
    "smoke": Config(
        dataset="teacher",
        rounds=10,
        eval_every=10,
        workers=8,
        batch_size=8,
        hidden=(32,),
        attacks=("alie", "sign_flip"),
    ),
    "paper": Config(
        dataset="mnist1d",
        rounds=300,
        eval_every=100,
        workers=16,
        batch_size=8,
        hidden=(256, 256),
        attacks=("alie", "sign_flip", "scaled", "label_flip"),
        seeds=(0, 1),
    ),
}


def make_defense(defense: str, n_byzantine: int, budget: float):
    """The verification scheme of a defense label (see NEEDS_COUNT)."""
    from pot_jax.verification import make_scheme

    if defense == "spot_check":
        return make_scheme("spot_check", budget=budget)
    kind, _, rule = defense.partition(":")
    if kind != "robust_only" or not rule:
        raise ValueError(f"defense {defense!r}: expected 'spot_check' or 'robust_only:RULE'")
    params = {NEEDS_COUNT[rule]: n_byzantine} if rule in NEEDS_COUNT else {}
    return make_scheme("robust_only", rule_name=rule, **params)


def run(config: Config, data_dir: Path) -> None:
    from pot_jax.attacks.workers import choose_byzantine

    rows = []
    for attack in config.attacks:
        for defense in config.defenses:
            for seed in config.seeds:
                n_byz = len(choose_byzantine(config.workers, config.byzantine_fraction, seed))
                verification = "spot_check" if defense == "spot_check" else "robust_only"
                _, summary = run_and_collect(
                    {
                        "dataset": config.dataset,
                        "rounds": config.rounds,
                        "eval_every": config.eval_every,
                        "workers": config.workers,
                        "batch_size": config.batch_size,
                        "hidden": config.hidden,
                        "byzantine_fraction": config.byzantine_fraction,
                        "attack": attack,
                        "verification": verification,
                        "budget": config.budget,
                        "seed": seed,
                    },
                    scheme=make_defense(defense, n_byz, config.budget),
                )
                rows.append(
                    {
                        "attack": attack,
                        "defense": defense,
                        "seed": seed,
                        "n_byzantine": n_byz,
                        "pot_accuracy": summary["pot_accuracy"],
                        "centralized_accuracy": summary["centralized_accuracy"],
                        "cheaters_caught": len(summary["cheaters_caught"]),
                        "wall_seconds": summary["wall_seconds"],
                    }
                )
    write_csv(Path(data_dir) / DATA_CSV, rows)


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    rows = read_csv(Path(data_dir) / DATA_CSV)
    scale = read_metadata(data_dir)["scale"]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    acc = np.array(
        [
            [
                statistics.mean(
                    r["pot_accuracy"] for r in rows if r["attack"] == a and r["defense"] == d
                )
                for d in defenses
            ]
            for a in attacks
        ]
    )
    central = statistics.mean(r["centralized_accuracy"] for r in rows)
    with figure(figsize=(1.6 * len(defenses) + 2, 0.7 * len(attacks) + 2)) as (fig, ax):
        im = ax.imshow(acc, cmap="viridis", vmin=0.0, vmax=max(central, float(acc.max())))
        ax.grid(False)
        for i in range(len(attacks)):
            for j in range(len(defenses)):
                ax.text(
                    j,
                    i,
                    f"{acc[i, j]:.3f}",
                    ha="center",
                    va="center",
                    color="w" if acc[i, j] < 0.6 * central else "k",
                    fontsize=8,
                )
        ax.set_xticks(
            range(len(defenses)),
            [d.replace("robust_only:", "no verif.\n") for d in defenses],
            fontsize=8,
        )
        ax.set_yticks(range(len(attacks)), attacks)
        n_byz = rows[0]["n_byzantine"]
        ax.set_title(
            f"Final PoT test accuracy, {n_byz} Byzantine workers (centralized: {central:.3f})"
        )
        fig.colorbar(im, ax=ax, label="test accuracy")
        return save_figure(fig, fig_dir, NAME, scale=scale)
