"""F3 (claim 3): an explicit cost model of PoT against centralized training, and its sensitivity."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

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
)

NAME = "f3_cost"

# Parameters of the cost model, each with (low, high) for the sensitivity analysis.
SENSITIVITY = (
    "dc_device_hourly_usd",
    "pot_capital_hourly_usd",
    "pot_power_kw",
    "pot_electricity_usd_kwh",
    "pot_relative_speed",
    "pot_utilisation",
    "dc_utilisation",
    "verification_overhead",
    "throughput_ratio",
    "validator_hourly_usd",
)


@dataclass(frozen=True)
class CostInputs:
    """The cost model's inputs. Every one is an assumption unless its source says measured.

    Centralized: a rented datacenter accelerator at an all-in hourly price, busy a
    fraction ``dc_utilisation`` of the paid time. PoT: a repurposed mining GPU whose
    capital is amortised at ``pot_capital_hourly_usd`` plus its electricity, doing
    ``pot_relative_speed`` of the datacenter device's training work per hour, busy
    ``pot_utilisation`` (churn, waiting for stragglers), paying ``verification_overhead``
    extra recomputation (the spot-check budget, or f1's measured ratio), slowed by the
    PoT-core ``throughput_ratio`` (f8: hashing/encoding per round) and paying
    ``n_validators`` validators at ``validator_hourly_usd`` each per ``workers`` workers.
    """

    dc_device_hourly_usd: float = 2.0
    dc_utilisation: float = 0.9
    pot_capital_hourly_usd: float = 0.05
    pot_power_kw: float = 0.25
    pot_electricity_usd_kwh: float = 0.10
    pot_relative_speed: float = 0.35
    pot_utilisation: float = 0.8
    verification_overhead: float = 0.1
    throughput_ratio: float = 0.9
    n_validators: int = 4
    validator_hourly_usd: float = 0.05
    workers: int = 16


def relative_cost(x: CostInputs) -> float:
    """PoT cost per unit of training work over the centralized cost per unit of work."""
    central = x.dc_device_hourly_usd / x.dc_utilisation
    device = x.pot_capital_hourly_usd + x.pot_power_kw * x.pot_electricity_usd_kwh
    consensus = x.n_validators * x.validator_hourly_usd / x.workers
    pot = (device + consensus) / (x.pot_relative_speed * x.pot_utilisation)
    pot *= (1 + x.verification_overhead) / x.throughput_ratio
    return pot / central


def savings(x: CostInputs) -> float:
    """1 - relative cost: the paper's "60% lower computational cost" is savings = 0.60."""
    return 1.0 - relative_cost(x)


PAPER_SAVINGS = 0.60
# Inputs that are fractions of one: a break-even is searched for only up to 1.
_AT_MOST_ONE = frozenset({"pot_utilisation", "dc_utilisation", "throughput_ratio"})


def break_even(x: CostInputs, name: str, target: float = PAPER_SAVINGS) -> float | None:
    """The value of input ``name`` at which ``savings`` equals ``target``, the others held
    at ``x``; None if no value in (0, 1] (fractions) or (0, 1000 x base] crosses it.

    ``relative_cost`` is monotone in each input, so bisection on that bracket finds
    the one crossing.
    """
    if name not in {f.name for f in dataclasses.fields(x)}:
        raise ValueError(f"unknown cost input {name!r}")

    def gap(value: float) -> float:
        return savings(dataclasses.replace(x, **{name: value})) - target

    lo = 1e-12
    hi = 1.0 if name in _AT_MOST_ONE else 1000.0 * max(abs(getattr(x, name)), 1.0)
    lo_above = gap(lo) > 0
    if lo_above == (gap(hi) > 0):
        return None
    for _ in range(100):  # halves the bracket to well below float resolution
        mid = 0.5 * (lo + hi)
        if (gap(mid) > 0) == lo_above:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Config:
    """Figure f3_cost (paper claim 3, "60% lower computational cost"): savings of PoT
    over centralized training from the explicit model ``relative_cost`` (base inputs in
    ``inputs``), a tornado chart of each input over its (low, high) range, and savings
    against the two inputs that decide it (hardware price ratio, relative speed).
    ``use_measured`` replaces throughput_ratio with f8's measured PoT-core ratio (mlp,
    sha256, largest batch) and verification_overhead with f1's measured recomputation
    ratio, when those figures' data exist next to this one.

    Command: ``pot-jax figures --only f3_cost --scale paper``.
    Expected: savings well above 60% when the mining hardware's capital is sunk and the
    datacenter is rented at on-demand prices; below 0 when PoT hardware is priced like
    rented hardware or its relative speed is low. The 60% is a statement about prices,
    not about the protocol.
    Runtime: < 1 s at both scales (a formula; smoke and paper differ only in sweep points).
    """

    inputs: CostInputs = CostInputs()
    ranges: tuple[tuple[str, float, float], ...] = (
        ("dc_device_hourly_usd", 0.8, 4.0),
        ("pot_capital_hourly_usd", 0.0, 0.5),
        ("pot_power_kw", 0.15, 0.4),
        ("pot_electricity_usd_kwh", 0.05, 0.3),
        ("pot_relative_speed", 0.15, 0.7),
        ("pot_utilisation", 0.5, 0.95),
        ("dc_utilisation", 0.5, 1.0),
        ("verification_overhead", 0.02, 1.0),
        ("throughput_ratio", 0.4, 1.0),
        ("validator_hourly_usd", 0.0, 0.5),
    )
    sweep_points: int = 50
    use_measured: bool = True
    scale: str = "paper"  # f8/f1 data are used only if made at this scale


CONFIGS = {"smoke": Config(sweep_points=8, scale="smoke"), "paper": Config()}


def _measured(data_dir: Path, scale: str) -> dict:
    """Inputs measured by f8 and f1, when their data (at ``scale``) are next to this figure's."""
    out = {}
    f8 = sibling_data(data_dir, "f8_overhead", DATA_CSV, scale)
    if f8 is not None:
        rows = [r for r in read_csv(f8) if r["model"] == "mlp" and r["commitment_hash"] == "sha256"]
        if rows:
            out["throughput_ratio"] = max(rows, key=lambda r: r["batch"])["ratio"]
    f1 = sibling_data(data_dir, "f1_accuracy", DATA_JSONL, scale)
    if f1 is not None:
        ratios = [r["verification_compute_ratio"] for r in read_jsonl(f1) if r["kind"] == "summary"]
        if ratios:
            out["verification_overhead"] = statistics.mean(ratios)
    return out


def run(config: Config, data_dir: Path) -> None:
    data_dir = Path(data_dir)
    measured = _measured(data_dir, config.scale) if config.use_measured else {}
    base = dataclasses.replace(config.inputs, **measured)
    rows = [
        {
            "kind": "input",
            "parameter": f.name,
            "value": getattr(base, f.name),
            "source": "measured" if f.name in measured else "assumption",
            "savings": savings(base),
        }
        for f in dataclasses.fields(base)
    ]
    for name, low, high in config.ranges:
        for end, value in (("low", low), ("high", high)):
            rows.append(
                {
                    "kind": "tornado",
                    "parameter": name,
                    "end": end,
                    "value": value,
                    "savings": savings(dataclasses.replace(base, **{name: value})),
                }
            )
        for k in range(config.sweep_points):
            value = low + (high - low) * k / (config.sweep_points - 1)
            rows.append(
                {
                    "kind": "sweep",
                    "parameter": name,
                    "value": value,
                    "savings": savings(dataclasses.replace(base, **{name: value})),
                }
            )
    write_csv(data_dir / DATA_CSV, rows)


# How each cost input is named on the figure.
INPUT_LABELS = {
    "dc_device_hourly_usd": "Datacenter GPU price ($/h)",
    "dc_utilisation": "Datacenter utilisation",
    "pot_capital_hourly_usd": "PoT hardware capital ($/h)",
    "pot_power_kw": "PoT GPU power (kW)",
    "pot_electricity_usd_kwh": "Electricity price ($/kWh)",
    "pot_relative_speed": "PoT GPU speed (× datacenter GPU)",
    "pot_utilisation": "PoT node utilisation",
    "verification_overhead": "Verification overhead (recomputed fraction)",
    "throughput_ratio": "PoT-core throughput ratio",
    "n_validators": "Validators",
    "validator_hourly_usd": "Validator cost ($/h each)",
    "workers": "Workers per validator set",
}
LOW, HIGH = "C0", "C1"


def input_label(name: str) -> str:
    return INPUT_LABELS.get(name, name.replace("_", " "))


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    """Tornado chart (each bar ends at the savings with one input at the end of its range,
    that value written past the bar's end) and savings along the decisive inputs."""
    rows = read_csv(Path(data_dir) / DATA_CSV)
    scale = read_metadata(data_dir)["scale"]
    inputs = {r["parameter"]: r for r in rows if r["kind"] == "input"}
    base = next(iter(inputs.values()))["savings"]
    params = list(dict.fromkeys(r["parameter"] for r in rows if r["kind"] == "tornado"))
    ends = {(r["parameter"], r["end"]): r for r in rows if r["kind"] == "tornado"}
    params.sort(key=lambda p: abs(ends[(p, "high")]["savings"] - ends[(p, "low")]["savings"]))
    all_savings = [r["savings"] for r in ends.values()] + [base, PAPER_SAVINGS]
    span = max(all_savings) - min(all_savings)
    pad = 0.015 * span
    with figure(1, 2, figsize=(13, 5.2), width_ratios=(1.25, 1)) as (fig, (ax_t, ax_s)):
        ticks = []
        for i, p in enumerate(params):
            for end, color in (("low", LOW), ("high", HIGH)):
                r = ends[(p, end)]
                ax_t.barh(i, r["savings"] - base, 0.7, left=base, color=color, alpha=0.85)
                right = r["savings"] >= base
                ax_t.text(
                    r["savings"] + (pad if right else -pad),
                    i,
                    f"{r['value']:g}",
                    ha="left" if right else "right",
                    va="center",
                    fontsize=7,
                    bbox={"fc": "white", "ec": "none", "pad": 0.4, "alpha": 0.8},
                )
            source = "measured" if inputs[p]["source"] == "measured" else "assumed"
            ticks.append(f"{input_label(p)}\nbase {inputs[p]['value']:.3g} ({source})")
        ax_t.set_yticks(range(len(params)), ticks, fontsize=7)
        ax_t.set_xlim(min(all_savings) - 0.12 * span, max(all_savings) + 0.12 * span)
        ax_t.set_ylim(-0.6, len(params) - 0.4)
        ax_t.axvline(base, color="k", lw=0.8)
        ax_t.axvline(PAPER_SAVINGS, color="C3", ls=":")
        ax_t.set(
            xlabel="savings = 1 - PoT cost / centralized cost",
            title="(a) Sensitivity: one input at a time moved to the end of its range\n"
            "(the number past each bar is that input's value)",
        )
        fig.legend(
            handles=[
                Patch(color=LOW, alpha=0.85, label="input at the low end of its range"),
                Patch(color=HIGH, alpha=0.85, label="input at the high end of its range"),
                Line2D([], [], color="k", lw=0.8, label=f"base inputs: savings {base:.2f}"),
                Line2D([], [], color="C3", ls=":", label="paper: 60% lower cost"),
            ],
            loc="outside lower left",
            ncol=2,
        )
        for p in (
            "pot_capital_hourly_usd",
            "pot_relative_speed",
            "dc_device_hourly_usd",
            "throughput_ratio",
        ):
            sweep = sorted(
                (r for r in rows if r["kind"] == "sweep" and r["parameter"] == p),
                key=lambda r: r["value"],
            )
            base_v = inputs[p]["value"]
            lo, hi = sweep[0]["value"], sweep[-1]["value"]
            line = ax_s.plot(
                [(r["value"] - lo) / (hi - lo) for r in sweep],
                [r["savings"] for r in sweep],
                label=f"{input_label(p)}: {lo:g} to {hi:g}",
            )
            ax_s.plot([(base_v - lo) / (hi - lo)], [base], "o", color=line[0].get_color())
        ax_s.axhline(PAPER_SAVINGS, color="C3", ls=":", label="paper: 60% lower cost")
        ax_s.axhline(0.0, color="0.5", lw=0.8)
        ax_s.set(
            xlabel="position of the input in its range (0 = low end, 1 = high end)",
            ylabel="savings = 1 - PoT cost / centralized cost",
            title="(b) Savings along the decisive inputs (dot: base value)",
        )
        fig.legend(*ax_s.get_legend_handles_labels(), loc="outside lower right", ncol=2)
        return save_figure(fig, fig_dir, NAME, scale=scale)
