"""The numbers paper_figures/README.md quotes, computed from the figures' data files.

``summarize(out_root)`` reads, for every figure directory present under
``out_root``, its data and metadata files (nothing else) and returns a
Markdown page: per figure its scale, wall time, git commit, and the measured
numbers the README compares with the paper, each derived here from the data.
``pot-jax figures`` writes it to ``OUT/MEASURED.md`` after every run, and
``pot-jax figures --summary-only`` rewrites it without running anything, so
the README's numbers can always be checked against the files beside them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from experiments.common import DATA_CSV, DATA_JSONL, read_csv, read_jsonl, read_metadata

__all__ = ["SUMMARIES", "summarize", "write_summary"]

MEASURED_MD = "MEASURED.md"


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _f1(d: Path) -> list[str]:
    records = read_jsonl(d / DATA_JSONL)
    runs = [r for r in records if r["kind"] == "summary"]
    by = defaultdict(list)
    for r in runs:
        by[r["byzantine_fraction"]].append(r)
    out = []
    for frac in sorted(by):
        ratios = [r["accuracy_ratio"] for r in by[frac]]
        out.append(
            f"{frac:.0%} Byzantine workers: accuracy ratio PoT/centralized "
            f"{_f(statistics.mean(ratios))} (min {_f(min(ratios))}, max {_f(max(ratios))}, "
            f"{len(ratios)} seeds); verification compute "
            f"{_f(statistics.mean(r['verification_compute_ratio'] for r in by[frac]))}"
        )
    evals = [r for r in records if r["kind"] == "eval"]
    if evals:
        from experiments.f1_accuracy import centralized_seconds, pot_seconds

        last = max(r["round"] for r in evals)
        cells = []
        for frac in sorted(by):
            final = [r for r in evals if r["byzantine_fraction"] == frac and r["round"] == last]
            pot = statistics.mean(pot_seconds(r) for r in final)
            cen = statistics.mean(centralized_seconds(r) for r in final)
            cells.append(f"{frac:.0%}: PoT {pot:.1f} s, centralized {cen:.1f} s ({cen / pot:.3f})")
        out.append(
            f"wall seconds to round {last} (mean over seeds; centralized / PoT in brackets): "
            + "; ".join(cells)
        )
    return out


def _f2(d: Path) -> list[str]:
    rows = read_csv(d / DATA_CSV)
    out = []
    for sweep, key, label in (
        ("workers", "workers", "W"),
        ("byzantine", "byzantine_validators", "silent validators"),
    ):
        by = defaultdict(list)
        for r in rows:
            if r["sweep"] == sweep:
                by[r[key]].append(r["uptime"])
        if by:
            parts = [f"{label} = {k}: {_f(statistics.mean(v))}" for k, v in sorted(by.items())]
            out.append(f"uptime by {label}: " + "; ".join(parts))
    out.append(f"safety violations in all runs: {sum(r['safety_violations'] for r in rows)}")
    return out


def _f3(d: Path) -> list[str]:
    rows = [r for r in read_csv(d / DATA_CSV) if r["kind"] == "input"]
    if not rows:
        return ["no inputs recorded"]
    measured = [f"{r['parameter']} = {_f(r['value'])}" for r in rows if r["source"] != "assumption"]
    out = [
        f"savings at the base inputs: {_f(rows[0]['savings'])}",
        "measured inputs: " + (", ".join(measured) if measured else "none (all assumptions)"),
    ]
    tornado = [r for r in read_csv(d / DATA_CSV) if r["kind"] == "tornado"]
    if tornado:
        lo = min(tornado, key=lambda r: r["savings"])
        hi = max(tornado, key=lambda r: r["savings"])
        out.append(
            f"tornado range: {_f(lo['savings'], 2)} ({lo['parameter']} = {lo['value']:g}) to "
            f"{_f(hi['savings'], 2)} ({hi['parameter']} = {hi['value']:g})"
        )
    out.append(_f3_break_even(rows))
    return out


def _f3_break_even(inputs: list[dict]) -> str:
    """Where each recorded input, moved alone, takes the savings to the paper's 60%."""
    from experiments.f3_cost import PAPER_SAVINGS, SENSITIVITY, CostInputs, break_even

    base = CostInputs(**{r["parameter"]: r["value"] for r in inputs})
    cells = []
    for name in SENSITIVITY:
        value = getattr(base, name)
        at = break_even(base, name)
        if at is None:
            cells.append(f"{name} not in its range (base {value:g})")
        else:
            side = "above" if at > value else "below"
            cells.append(f"{name} {side} {at:.3g} (base {value:.3g})")
    return f"savings fall below {PAPER_SAVINGS:.0%} when one input alone moves: " + "; ".join(cells)


def _f4(d: Path) -> list[str]:
    from experiments.f4_consensus import fitted_slopes

    rows = read_csv(d / DATA_CSV)
    slopes = fitted_slopes(rows)
    out = []
    for pattern in sorted({r["pattern"] for r in rows}):
        ok = sorted(
            (r for r in rows if r["pattern"] == pattern and not r["skipped"]), key=lambda r: r["n"]
        )
        skipped = [r["n"] for r in rows if r["pattern"] == pattern and r["skipped"]]
        cells = [
            f"n = {r['n']}: {_f(r['messages_per_decision'], 1)} msgs/decision"
            + (
                f" ({_f(r['steady_state_messages_per_decision'], 1)} steady, "
                f"{_f(r['steady_state_messages_per_decision'] / (r['n'] - 1), 2)}(n-1))"
                if r.get("steady_state_messages_per_decision")
                else ""
            )
            + f", {_f(r['wall_seconds_per_decision'], 2)} s wall, "
            f"{_f(r['virtual_latency'], 2)} delays"
            for r in ok
        ]
        s = slopes.get((pattern, "messages_per_decision"))
        line = f"{pattern}: " + "; ".join(cells)
        if s is not None:
            line += f"; message slope {_f(s, 2)}"
        if skipped:
            line += f"; skipped n = {', '.join(map(str, skipped))}"
        out.append(line)
    out.append(f"safety violations: {sum(r['safety_violations'] for r in rows)}")
    return out


def _f5(d: Path) -> list[str]:
    rows = read_csv(d / DATA_CSV)
    z = [abs(r["caught_fraction"] - r["closed_form"]) / r["closed_form_stderr"] for r in rows]
    within = sum(1 for x in z if x <= 2)
    return [
        f"{len(rows)} points ({rows[0]['seeds']} seeds each): {within} within 2 sigma of the "
        f"closed form, largest deviation {_f(max(z), 1)} sigma"
    ]


def _f6(d: Path) -> list[str]:
    from experiments.f6_robustness import summary

    return summary(d)


def _f7(d: Path) -> list[str]:
    rows = read_csv(d / DATA_CSV)
    out = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = [r for r in rows if r["backend"] == backend]
        ops = [f"{r['op']} {_f(r['min_ms'], 2)} ms" for r in mine if r["op"] != "qc_verify"]
        qcs = [f"n = {r['n']}: {_f(r['min_ms'], 2)}" for r in mine if r["op"] == "qc_verify"]
        out.append(
            f"{backend} (min over repeats): " + ", ".join(ops) + "; qc_verify ms " + ", ".join(qcs)
        )
    return out


def _f8(d: Path) -> list[str]:
    rows = read_csv(d / DATA_CSV)
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = [
            f"B = {r['batch']} {r['commitment_hash']}: {_f(r['ratio'])}"
            for r in rows
            if r["model"] == model
        ]
        out.append(f"{model} throughput ratio PoT core/centralized: " + "; ".join(cells))
    return out


SUMMARIES: dict[str, Callable[[Path], list[str]]] = {
    "f1_accuracy": _f1,
    "f2_uptime": _f2,
    "f3_cost": _f3,
    "f4_consensus": _f4,
    "f5_detection": _f5,
    "f6_robustness": _f6,
    "f7_crypto": _f7,
    "f8_overhead": _f8,
}


def summarize(out_root: Path) -> str:
    """The Markdown page described in the module docstring."""
    from experiments import FIGURES

    out_root = Path(out_root)
    lines = [
        "# Measured numbers, computed from the data files here",
        "",
        "Generated by `experiments/summary.py` (`pot-jax figures --summary-only`); do not edit.",
        "",
    ]
    total = 0.0
    for name in FIGURES:
        d = out_root / name
        if not (d / "metadata.json").exists():
            lines += [f"## {name}", "", "not run", ""]
            continue
        meta = read_metadata(d)
        total += meta["wall_seconds"]
        lines += [
            f"## {name}",
            "",
            f"scale **{meta['scale']}**, wall time {meta['wall_seconds']:.0f} s, "
            f"commit {str(meta.get('git_commit'))[:10]}, {meta.get('utc_time', '?')}, "
            f"JAX {meta.get('jax_version')}, {meta.get('device')}",
            "",
        ]
        lines += [f"- {x}" for x in SUMMARIES[name](d)]
        lines.append("")
    lines += [f"Sum of the figures' wall times: {total:.0f} s ({total / 60:.1f} min).", ""]
    return "\n".join(lines)


def write_summary(out_root: Path) -> Path:
    path = Path(out_root) / MEASURED_MD
    path.write_text(summarize(out_root))
    return path
