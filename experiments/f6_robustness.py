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
from pot_jax.bench.robustness import PRESETS, RobustnessConfig, resume_config, summarize_runs

NAME = "f6_robustness"
REPO = Path(__file__).resolve().parents[1]
PRE_NAMES = {"nnm": "NNM", "arc": "ARC", "clipping": "clipping", "bucketing": "bucketing"}
# ByzFL's names, and Bulyan's (ByzFL lacks it; El Mhamdi et al., 2018).
RULE_LABELS = {"mda": "MDA", "meamed": "MeaMed", "monna": "MoNNA", "caf": "CAF", "bulyan": "Bulyan"}


@dataclass(frozen=True)
class Config:
    """Figure f6_robustness: ByzFL's benchmark sweep (10 honest workers, f Byzantine,
    gamma-similarity heterogeneity, aggregators with and without pre-aggregators, every
    attack), each cell the worst case over attacks of the best seed-mean test accuracy
    (ByzFL's heatmap value) with the seeds' range, without verification and with the
    spot-check model (``pot_jax.bench.robustness``), beside each aggregator's no-attack
    accuracy. ``sweep`` is the benchmark's config; ``source`` a result file of
    ``python -m pot_jax.bench.robustness`` that is read instead of re-running the sweep
    when it was made with this config's setting (the sweep there may have grown past
    ``sweep``'s grid with ``--resume``: then the figure shows the file's grid, and a cell
    that lacks an attack or a seed is marked as not yet run rather than plotted).

    Command: ``pot-jax figures --only f6_robustness --scale paper``.
    Expected: without verification the mean collapses and every rule loses accuracy at
    gamma = 0 (ByzFL: extreme non-IID f = 4 at 0.21-0.27 on MNIST for the best rules);
    with the spot-check model the cheaters are banned within ~14 rounds, so rules that
    bound one round's damage reach their own no-attack accuracy; the mean alone does not
    survive the searched attacks' first rounds.
    Runtime: smoke ~20 s (teacher, the ``tiny`` preset); paper: seconds when ``source``
    holds the sweep, else the ``mini`` sweep itself (~25 min on the shared 2-core CPU).
    """

    sweep: RobustnessConfig
    source: str | None = None


CONFIGS = {
    "smoke": Config(sweep=PRESETS["tiny"]),
    # The mini sweep grown towards the mnist1d preset's grid, session by session.
    "paper": Config(sweep=PRESETS["mini"], source="benchmarks/results/robustness_mnist1d.json"),
}


def _stored(config: Config) -> dict | None:
    """The sweep in ``config.source`` if it was made with ``config.sweep``'s setting."""
    if config.source is None:
        return None
    path = REPO / config.source
    if not path.exists():
        return None
    sweep = json.loads(path.read_text()).get("sweep")
    try:
        resume_config(config.sweep, sweep)
    except (ValueError, TypeError):
        return None
    return sweep


def sweep_config(d: dict) -> RobustnessConfig:
    """A sweep's config from its JSON form (lists back to tuples)."""
    fields = {f.name for f in dataclasses.fields(RobustnessConfig)}
    return RobustnessConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
    )


def run(config: Config, data_dir: Path) -> None:
    from pot_jax.bench.robustness import measure_robustness

    result = _stored(config)
    origin = {"kind": "source", "file": config.source} if result is not None else {}
    if result is None:
        result = measure_robustness(config.sweep)
        origin = {"kind": "source", "file": None}
    keys = ("utc_time", "git_commit", "jax_version", "device", "wall_seconds", "params")
    origin.update({k: result.get(k) for k in keys})
    origin["sweep"] = result["config"]  # the grid that was run, which may exceed config.sweep's
    origin["sessions"] = result.get("sessions", [])
    origin["catch_probability_per_round"] = result["catch_probability_per_round"]
    origin["skipped"] = result["skipped"]
    write_jsonl(
        Path(data_dir) / DATA_JSONL, [origin, *({"kind": "run", **r} for r in result["runs"])]
    )


def aggregator_label(spec: str) -> str:
    """``clipping+nnm+trimmed_mean`` -> "clipping + NNM + trimmed mean"."""
    *pres, rule = spec.split("+")
    return " + ".join(
        [PRE_NAMES.get(p, p) for p in pres] + [RULE_LABELS.get(rule) or display_name(rule)]
    )


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
    grid = _grid(origin, meta)
    s = summarize_runs(runs, sweep_config(grid))
    ref = s["reference"]
    hs = [h for h in grid["heterogeneity"] if h in ref] or sorted(ref)
    out = [
        f"source: {origin['file'] or 'this run'} (made {origin['utc_time']}, git "
        f"{str(origin['git_commit'])[:10]}, {origin['wall_seconds']} s, "
        f"{len(origin.get('sessions') or [1])} session(s), {len(runs)} runs)",
        "no attack, mean over the honest workers (best seed-mean accuracy): "
        + ", ".join(f"{h} {ref[h]['best']:.3f}" for h in hs),
    ]
    cells = {
        (c["heterogeneity"], c["f"], c["aggregator"], c["verification"]): c for c in s["cells"]
    }
    clean = {(c["heterogeneity"], c["aggregator"]): c for c in s["no_attack"]}
    fs = sorted({k[1] for k in cells})
    done = {agg for (_, _, agg, _), c in cells.items() if c["complete"]}
    pending = [a for a in grid["aggregators"] if a not in done]
    if pending:
        out.append("not run yet (no complete cell): " + ", ".join(pending))
    for agg in [a for a in dict.fromkeys(r["aggregator"] for r in runs) if a in done]:
        parts = [
            "no attack "
            + " ".join(
                f"{clean[(h, agg)]['best']['value']:.3f}" if (h, agg) in clean else "n/a"
                for h in hs
            )
        ]
        for v in ("none", "spot_check_model"):
            vals = []
            for f in fs:
                row = [cells.get((h, f, agg, v)) for h in hs]
                vals.append(f"f={f} " + " ".join(_cell_text(c) for c in row))
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


def _grid(origin: dict, meta: dict) -> dict:
    """The sweep's config as run (the source's grid), else the figure config's."""
    return origin.get("sweep") or meta["config"]["sweep"]


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return "n/a"
    if not cell.get("complete", True):
        return "not run"
    return f"{cell['worst_best']['value']:.3f}"


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    """Heatmaps aggregators x heterogeneity, one per f, without / with the spot-check model.

    Aggregators with no complete attacked cell (a grown sweep not yet run that far)
    are left out and named in the title; incomplete cells read "not run", cells where
    the aggregator is not defined (too few inputs for its f) "n/a".
    """
    origin, runs, meta = _load(data_dir)
    scale, config = meta["scale"], _grid(origin, meta)
    s = summarize_runs(runs, sweep_config(config))
    cells = {
        (c["heterogeneity"], c["f"], c["aggregator"], c["verification"]): c for c in s["cells"]
    }
    clean = {(c["heterogeneity"], c["aggregator"]): c for c in s["no_attack"]}
    done = {agg for (_, _, agg, _), c in cells.items() if c["complete"]}
    aggregators = [a for a in config["aggregators"] if a in done]
    pending = [a for a in config["aggregators"] if a not in done]
    hs = list(config["heterogeneity"])
    fs = list(config["byzantine"])
    ref = s["reference"]
    d = origin["catch_probability_per_round"]
    panels = (
        ("none", "no verification"),
        ("spot_check_model", "spot checks"),
    )
    undefined = {(u["f"], u["aggregator"]) for u in origin["skipped"]}
    ncols = 1 + len(fs)
    vmax = max([r["best"] for r in runs] + [0.1])
    with figure(
        2,
        ncols,
        figsize=(
            ncols * (0.62 * len(hs) + 0.4) + 2.8,
            2 * (0.4 * len(aggregators) + 1.3) + 2.0,
        ),
        squeeze=False,
    ) as (fig, axes):
        for row, (v, title) in enumerate(panels):
            for col, f in enumerate([0, *fs]):
                ax = axes[row, col]
                if f == 0 and row == 1:
                    ax.axis("off")
                    ax.text(0.5, 0.5, "no attack:\nas above", ha="center", va="center")
                    continue
                grid = np.full((len(aggregators), len(hs)), np.nan)
                text = [
                    ["n/a" if (f, agg) in undefined else "not run"] * len(hs) for agg in aggregators
                ]
                bold = np.zeros(grid.shape, bool)
                for i, agg in enumerate(aggregators):
                    for j, h in enumerate(hs):
                        c = clean.get((h, agg)) if f == 0 else cells.get((h, f, agg, v))
                        if c is None:
                            continue
                        if not c.get("complete", True):
                            text[i][j] = "not run"
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
                    for j in range(len(hs)):
                        value = grid[i, j]
                        ax.text(
                            j,
                            i,
                            text[i][j],
                            ha="center",
                            va="center",
                            fontsize=6,
                            fontweight="bold" if bold[i, j] else "normal",
                            color="0.5"
                            if np.isnan(value)
                            else ("w" if value < 0.55 * vmax else "k"),
                        )
                ax.set_xticks(range(len(hs)), [_heterogeneity_label(h) for h in hs], fontsize=7)
                first = col == 0 or (row == 1 and col == 1)
                ax.set_yticks(
                    range(len(aggregators)),
                    [aggregator_label(a) for a in aggregators] if first else [],
                    fontsize=7,
                )
                ax.tick_params(length=0)
                ax.set_title(
                    "no attack (honest workers alone)" if f == 0 else f"f = {f}, {title}",
                    fontsize=8,
                )
                if row == 1:
                    ax.set_xlabel("heterogeneity", fontsize=7)
        fig.colorbar(im, ax=axes, label="test accuracy", shrink=0.6)
        seeds = len(config["seeds"])
        hidden = "-".join(str(w) for w in config["hidden"])
        model = f"MLP ({hidden})" if config["model"] == "mlp" else config["model"]
        lines = [
            f"Worst case over {len(config['attacks'])} attacks of the best seed-mean test "
            f"accuracy (ByzFL's heatmap value); below it the range over {seeds} "
            f"seed{'s' if seeds != 1 else ''}; bold: within 2 points of the no-attack mean; "
            "γ: gamma-similarity (1: IID, 0: one label block per worker), α: Dirichlet",
            f"{display_name(config['dataset'])}, {model} with {origin['params']:,} parameters; "
            f"{config['honest']} honest workers + f Byzantine; batch {config['batch_size']}, "
            f"{config['steps']} steps of SGD (lr {config['learning_rate']:g}, weight decay "
            f"{config['weight_decay']:g}), worker momentum {config['worker_momentum']:g}",
            f"spot checks: budget p = {config['budget']:g} over {config['validators']} "
            f"validators ({config['byzantine_validators']} silent): each cheater is recomputed "
            f"with probability {d:.3f} a round and banned when caught",
            "attacks: " + ", ".join(config["attacks"]),
        ]
        if pending:
            lines.append("not run yet: " + ", ".join(aggregator_label(a) for a in pending))
        width = int(fig.get_figwidth() * 13)
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=8)
        return save_figure(fig, fig_dir, NAME, scale=scale)
