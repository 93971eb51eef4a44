"""Paper figures: one module per figure, all driven by the FIGURES table.

``run_figures(names, scale, out_root)`` runs each named figure's experiment
at ``scale`` ("smoke" for tests, "paper" for the figures in paper_figures/),
writes ``out_root/NAME/{data.csv or data.jsonl, metadata.json}`` and then
plots ``NAME.png`` and ``NAME.pdf`` from those files alone. Command line:
``pot-jax figures [--only NAME] [--scale smoke|paper]``.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from experiments.common import SCALES, FigureSpec, Timer, write_metadata

__all__ = ["FIGURES", "PAPER_DIR", "SCALES", "FigureSpec", "load", "run_figures"]

PAPER_DIR = "paper_figures"  # the committed paper-scale figures; nothing else writes there

CLAIM1 = "the decentralized network reaches 85% of the performance of centralized alternatives"
CLAIM2 = "99.2% uptime during stress tests with more than 1000 concurrent training nodes"
CLAIM3 = "60% lower computational cost"
CLAIM4 = "support for more than 1000 concurrent nodes"

# Run order matters only for f1, which copies f8's throughput rows if f8 ran first.
FIGURES: dict[str, FigureSpec] = {
    spec.name: spec
    for spec in (
        FigureSpec(
            "f7_crypto", "BLS costs per backend and committee size", CLAIM4, "experiments.f7_crypto"
        ),
        FigureSpec(
            "f5_detection",
            "Spot-check detection: measured vs closed form",
            CLAIM1,
            "experiments.f5_detection",
        ),
        FigureSpec(
            "f4_consensus",
            "PBFT messages and latency vs validators",
            CLAIM4,
            "experiments.f4_consensus",
        ),
        FigureSpec(
            "f8_overhead",
            "Verifiability overhead: PoT core vs centralized SGD",
            CLAIM3,
            "experiments.f8_overhead",
        ),
        FigureSpec(
            "f1_accuracy",
            "Accuracy of PoT vs centralized training",
            CLAIM1,
            "experiments.f1_accuracy",
        ),
        FigureSpec(
            "f6_robustness",
            "Worst case over attacks: robust aggregation alone vs. with spot checks",
            CLAIM1,
            "experiments.f6_robustness",
        ),
        FigureSpec("f3_cost", "Cost model and its sensitivity", CLAIM3, "experiments.f3_cost"),
        FigureSpec(
            "f2_uptime",
            "Rounds committed within a deadline under stress",
            CLAIM2,
            "experiments.f2_uptime",
        ),
    )
}


def load(name: str):
    """The module of figure ``name``."""
    return importlib.import_module(FIGURES[name].module)


def _seeds(config) -> tuple[int, ...]:
    seeds = getattr(config, "seeds", None)
    if isinstance(seeds, int):
        return tuple(range(seeds))  # a count: seeds 0..seeds-1
    if seeds is not None:
        return tuple(seeds)
    return (getattr(config, "seed", 0),)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``'s place; the old one is removed only afterwards."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def run_figures(names: list[str] | None, scale: str, out_root: Path) -> dict:
    """Run and plot the named figures (all when ``names`` is None) at ``scale``.

    Each figure owns ``out_root/NAME``, which is replaced only when the figure has
    run and plotted without error (until then the previous files stay).
    Afterwards ``out_root/MEASURED.md`` is rewritten from every figure's data
    (``experiments.summary``).
    Returns ``{name: {"scale", "dir", "files", "wall_seconds"}}``. Raises
    ValueError naming any unknown figure or scale before anything runs.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    if names is None:
        names = list(FIGURES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ValueError(
            f"unknown figure name(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(FIGURES)}"
        )
    out_root = Path(out_root)
    if scale != "paper" and out_root.resolve().name == PAPER_DIR:
        raise ValueError(
            f"--out {out_root} at scale {scale!r}: only paper-scale figures go into "
            f"{PAPER_DIR}/; leave --out at its default (runs/figures/{scale})"
        )
    ordered = [n for n in FIGURES if n in set(names)]
    results = {}
    for name in ordered:
        module = load(name)
        config = module.CONFIGS[scale]
        data_dir = out_root / name
        # The figure is made in a fresh staging directory beside its own (so sibling
        # figures' data stay reachable) and replaces the old files only once run, metadata
        # and plot have all succeeded: a crash or an exception leaves the previous
        # figure intact, and no previous file leaks into this plot.
        staging = out_root / f".{name}.partial"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        timer = Timer()
        module.run(config, staging)
        write_metadata(
            staging,
            name=name,
            scale=scale,
            config=config,
            seeds=_seeds(config),
            wall_seconds=timer.seconds,
        )
        files = module.plot(staging, staging)
        _replace_dir(staging, data_dir)
        results[name] = {
            "scale": scale,
            "dir": str(data_dir),
            "files": [str(data_dir / Path(p).name) for p in files],
            "wall_seconds": round(timer.seconds, 3),
        }
    from experiments.summary import write_summary

    write_summary(out_root)
    return results
