"""F6: robust aggregation with and without spot checks, worst case over ByzFL's attacks."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.common import (
    DATA_JSONL,
    display_name,
    figure,
    read_jsonl,
    read_metadata,
    save_figure,
    write_jsonl,
)
from pot_jax.bench.robustness import PRESETS, RobustnessConfig, summarize_runs

NAME = "f6_robustness"
REPO = Path(__file__).resolve().parents[1]
PRE_NAMES = {"nnm": "NNM", "arc": "ARC", "clipping": "clipping", "bucketing": "bucketing"}


@dataclass(frozen=True)
class Config:
    """Figure f6_robustness: ByzFL's benchmark sweep (10 honest workers, f Byzantine,
    gamma-similarity heterogeneity, aggregators with and without pre-aggregators, every
    attack), each cell the worst case over attacks of the best seed-mean test accuracy
    (ByzFL's heatmap value) with the seeds' range, without verification and with the
    spot-check model (``pot_jax.bench.robustness``), beside each aggregator's no-attack
    accuracy. ``sweep`` is the benchmark's config; ``source`` a result file of
    ``python -m pot_jax.bench.robustness`` that is read instead of re-running the sweep
    when it holds exactly this config.

    Command: ``pot-jax figures --only f6_robustness --scale paper``.
    Expected: without verification the mean collapses and every rule loses accuracy at
    gamma = 0 (ByzFL: extreme non-IID f = 4 at 0.21-0.27 on MNIST for the best rules);
    with the spot-check model the cheaters are banned within ~14 rounds, so rules that
    bound one round's damage reach their own no-attack accuracy; the mean alone does not
    survive the searched attacks' first rounds.
    Runtime: smoke ~20 s (teacher, the ``tiny`` preset); paper: seconds when ``source``
    holds the ``mini`` sweep, else the sweep itself (~25 min on the shared 2-core CPU).
    """

    sweep: RobustnessConfig
    source: str | None = None


CONFIGS = {
    "smoke": Config(sweep=PRESETS["tiny"]),
    "paper": Config(sweep=PRESETS["mini"], source="benchmarks/results/robustness.json"),
}


def _stored(config: Config) -> dict | None:
    """The sweep in ``config.source`` if it was made with exactly ``config.sweep``."""
    if config.source is None:
        return None
    path = REPO / config.source
    if not path.exists():
        return None
    sweep = json.loads(path.read_text()).get("sweep")
    wanted = json.loads(json.dumps(dataclasses.asdict(config.sweep)))
    return sweep if sweep is not None and sweep.get("config") == wanted else None


def run(config: Config, data_dir: Path) -> None:
    from pot_jax.bench.robustness import measure_robustness

    result = _stored(config)
    origin = {"kind": "source", "file": config.source} if result is not None else {}
    if result is None:
        result = measure_robustness(config.sweep)
        origin = {"kind": "source", "file": None}
    keys = ("utc_time", "git_commit", "jax_version", "device", "wall_seconds", "params")
    origin.update({k: result.get(k) for k in keys})
    origin["catch_probability_per_round"] = result["catch_probability_per_round"]
    origin["skipped"] = result["skipped"]
    write_jsonl(
        Path(data_dir) / DATA_JSONL, [origin, *({"kind": "run", **r} for r in result["runs"])]
    )


def aggregator_label(spec: str) -> str:
    """``clipping+nnm+trimmed_mean`` -> "clipping + NNM + trimmed mean"."""
    *pres, rule = spec.split("+")
    return " + ".join([PRE_NAMES.get(p, p) for p in pres] + [display_name(rule)])


def _heterogeneity_label(h: str) -> str:
    kind, _, value = h.partition(":")
    if kind == "gamma":
        return f"γ = {float(value):g}"
    if kind == "dirichlet":
        return f"α = {float(value):g}"
    return h


def _load(data_dir: Path) -> tuple[dict, list[dict], dict]:
    records = read_jsonl(Path(data_dir) / DATA_JSONL)
    origin = next(r for r in records if r["kind"] == "source")
    runs = [r for r in records if r["kind"] == "run"]
    return origin, runs, read_metadata(data_dir)


def summary(data_dir: Path) -> list[str]:
    """MEASURED.md's lines for f6 (``experiments.summary`` calls this)."""
    origin, runs, meta = _load(data_dir)
    s = summarize_runs(runs)
    ref = s["reference"]
    out = [
        f"source: {origin['file'] or 'this run'} (made {origin['utc_time']}, git "
        f"{str(origin['git_commit'])[:10]}, {origin['wall_seconds']} s)",
        "no attack, mean over the honest workers (best seed-mean accuracy): "
        + ", ".join(f"{h} {v['best']:.3f}" for h, v in ref.items()),
    ]
    cells = {
        (c["heterogeneity"], c["f"], c["aggregator"], c["verification"]): c for c in s["cells"]
    }
    clean = {(c["heterogeneity"], c["aggregator"]): c for c in s["no_attack"]}
    fs = sorted({k[1] for k in cells})
    hs = list(ref) or sorted({k[0] for k in cells})
    for agg in dict.fromkeys(r["aggregator"] for r in runs):
        parts = ["no attack " + " ".join(f"{clean[(h, agg)]['best']['value']:.3f}" for h in hs)]
        for v in ("none", "spot_check_model"):
            vals = []
            for f in fs:
                row = [cells.get((h, f, agg, v)) for h in hs]
                vals.append(
                    f"f={f} "
                    + " ".join(f"{c['worst_best']['value']:.3f}" if c else "n/a" for c in row)
                )
            parts.append(
                f"{'spot checks' if v != 'none' else 'no verification'} " + "; ".join(vals)
            )
        goal = s["goal"].get("worst_best", {}).get(agg)
        if goal:
            parts.append(
                f"2-point goal {'holds' if goal['holds'] else 'fails'} (largest gap "
                f"{goal['largest_gap']:+.3f} at {goal['at']['heterogeneity']}, f = {goal['at']['f']})"
            )
        out.append(f"{agg}: " + " | ".join(parts))
    return out


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    """Two heatmaps (no verification, spot-check model): aggregators x (f, heterogeneity)."""
    origin, runs, meta = _load(data_dir)
    scale, config = meta["scale"], meta["config"]["sweep"]
    s = summarize_runs(runs)
    cells = {
        (c["heterogeneity"], c["f"], c["aggregator"], c["verification"]): c for c in s["cells"]
    }
    clean = {(c["heterogeneity"], c["aggregator"]): c for c in s["no_attack"]}
    aggregators = list(config["aggregators"])
    hs = list(config["heterogeneity"])
    fs = list(config["byzantine"])
    columns = [(0, h) for h in hs] + [(f, h) for f in fs for h in hs]
    ref = s["reference"]
    d = origin["catch_probability_per_round"]
    panels = (
        ("none", "robust aggregation alone (no verification)"),
        ("spot_check_model", "robust aggregation + spot checks (the spot-check model)"),
    )
    with figure(
        2, 1, figsize=(0.95 * len(columns) + 3.4, 2 * (0.42 * len(aggregators) + 1.3) + 1.6)
    ) as (fig, axes):
        vmax = max([r["best"] for r in runs] + [0.1])
        for ax, (v, title) in zip(axes, panels, strict=True):
            grid = np.full((len(aggregators), len(columns)), np.nan)
            text = [["n/a"] * len(columns) for _ in aggregators]
            bold = np.zeros(grid.shape, bool)
            for i, agg in enumerate(aggregators):
                for j, (f, h) in enumerate(columns):
                    c = clean.get((h, agg)) if f == 0 else cells.get((h, f, agg, v))
                    if c is None:
                        continue
                    c = c["best"] if f == 0 else c["worst_best"]
                    grid[i, j] = c["value"]
                    spread = (
                        f"\n{c['seed_min']:.2f}-{c['seed_max']:.2f}"
                        if c["seed_min"] != c["seed_max"]
                        else ""
                    )
                    text[i][j] = f"{c['value']:.3f}{spread}"
                    bold[i, j] = f > 0 and h in ref and c["value"] >= ref[h]["best"] - 0.02
            im = ax.imshow(
                np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto"
            )
            ax.grid(False)
            for i in range(len(aggregators)):
                for j in range(len(columns)):
                    value = grid[i, j]
                    ax.text(
                        j,
                        i,
                        text[i][j],
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        fontweight="bold" if bold[i, j] else "normal",
                        color="0.5" if np.isnan(value) else ("w" if value < 0.55 * vmax else "k"),
                    )
            for x in range(len(hs), len(columns), len(hs)):
                ax.axvline(x - 0.5, color="w", lw=2.5)
            ax.set_xticks(
                range(len(columns)),
                [
                    ("no attack\n" if f == 0 else f"f = {f}\n") + _heterogeneity_label(h)
                    for f, h in columns
                ],
                fontsize=7,
            )
            ax.set_yticks(
                range(len(aggregators)), [aggregator_label(a) for a in aggregators], fontsize=7
            )
            ax.tick_params(length=0)
            ax.set_xlabel(
                "f Byzantine workers; heterogeneity γ (1: IID; 0: one label block per worker)",
                fontsize=8,
            )
            ax.set_ylabel("aggregator (pre-aggregators + rule)", fontsize=8)
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax, label="test accuracy", shrink=0.9)
        seeds = len(config["seeds"])
        hidden = "-".join(str(w) for w in config["hidden"])
        model = f"MLP ({hidden})" if config["model"] == "mlp" else config["model"]
        lines = [
            f"Worst case over {len(config['attacks'])} attacks of the best seed-mean test "
            f"accuracy (ByzFL's heatmap value); below it the range over {seeds} "
            f"seed{'s' if seeds != 1 else ''}; bold: within 2 points of the no-attack mean",
            f"{display_name(config['dataset'])}, {model} with {origin['params']:,} parameters; "
            f"{config['honest']} honest workers + f Byzantine; batch {config['batch_size']}, "
            f"{config['steps']} steps of SGD (lr {config['learning_rate']:g}, weight decay "
            f"{config['weight_decay']:g}), worker momentum {config['worker_momentum']:g}",
            f"spot checks: budget p = {config['budget']:g} over {config['validators']} "
            f"validators ({config['byzantine_validators']} silent): each cheater is recomputed "
            f"with probability {d:.3f} a round and banned when caught",
            "attacks: " + ", ".join(config["attacks"]),
        ]
        width = int(fig.get_figwidth() * 13)
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=8)
        return save_figure(fig, fig_dir, NAME, scale=scale)
