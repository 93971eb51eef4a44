"""F2 (claims 2 and 4): rounds committed within a deadline under stress.

The consensus half is real: ``pot_jax.network`` validators (real BLS votes and
QCs, PBFT, linear pattern) on the deterministic simulated network with message
loss, a crashing and restarting honest validator and Byzantine validators.
The training half is **modelled** (``worker_model = "sampled_arrivals"``): no
gradients are computed. Each of W training nodes is online or offline (churn:
a two-state Markov chain per round), crashes in a round with probability
``worker_crash_rate``, and otherwise delivers its gradient after a lognormal
compute-plus-network time, lost with probability ``message_loss``. The
aggregation server closes collection when every online node has delivered or
at ``collect_timeout``; the round is viable if at least ``min_participation``
of the W nodes delivered, and then its record (``64 + 32 W`` bytes: one
commitment per node) is submitted to consensus. A round counts as up when it is
viable and committed (first honest decision) within ``deadline`` of its start.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path

from matplotlib.ticker import PercentFormatter

from experiments.common import (
    DATA_CSV,
    figure,
    plain_log_axis,
    read_csv,
    read_metadata,
    save_figure,
    write_csv,
)

NAME = "f2_uptime"
REAL_NODES_JSON = "real_nodes.json"  # `pot-jax bench uptime --figure-data DIR` writes it
WORKER_MODELS = ("sampled_arrivals",)


@dataclass(frozen=True)
class Config:
    """Figure f2_uptime (paper claim 2, "99.2% uptime during stress tests with more
    than 1000 concurrent training nodes", and claim 4, "more than 1000 concurrent
    nodes"): fraction of rounds committed within ``deadline`` (virtual time units; one
    network delay is ~1) (a) against the number of training nodes W with
    ``byzantine_validators`` silent validators (the first primaries) plus one honest
    validator that crashes and restarts (``validator_crash``): f = 2 faulty of n = 7 by
    default, with worker crashes, churn and message loss; and (b) against the number of
    silent validators at W = ``sweep_workers``, up to and past n/3 (the crash-restart
    validator stays, so faulty = silent + 1). The training nodes are modelled, not run:
    ``worker_model = "sampled_arrivals"`` (see the module docstring).

    Command: ``pot-jax figures --only f2_uptime --scale paper``.
    Expected: (a) uptime roughly flat in W (the simulator has no bandwidth model, so W
    enters through stragglers and participation only), below 100% because of the view
    change after the silent primary and the crash; (b) falls as soon as silent + crashed
    validators exceed f = (n-1)//3 (no quorum while the crashed one is down), safety intact.
    Runtime: smoke ~3 s; paper ~75 s (measured 72 s).
    """

    worker_counts: tuple[int, ...]
    rounds: int
    seeds: tuple[int, ...]
    validators: int = 7
    byzantine_validators: int = 1
    validator_strategy: str = "silent"
    byzantine_sweep: tuple[int, ...] = (0, 1, 2, 3, 4)
    sweep_workers: int = 100
    worker_model: str = "sampled_arrivals"
    round_interval: float = 20.0
    deadline: float = 30.0
    collect_timeout: float = 8.0
    compute_median: float = 3.0
    compute_sigma: float = 0.4
    worker_crash_rate: float = 0.01
    churn_leave: float = 0.02
    churn_rejoin: float = 0.2
    message_loss: float = 0.01
    min_participation: float = 0.5
    validator_crash: tuple[float, float] = (0.25, 0.5)  # (crash, restart) as fractions of the run

    def __post_init__(self):
        if self.worker_model not in WORKER_MODELS:
            raise ValueError(
                f"worker_model = {self.worker_model!r}; expected one of {WORKER_MODELS}"
            )


CONFIGS = {
    "smoke": Config(
        worker_counts=(10, 100), rounds=6, seeds=(0,), byzantine_sweep=(0, 2, 3), sweep_workers=10
    ),
    "paper": Config(worker_counts=(10, 30, 100, 300, 1000), rounds=50, seeds=(0, 1, 2)),
}


def collect(config: Config, workers: int, rounds: int, rng: random.Random) -> list[dict]:
    """Per round: when collection closed (relative to the round start) and how many delivered."""
    online = [True] * workers
    out = []
    for _ in range(rounds):
        online = [
            (rng.random() >= config.churn_leave) if on else (rng.random() < config.churn_rejoin)
            for on in online
        ]
        arrivals = []
        for on in online:
            if not on or rng.random() < config.worker_crash_rate:
                continue
            t = rng.lognormvariate(math.log(config.compute_median), config.compute_sigma)
            if rng.random() >= config.message_loss:
                arrivals.append(t)
        expected = sum(online)
        if len(arrivals) == expected and arrivals:
            close = min(max(arrivals), config.collect_timeout)
        else:
            close = config.collect_timeout  # someone online never delivered: wait it out
        delivered = sum(1 for t in arrivals if t <= close)
        out.append({"close": close, "delivered": delivered, "online": expected})
    return out


def simulate(config: Config, workers: int, n_byzantine: int, seed: int) -> dict:
    """One stress run; see the module docstring."""
    from pot_jax.consensus.messages import value_digest
    from pot_jax.network.checker import SafetyChecker
    from pot_jax.network.scenario import ScenarioConfig, build
    from pot_jax.network.simulator import NetworkConfig

    rng = random.Random(seed * 1_000_003 + workers)
    rounds = collect(config, workers, config.rounds, rng)
    end = config.rounds * config.round_interval + config.deadline
    honest = list(range(n_byzantine, config.validators))  # Byzantine ones include the primary
    crash_node = honest[-1] if len(honest) > 1 else None
    scenario = ScenarioConfig(
        n=config.validators,
        pattern="linear",
        values=0,
        seed=seed,
        network=NetworkConfig(drop_rate=config.message_loss, gst=end),
        byzantine=tuple((i, config.validator_strategy) for i in range(n_byzantine)),
        max_time=end,
    )
    cluster, net, memo = build(scenario)
    crash_at, restart_at = (f * end for f in config.validator_crash)
    if crash_node is not None:
        net.crash_at(crash_at, crash_node)
        net.restart_at(restart_at, crash_node, amnesia=False)
    for node in range(n_byzantine):
        net.act_every(5.0, node, end)
    digests = {}
    for r, info in enumerate(rounds):
        if info["delivered"] < config.min_participation * workers:
            continue  # not viable: no record to propose
        record = b"round %d seed %d " % (r, seed) + bytes(32 * workers)
        at = r * config.round_interval + info["close"]
        net.submit_at(at, record)
        digests[value_digest(record)] = r
    net.run(until=end)
    first = {}
    for node in cluster.honest():
        for dec, t in zip(node.decisions, node.decision_times, strict=True):
            if dec.digest in digests:
                first[dec.digest] = min(t, first.get(dec.digest, math.inf))
    up = sum(
        1
        for d, r in digests.items()
        if d in first and first[d] - r * config.round_interval <= config.deadline
    )
    return {
        "workers": workers,
        "byzantine_validators": n_byzantine,
        "seed": seed,
        "validators": config.validators,
        "f": (config.validators - 1) // 3,
        "crashed_validators": int(crash_node is not None),
        "rounds": config.rounds,
        "viable_rounds": len(digests),
        "committed_in_deadline": up,
        "committed_late_or_never": len(digests) - up,
        "uptime": up / config.rounds,
        "mean_participation": statistics.mean(x["delivered"] for x in rounds) / workers,
        "safety_violations": len(SafetyChecker(cluster, memo).violations()),
        "views": max((x.state.view for x in cluster.honest()), default=0),
    }


def run(config: Config, data_dir: Path) -> None:
    rows = []
    for workers in config.worker_counts:
        for seed in config.seeds:
            rows.append(
                {"sweep": "workers", **simulate(config, workers, config.byzantine_validators, seed)}
            )
    for b in config.byzantine_sweep:
        for seed in config.seeds:
            rows.append({"sweep": "byzantine", **simulate(config, config.sweep_workers, b, seed)})
    write_csv(Path(data_dir) / DATA_CSV, rows)
    # The real-node point is measured by `pot-jax bench uptime --figure-data` (half an hour
    # of real processes), not by this run: it is carried over from the figure's previous
    # directory, never dropped by regenerating the simulated curves.
    data_dir = Path(data_dir)
    previous = data_dir.parent / NAME / REAL_NODES_JSON
    if data_dir.name != NAME and previous.exists():
        shutil.copyfile(previous, data_dir / REAL_NODES_JSON)


def _mean_by(rows, key):
    xs = sorted({r[key] for r in rows})
    return xs, [[r["uptime"] for r in rows if r[key] == x] for x in xs]


PAPER_UPTIME = 0.992


def _real_nodes(data_dir: Path) -> dict | None:
    """The real-node measurement (`pot-jax bench uptime`), when it was made."""
    path = Path(data_dir) / REAL_NODES_JSON
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _uptime_errorbar(ax, xs, ups):
    """Mean over seeds with min-max bars."""
    means = [statistics.mean(u) for u in ups]
    ax.errorbar(
        xs,
        means,
        yerr=[
            [m - min(u) for m, u in zip(means, ups, strict=True)],
            [max(u) - m for m, u in zip(means, ups, strict=True)],
        ],
        fmt="o-",
        capsize=3,
        label="measured (mean, min-max over seeds)",
    )
    return means


def plot(data_dir: Path, fig_dir: Path) -> list[Path]:
    """(a) uptime against W on a y axis zoomed to where the measurements and 99.2% lie;
    (b) uptime against silent validators on the full 0-1 axis, the region past f shaded."""
    rows = read_csv(Path(data_dir) / DATA_CSV)
    meta = read_metadata(data_dir)
    scale, config = meta["scale"], meta["config"]
    by_w = [r for r in rows if r["sweep"] == "workers"]
    by_b = [r for r in rows if r["sweep"] == "byzantine"]
    n, f = rows[0]["validators"], rows[0]["f"]
    seeds = sorted({r["seed"] for r in rows})
    percent = PercentFormatter(1.0, decimals=0)
    with figure(1, 2, figsize=(11, 4.4)) as (fig, (ax_w, ax_b)):
        xs, ups = _mean_by(by_w, "workers")
        means = _uptime_errorbar(ax_w, xs, ups)
        ax_w.axhline(PAPER_UPTIME, color="C3", ls=":", label="paper: 99.2%")
        for x, m, u in zip(xs, means, ups, strict=True):
            ax_w.annotate(
                f"{m:.1%}",
                (x, max(u)),
                textcoords="offset points",
                xytext=(0, 4),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        low = min(min(min(u) for u in ups), PAPER_UPTIME)
        real = _real_nodes(data_dir)
        if real is not None:
            lo, hi = real["uptime_95ci_wilson"]
            up = real["uptime"]
            ax_w.errorbar(
                [real["settings"]["workers"]],
                [up],
                yerr=[[up - lo], [hi - up]],
                fmt="*",
                ms=11,
                color="C2",
                capsize=3,
                label=f"real processes over gRPC ({real['rounds']} rounds, 95% CI)",
            )
            ax_w.annotate(
                f"real processes over gRPC: {up:.1%}\n({real['rounds']} rounds, "
                f"n = {real['settings']['validators']}, 95% CI)",
                (real["settings"]["workers"], lo),
                textcoords="offset points",
                xytext=(-6, -4),
                ha="right",
                va="top",
                fontsize=7,
                color="C2",
            )
            low = min(low, lo)
        ax_w.set(
            xscale="log",
            xlabel="training nodes W (circles: modelled arrivals; star: real node processes)",
            ylabel="rounds committed within the deadline",
            ylim=(max(0.0, math.floor((low - 0.04) * 50) / 50), 1.005),
        )
        plain_log_axis(ax_w.xaxis, xs)
        ax_w.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
        crashed = by_w[0]["crashed_validators"]
        ax_w.set_title(
            f"(a) {by_w[0]['byzantine_validators']} silent + {crashed} crash-restart "
            f"of n = {n} validators: f = {f} faulty\n"
            "worker churn, crashes, message loss; y axis zoomed"
        )

        xs, ups = _mean_by(by_b, "byzantine_validators")
        _uptime_errorbar(ax_b, xs, ups)
        ax_b.axhline(PAPER_UPTIME, color="C3", ls=":", label="paper: 99.2%")
        crashed = by_b[0]["crashed_validators"]
        limit = f - crashed  # the most silent validators with silent + crashed <= f
        ax_b.axvspan(
            limit + 0.5,
            max(xs) + 0.5,
            color="0.9",
            zorder=0,
            label=f"silent + crashed > f = {f} validators",
        )
        ax_b.axvline(limit + 0.5, color="0.4", ls="--", lw=1)
        ax_b.text(
            max(xs) + 0.4,
            0.8,
            f"past f = {f} faulty of n = {n}:\nno quorum while the\ncrashed validator is down",
            ha="right",
            va="center",
            fontsize=8,
            color="0.25",
        )
        ax_b.set(
            xlabel=f"silent validators (plus {crashed} crash-restart) of n = {n}",
            ylabel="rounds committed within the deadline",
            ylim=(-0.02, 1.05),
            xlim=(min(xs) - 0.5, max(xs) + 0.5),
        )
        ax_b.set_xticks(range(min(xs), max(xs) + 1))
        ax_b.yaxis.set_major_formatter(percent)
        broken = sum(r["safety_violations"] for r in by_b)
        ax_b.set_title(
            f"(b) W = {by_b[0]['workers']} training nodes\nsafety violations in every run: {broken}"
        )
        handles, labels = ax_b.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
        fig.suptitle(
            f"Uptime: a round is up if it is committed within {config['deadline']:g} network "
            f"delays of its start (a round every {config['round_interval']:g}); "
            f"{rows[0]['rounds']} rounds x {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
            "per point"
        )
        return save_figure(fig, fig_dir, NAME, scale=scale)
