"""F6: final accuracy for every (attack, defense) pair."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.common import (
    DATA_CSV,
    display_name,
    figure,
    read_csv,
    read_metadata,
    save_figure,
    write_csv,
)
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


def defense_label(defense: str, budget: float | None = None) -> str:
    """``spot_check`` -> "spot checks (p = 0.1)"; ``robust_only:krum`` -> "Krum, no verification"."""
    if defense == "spot_check":
        return "spot checks\n" + (f"(p = {budget:g}), mean" if budget is not None else "mean")
    _, _, rule = defense.partition(":")
    return f"{display_name(rule)},\nno verification"


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    """Heatmap of the mean over seeds; each cell also gives the min-max over seeds."""
    rows = read_csv(Path(data_dir) / DATA_CSV)
    meta = read_metadata(data_dir)
    scale, config = meta["scale"], meta["config"]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    cells = [
        [
            [r["pot_accuracy"] for r in rows if r["attack"] == a and r["defense"] == d]
            for d in defenses
        ]
        for a in attacks
    ]
    acc = np.array([[statistics.mean(c) for c in row] for row in cells])
    centrals = [r["centralized_accuracy"] for r in rows]
    central = statistics.mean(centrals)
    with figure(figsize=(1.7 * len(defenses) + 2.6, 0.85 * len(attacks) + 2.4)) as (fig, ax):
        im = ax.imshow(acc, cmap="viridis", vmin=0.0, vmax=max(central, float(acc.max())))
        ax.grid(False)
        for i in range(len(attacks)):
            for j in range(len(defenses)):
                spread = (
                    f"\n{min(cells[i][j]):.3f}-{max(cells[i][j]):.3f}"
                    if len(cells[i][j]) > 1
                    else ""
                )
                ax.text(
                    j,
                    i,
                    f"{acc[i, j]:.3f}{spread}",
                    ha="center",
                    va="center",
                    color="w" if acc[i, j] < 0.6 * central else "k",
                    fontsize=8,
                )
        ax.set_xticks(
            range(len(defenses)),
            [defense_label(d, config.get("budget")) for d in defenses],
            fontsize=8,
        )
        ax.set_yticks(range(len(attacks)), [display_name(a) for a in attacks])
        ax.tick_params(length=0)
        ax.set(xlabel="defense (verification, aggregation rule)", ylabel="worker attack")
        n_byz = rows[0]["n_byzantine"]
        spread = f"min-max over {len(seeds)} seeds below" if len(seeds) > 1 else "1 seed"
        ax.set_title(
            f"Final PoT test accuracy: mean over seeds ({spread})\n"
            f"{display_name(config['dataset'])}, W = {config['workers']} workers of which "
            f"{n_byz} Byzantine ({n_byz / config['workers']:.0%}), {config['rounds']} rounds, {len(seeds)} seed"
            f"{'s' if len(seeds) != 1 else ''}; centralized: {central:.3f} "
            f"({min(centrals):.3f}-{max(centrals):.3f})"
        )
        fig.colorbar(im, ax=ax, label="test accuracy")
        return save_figure(fig, fig_dir, NAME, scale=scale)
