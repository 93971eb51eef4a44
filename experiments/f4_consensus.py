"""F4: PBFT messages and latency per decision against the number of validators."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments.common import (
    DATA_CSV,
    display_name,
    figure,
    plain_log_axis,
    read_csv,
    read_metadata,
    save_figure,
    write_csv,
)

NAME = "f4_consensus"


@dataclass(frozen=True)
class Config:
    """Figure f4_consensus: messages, simulator wall seconds and virtual latency per
    decision against validators n, for all-to-all and linear (collector) PBFT; log-log
    with least-squares slopes. Real BLS votes and QCs, deterministic simulated network,
    a stream of ``values`` values (``all_to_all_values`` for all-to-all) one every
    ``submit_interval`` delays (a steady load, like a training run's rounds). Messages are shown over the whole stream and in
    steady state (the middle half of the sequence numbers), where linear PBFT with
    chained commit QCs costs exactly 4(n - 1).

    Command: ``pot-jax figures --only f4_consensus --scale paper``.
    Expected: message slope ~2 for all-to-all and ~1 for linear (steady state 4(n - 1));
    virtual latency flat in n (a constant number of network hops); all-to-all above
    ``all_to_all_max_n`` is recorded as skipped, not run.
    Runtime: smoke ~5 s (n = 4..16); paper ~3 min (n = 4..1024; linear 16 values,
    all-to-all 4; measured 132 s on an idle machine, 3.4 min with another job).
    """

    ns: tuple[int, ...]
    patterns: tuple[str, ...] = ("all_to_all", "linear")
    all_to_all_max_n: int = 256
    values: int = 16
    all_to_all_values: int = 4
    submit_interval: float = 1.0
    seed: int = 0


CONFIGS = {
    "smoke": Config(ns=(4, 8, 16), values=8),
    "paper": Config(ns=(4, 16, 64, 256, 1024)),
}


def run(config: Config, data_dir: Path) -> None:
    from pot_jax.network.scenario import bench_consensus

    r = bench_consensus(
        config.ns,
        config.patterns,
        values=config.values,
        all_to_all_values=config.all_to_all_values,
        submit_interval=config.submit_interval,
        all_to_all_max_n=config.all_to_all_max_n,
        seed=config.seed,
    )
    rows = []
    for x in r["results"]:
        rows.append(
            {
                "pattern": x["pattern"],
                "n": x["n"],
                "skipped": x.get("skipped", ""),
                "values": x.get("values"),
                "decided": x.get("decided"),
                "messages_per_decision": x.get("messages_per_decision"),
                "steady_state_messages_per_decision": x.get("steady_state_messages_per_decision"),
                "wall_seconds_per_decision": x.get("wall_seconds_per_decision"),
                "virtual_latency": x.get("virtual_latency"),
                "safety_violations": len(x.get("safety_violations", ())),
                "bls_backend": r["bls_backend"],
            }
        )
    write_csv(Path(data_dir) / DATA_CSV, rows)


def slope(xs, ys) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def fitted_slopes(rows: list[dict]) -> dict:
    """{(pattern, quantity): slope} over the runs that were not skipped."""
    out = {}
    for pattern in sorted({r["pattern"] for r in rows}):
        ok = sorted(
            (r for r in rows if r["pattern"] == pattern and not r["skipped"]), key=lambda r: r["n"]
        )
        if len(ok) < 2:
            continue
        ns = [r["n"] for r in ok]
        for q in ("messages_per_decision", "wall_seconds_per_decision", "virtual_latency"):
            out[(pattern, q)] = slope(ns, [r[q] for r in ok])
    return out


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    """Three log-log panels against n with their fitted slopes; one legend below them."""
    rows = read_csv(Path(data_dir) / DATA_CSV)
    meta = read_metadata(data_dir)
    scale, config = meta["scale"], meta["config"]
    slopes = fitted_slopes(rows)
    ns = sorted({r["n"] for r in rows})
    patterns = sorted({r["pattern"] for r in rows})
    panels = (
        ("messages_per_decision", "messages per decision", "(a) Messages"),
        (
            "wall_seconds_per_decision",
            "simulator wall seconds per decision",
            "(b) Simulator wall time",
        ),
        ("virtual_latency", "virtual latency (network delays)", "(c) Virtual latency"),
    )
    with figure(1, 3, figsize=(12, 4.2)) as (fig, axes):
        for ax, (q, label, title) in zip(axes, panels, strict=True):
            for k, pattern in enumerate(patterns):
                color = f"C{k}"
                ok = sorted(
                    (r for r in rows if r["pattern"] == pattern and not r["skipped"]),
                    key=lambda r: r["n"],
                )
                ax.plot(
                    [r["n"] for r in ok],
                    [r[q] for r in ok],
                    "o-",
                    color=color,
                    label=f"{display_name(pattern)}, whole stream",
                )
                s = slopes.get((pattern, q))
                if s is not None and ok:
                    ax.annotate(
                        f"slope {s:.2f}",
                        (ok[-1]["n"], ok[-1][q]),
                        textcoords="offset points",
                        xytext=(4, 7),
                        ha="right",
                        va="bottom",
                        fontsize=7,
                        color=color,
                    )
                if q != "messages_per_decision":
                    continue
                if ok and ok[0]["steady_state_messages_per_decision"]:
                    ax.plot(
                        [r["n"] for r in ok],
                        [r["steady_state_messages_per_decision"] for r in ok],
                        "s--",
                        color=color,
                        fillstyle="none",
                        label=f"{display_name(pattern)}, steady state",
                    )
                skipped = [r["n"] for r in rows if r["pattern"] == pattern and r["skipped"]]
                if skipped:
                    ax.plot(
                        skipped,
                        [2.0 * n * n for n in skipped],
                        "x",
                        color=color,
                        label=f"{display_name(pattern)} at n = "
                        f"{', '.join(map(str, skipped))}: not run (2n² shown)",
                    )
            if q == "messages_per_decision":
                ax.plot(ns, [4 * (n - 1) for n in ns], ":", color="0.3", label="4(n - 1)")
            ax.set(xscale="log", xlabel="validators n", ylabel=label, title=title)
            plain_log_axis(ax.xaxis, ns)
            if q == "virtual_latency":  # flat in n: a linear axis from 0 shows how flat
                ax.set_ylim(0, 1.2 * max(r[q] for r in rows if not r["skipped"]))
            else:
                ax.set_yscale("log")
                ys = [r[q] for r in rows if not r["skipped"]]
                few_decades = max(ys) / min(ys) < 100  # then label 2 and 5 too
                plain_log_axis(ax.yaxis, subs=(1.0, 2.0, 5.0) if few_decades else (1.0,))
                ax.margins(y=0.12)
            ax.margins(x=0.08)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3)
        fig.suptitle(
            "PBFT per decision: real BLS votes and QCs, simulated network, a value submitted "
            f"every {config['submit_interval']:g} network delay"
            f"{'' if config['submit_interval'] == 1 else 's'}; slopes: least-squares fit of log y on log n"
        )
        return save_figure(fig, fig_dir, NAME, scale=scale)
