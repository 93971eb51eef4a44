"""F7: BLS costs per backend and committee size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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

NAME = "f7_crypto"


@dataclass(frozen=True)
class Config:
    """Figure f7_crypto: Sign/Verify/Aggregate and quorum-certificate verification in ms
    per BLS backend, QC verification against committee size n (quorum_size(n) signers).

    Command: ``pot-jax figures --only f7_crypto --scale paper``.
    Expected: QC verification is one G1 sum plus one pairing check, so it grows
    slowly with n (arkworks: a few ms at n = 1024); py_ecc is ~100x slower.
    Runtime: smoke ~3 s (py_ecc at n = 4 only); paper ~15 s (py_ecc to n = 16,
    arkworks to n = 1024; measured 14-17 s).
    """

    sizes: tuple[tuple[str, tuple[int, ...]], ...]  # (backend, committee sizes) pairs
    aggregate_count: int = 64
    budget_s: float = 0.5
    max_repeats: int = 50


CONFIGS = {
    "smoke": Config(
        sizes=(("py_ecc", (4,)), ("arkworks", (4, 16))),
        aggregate_count=4,
        budget_s=0.02,
        max_repeats=2,
    ),
    "paper": Config(sizes=(("py_ecc", (4, 16)), ("arkworks", (4, 16, 64, 256, 1024)))),
}


def run(config: Config, data_dir: Path) -> None:
    from pot_jax.crypto.bench import bench_bls

    rows = []
    for backend, sizes in config.sizes:
        r = bench_bls(
            backend,
            tuple(sizes),
            aggregate_count=config.aggregate_count,
            budget_s=config.budget_s,
            max_repeats=config.max_repeats,
        )
        for op, count in (("sign", 1), ("verify", 1), ("aggregate", r["aggregate_count"])):
            t = r[f"{op}_ms"]
            rows.append(
                {
                    "backend": r["backend"],
                    "op": op,
                    "n": count,
                    "signers": count,
                    "min_ms": t["min"],
                    "median_ms": t["median"],
                    "repeats": t["repeats"],
                }
            )
        for n, t in r["qc_verify_ms"].items():
            rows.append(
                {
                    "backend": r["backend"],
                    "op": "qc_verify",
                    "n": n,
                    "signers": r["qc_signers"][n],
                    "min_ms": t["min"],
                    "median_ms": t["median"],
                    "repeats": t["repeats"],
                }
            )
    write_csv(Path(data_dir) / DATA_CSV, rows)


def _ms(value: float) -> str:
    """2.60, 11.9, 3,680: three significant digits without exponents."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    """QC verification against committee size (log-log), and the single operations' times."""
    rows = read_csv(Path(data_dir) / DATA_CSV)
    scale = read_metadata(data_dir)["scale"]
    backends = sorted({r["backend"] for r in rows})
    with figure(1, 2, figsize=(10, 4.2)) as (fig, (ax_qc, ax_ops)):
        ns = sorted({r["n"] for r in rows if r["op"] == "qc_verify"})
        for k, b in enumerate(backends):
            qc = sorted(
                (r for r in rows if r["backend"] == b and r["op"] == "qc_verify"),
                key=lambda r: r["n"],
            )
            ax_qc.plot(
                [r["n"] for r in qc],
                [r["min_ms"] for r in qc],
                "o-",
                color=f"C{k}",
                label=display_name(b),
            )
            for r in qc:
                ax_qc.annotate(
                    _ms(r["min_ms"]),
                    (r["n"], r["min_ms"]),
                    textcoords="offset points",
                    xytext=(0, 6),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color=f"C{k}",
                )
        signers = {r["n"]: r["signers"] for r in rows if r["op"] == "qc_verify"}
        ax_qc.set(
            xscale="log",
            yscale="log",
            xlabel="validators n (quorum signers under each tick)",
            ylabel="QC verification time (ms, min over repeats)",
            title="(a) Quorum-certificate verification",
        )
        plain_log_axis(ax_qc.xaxis, ns)
        ax_qc.set_xticklabels([f"{n}\n({signers[n]})" for n in ns])
        plain_log_axis(ax_qc.yaxis)
        ax_qc.margins(x=0.08, y=0.15)
        ax_qc.legend(loc="center right")
        ops = ("sign", "verify", "aggregate")
        width = 0.8 / len(backends)
        for k, b in enumerate(backends):
            vals = [
                next(r["min_ms"] for r in rows if r["backend"] == b and r["op"] == op) for op in ops
            ]
            xs = [i + (k - (len(backends) - 1) / 2) * width for i in range(len(ops))]
            ax_ops.bar(xs, vals, width, color=f"C{k}", label=display_name(b))
            for x, v in zip(xs, vals, strict=True):
                ax_ops.annotate(
                    _ms(v),
                    (x, v),
                    textcoords="offset points",
                    xytext=(0, 3),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        agg = next(r["n"] for r in rows if r["op"] == "aggregate")
        ax_ops.set_xticks(range(len(ops)), ["Sign", "Verify", f"Aggregate\n{agg} signatures"])
        ax_ops.set(
            yscale="log",
            ylabel="time (ms, min over repeats)",
            title="(b) Single BLS operations",
        )
        plain_log_axis(ax_ops.yaxis)
        ax_ops.margins(y=0.15)
        ax_ops.legend(loc="upper left")
        return save_figure(fig, fig_dir, NAME, scale=scale)
