"""Real nodes on a real network (issue 14, "Measured"): goodput and commit latency.

Two measurements, on this machine, over the deployment transport
(``deploy.transport``: gRPC streams between processes on 127.0.0.1):

1. **Goodput** (examples per second that reach the model): the PoT cluster
   (``deploy.cluster.up``) against plain, unverified data-parallel SGD run
   by the same kind of processes over the same transport
   (``deploy.plain.run_plain``: worker hosts send gradients to one server,
   which averages them and broadcasts the model). Both run the same config
   (the embedded MNIST-1D default, MLP 40-256-256-10, W = 16 workers of
   B = 8 examples in one worker-host process; PoT with 4 validator
   processes, every node honest, so the ratio is the protocol's overhead and
   not an attack's), alternating plain, PoT, plain, PoT, ... PoT counts only
   accepted gradients (a submission that missed the deadline is lost work).
   Where a PoT round's time goes is read from the validators' metrics (round
   times, views, deadline misses) and from the CPU seconds each process used
   while training (sampled with psutil), next to the plain round.
2. **Commit latency against the number of validators**: n PBFT replicas
   (linear pattern, real BLS through the default backend, the deployed
   validators' ``ReplicaConfig``, a vote log fsynced before sending) hosted
   several to a process, each replica with its own ``Transport`` endpoint and
   key, decide a stream of opaque values of a PoT proposal's size; latency is
   from a value's (scheduled) submission to the moment a quorum of replicas
   decided it. Once on clean loopback and once with the fault layer
   (``deploy.faults``: user space, on the sending side, per message)
   emulating a 50 ms, 1% loss link.

Run: ``pot-jax bench cluster --json`` (about 12 minutes on 2 cores); writes
benchmarks/results/cluster.json and refuses to overwrite it without
``--force``. ``--smoke`` shrinks everything to a minute.

Expected (2 shared cores, recorded in cluster.json): the PoT cluster is
CPU-bound with 5 processes on 2 cores, and its goodput is well under the
issue's 0.9 of plain SGD's (0.11-0.14 at per-worker batches 8-128); commit
latency grows with n because every replica checks BLS signatures on the same
2 cores (64 validators: 0.56 s through a 50 ms link on a quiet machine, about
twice that with one core taken by other programs).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pot_jax.deploy.cluster import free_ports

DEFAULT_OUT = Path("benchmarks/results/cluster.json")
# Li and Dahmani's Go implementation of PoT: 2.07 s per commit at 50 nodes.
ANCHOR_LATENCY = {"nodes": 50, "seconds": 2.07, "source": "Li and Dahmani, Go PoT implementation"}
GOAL_RATIO = 0.9
GOAL_LATENCY = {"validators": 64, "delay_seconds": 0.05, "seconds": 1.0}
LINK_50MS = {"delay": 0.05, "loss": 0.01}


@dataclass(frozen=True)
class GoodputSettings:
    """The PoT-vs-plain comparison; every field is recorded in the result."""

    rounds: int = 200
    workers: int = 16
    batch_size: int = 8
    validators: int = 4
    worker_hosts: int = 1
    time_scale: float = 0.25
    repeats: int = 2
    seed: int = 0
    dataset: str = "mnist1d"
    hidden: tuple[int, ...] = (256, 256)
    steady_skip: float = 0.1  # the first fraction of rounds left out of the steady-state rate
    timeout: float = 900.0


@dataclass(frozen=True)
class LatencySettings:
    """The commit-latency sweep; every field is recorded in the result."""

    validators: tuple[int, ...] = (4, 16, 64)
    processes: int = 4
    values: int = 24
    warmup: int = 2
    value_bytes: int = 6144
    # Seconds between submissions: n / 32, at least 0.5 (a value decides before the next comes).
    min_interval: float = 0.5
    time_scale: float = 0.25
    links: tuple[tuple[str, dict | None], ...] = (("loopback", None), ("50ms_1pct_loss", LINK_50MS))
    vote_log: bool = True
    fault_seed: int = 0
    tail_seconds: float = 30.0

    def interval(self, n: int) -> float:
        return max(self.min_interval, n / 32)


SMOKE_GOODPUT = GoodputSettings(rounds=20, repeats=1)
SMOKE_LATENCY = LatencySettings(validators=(4, 16), values=6, warmup=1, tail_seconds=20.0)


# -- goodput -------------------------------------------------------------------------------------


def goodput_config(s: GoodputSettings, run_dir: Path):
    """The config both runtimes train: honest workers and validators, mean aggregation."""
    from pot_jax.config import ProtocolConfig

    return ProtocolConfig(
        dataset=s.dataset,
        hidden=s.hidden,
        workers=s.workers,
        batch_size=s.batch_size,
        validators=s.validators,
        rounds=s.rounds,
        eval_every=s.rounds,
        seed=s.seed,
        byzantine_fraction=0.0,
        byzantine_validators="",
        run_dir=str(run_dir),
        progress=False,
    )


class CpuSampler:
    """CPU seconds this process's descendants use between ``start_file`` appearing and ``stop``.

    Polls psutil every ``every`` seconds; a process is classified by its
    command line. Also takes the machine's busy CPU seconds over the same
    window, so that the load of other programs on a shared machine shows.
    """

    def __init__(self, start_file: Path, every: float = 0.2):
        self.start_file, self.every = Path(start_file), every
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, float] = {}
        self.machine_start = self.machine_end = None
        self.window = [None, None]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    @staticmethod
    def _role(cmdline: list[str]) -> str:
        line = " ".join(cmdline)
        if "--role validator" in line:
            return "validator"
        if "--role worker" in line:
            return "worker_host"
        if "pot_jax.deploy.plain server" in line:
            return "plain_server"
        if "pot_jax.deploy.plain worker" in line:
            return "plain_worker_host"
        return "other"

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            started = self.start_file.exists()
            if started and self.window[0] is None:
                self.window[0] = time.perf_counter()
                self.machine_start = self._busy()
            for child in me.children(recursive=True):
                try:
                    t = child.cpu_times()
                    cpu = t.user + t.system
                    if started and child.pid not in self.first:
                        self.first[child.pid] = (self._role(child.cmdline()), cpu)
                except psutil.Error:
                    continue
                if started:
                    self.last[child.pid] = cpu
            if started:
                self.window[1] = time.perf_counter()
                self.machine_end = self._busy()
            self._stop.wait(self.every)

    def summary(self) -> dict:
        by_role: Counter = Counter()
        count: Counter = Counter()
        for pid, (role, cpu0) in self.first.items():
            by_role[role] += self.last[pid] - cpu0
            count[role] += 1
        wall = (self.window[1] or 0.0) - (self.window[0] or 0.0)
        ours = sum(by_role.values())
        machine = (self.machine_end or 0.0) - (self.machine_start or 0.0)
        return {
            "window_seconds": wall,
            "cpu_seconds_by_role": {k: round(v, 3) for k, v in sorted(by_role.items())},
            "processes_by_role": dict(sorted(count.items())),
            "cpu_seconds_ours": round(ours, 3),
            "cpu_seconds_machine": round(machine, 3),
            "cpu_seconds_other_programs": round(max(0.0, machine - ours), 3),
            "cores_used_ours": round(ours / wall, 3) if wall > 0 else None,
        }


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _rate(rows: list[dict], batch_size: int, skip: float) -> dict:
    """Examples per second that reached the model: the whole run, and past the first ``skip``."""
    total = sum(r["accepted"] for r in rows) * batch_size
    wall = rows[-1]["wall_seconds"]
    k = min(len(rows) - 1, max(1, int(len(rows) * skip)))
    steady = sum(r["accepted"] for r in rows[k:]) * batch_size
    steady_wall = rows[-1]["wall_seconds"] - rows[k - 1]["wall_seconds"]
    round_s = [r["round_wall_seconds"] for r in rows]
    return {
        "rounds": len(rows),
        "examples": total,
        "train_seconds": wall,
        "examples_per_second": total / wall,
        "steady_examples_per_second": steady / steady_wall,
        "steady_from_round": k + 1,
        "round_seconds_median": statistics.median(round_s),
        "round_seconds_p90": _quantile(round_s, 0.9),
    }


def _quantile(xs: Sequence[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return math.nan
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _plain_once(s: GoodputSettings, workdir: Path, tag: str) -> dict:
    from pot_jax.deploy.plain import run_plain

    run_dir = workdir / f"plain-{tag}"
    config = goodput_config(s, run_dir)
    load0 = os.getloadavg()[0]
    with CpuSampler(run_dir / "start") as cpu:
        result = run_plain(
            config, run_dir, worker_hosts=s.worker_hosts, timeout=s.timeout, echo=lambda *_: None
        )
    rows = _rows(run_dir / "server" / "metrics.jsonl")
    out = _rate(rows, s.batch_size, s.steady_skip)
    out.update(
        runtime="plain",
        test_accuracy=result.test_accuracy,
        processes=result.processes,
        load_average_before=load0,
        load_average_after=os.getloadavg()[0],
        cpu=cpu.summary(),
        transport={k: v.get("transport") for k, v in result.node_stats.items()},
    )
    return out


def _pot_once(s: GoodputSettings, workdir: Path, tag: str) -> dict:
    from pot_jax.deploy.cluster import up

    run_dir = workdir / f"pot-{tag}"
    config = goodput_config(s, run_dir)
    load0 = os.getloadavg()[0]
    with CpuSampler(run_dir / "nodes" / "start") as cpu:
        result = up(
            config,
            keys_dir=str(workdir / f"pot-{tag}.keys"),
            worker_hosts=s.worker_hosts,
            time_scale=s.time_scale,
            timeout=s.timeout,
            echo=lambda *_: None,
        )
    rows = _rows(run_dir / "metrics.jsonl")
    out = _rate(rows, s.batch_size, s.steady_skip)
    summary = json.loads((run_dir / "summary.json").read_text())
    deadline = config.submission_deadline * s.time_scale
    views = [r["view"] for r in rows]
    out.update(
        runtime="pot",
        test_accuracy=summary["pot_accuracy"],
        processes=result.processes,
        accepted_fraction=sum(r["accepted"] for r in rows) / (len(rows) * s.workers),
        rounds_with_late_submissions=sum(
            1 for r in rows if r.get("rejected_by_category", {}).get("no_submission")
        ),
        rounds_longer_than_deadline=sum(1 for r in rows if r["round_wall_seconds"] > deadline),
        submission_deadline_seconds=deadline,
        view_changes=views[-1] if views else 0,
        max_round_seconds=max(r["round_wall_seconds"] for r in rows),
        proposal_bytes=_proposal_sizes(run_dir),
        load_average_before=load0,
        load_average_after=os.getloadavg()[0],
        cpu=cpu.summary(),
        transport={k: v.get("transport") for k, v in result.node_stats.items()},
        dropped={
            k: {m: c for m, c in v.items() if m.startswith("dropped")}
            for k, v in result.node_stats.items()
        },
    )
    return out


def _proposal_sizes(run_dir: Path) -> dict:
    """Bytes of the committed PoT values (record + inputs, what PBFT orders) of one run."""
    from pot_jax.protocol.transcript import TRANSCRIPT_NAME, RecordKind, TranscriptReader

    record = inputs = 0
    sizes = []
    for rec in TranscriptReader(run_dir / TRANSCRIPT_NAME):
        if rec.kind == RecordKind.ROUND:
            record = len(rec.payload)
        elif rec.kind == RecordKind.INPUTS:
            inputs = len(rec.payload)
            sizes.append(record + inputs)
    return {"median": statistics.median(sizes), "max": max(sizes)} if sizes else {}


def measure_goodput(s: GoodputSettings, workdir: Path, echo=print) -> dict:
    """Plain and PoT runs, alternating; the ratio of their median goodputs."""
    runs = []
    for k in range(s.repeats):
        for name, once in (("plain", _plain_once), ("pot", _pot_once)):
            echo(f"goodput: {name} run {k + 1}/{s.repeats} ({s.rounds} rounds)")
            r = once(s, workdir, str(k))
            echo(
                f"goodput: {name}: {r['steady_examples_per_second']:.0f} examples/s steady, "
                f"round {r['round_seconds_median'] * 1000:.0f} ms median"
            )
            runs.append(r)

    def med(runtime, key):
        return statistics.median(r[key] for r in runs if r["runtime"] == runtime)

    ratio = med("pot", "examples_per_second") / med("plain", "examples_per_second")
    steady = med("pot", "steady_examples_per_second") / med("plain", "steady_examples_per_second")
    pot_round, plain_round = (
        med("pot", "round_seconds_median"),
        med("plain", "round_seconds_median"),
    )
    return {
        "settings": dataclasses.asdict(s),
        "config": {
            k: v
            for k, v in goodput_config(s, Path("-")).to_dict().items()
            if k not in ("run_dir", "progress")
        },
        "runs": runs,
        "plain_examples_per_second": med("plain", "examples_per_second"),
        "pot_examples_per_second": med("pot", "examples_per_second"),
        "ratio": ratio,
        "steady_ratio": steady,
        "goal_ratio": GOAL_RATIO,
        "round_seconds_median": {"plain": plain_round, "pot": pot_round},
        "where_pot_round_time_goes": _breakdown(runs, pot_round, plain_round),
    }


def _breakdown(runs: list[dict], pot_round: float, plain_round: float) -> dict:
    """What the metrics and the CPU samples say about a PoT round, against a plain one."""
    pot = [r for r in runs if r["runtime"] == "pot"]
    plain = [r for r in runs if r["runtime"] == "plain"]

    def per_round(rs):
        by_role: Counter = Counter()
        rounds = sum(r["rounds"] for r in rs)
        for r in rs:
            by_role.update(r["cpu"]["cpu_seconds_by_role"])
        return {k: round(v / rounds * 1000, 2) for k, v in sorted(by_role.items())}

    return {
        "round_ms_median": {
            "pot": round(pot_round * 1000, 1),
            "plain": round(plain_round * 1000, 1),
        },
        "extra_ms_per_round": round((pot_round - plain_round) * 1000, 1),
        "cpu_ms_per_round_by_role": {"pot": per_round(pot), "plain": per_round(plain)},
        "rounds_with_late_submissions": [r["rounds_with_late_submissions"] for r in pot],
        "rounds_longer_than_submission_deadline": [r["rounds_longer_than_deadline"] for r in pot],
        "submission_deadline_seconds": pot[0]["submission_deadline_seconds"] if pot else None,
        "view_changes": [r["view_changes"] for r in pot],
        "max_round_seconds": [r["max_round_seconds"] for r in pot],
        "accepted_fraction": [r["accepted_fraction"] for r in pot],
        "how_to_read": (
            "The validators' metrics carry one time per round (round start to commit), not "
            "per phase, so the split is indirect: cpu_ms_per_round_by_role is the CPU each "
            "kind of process used per round while training (all validators together; the "
            "worker host computes the same 16 gradients in both runtimes), rounds with late "
            "submissions are rounds the submission deadline cut (their examples are lost), "
            "view changes are rounds that waited for PBFT's request timer, and the PBFT commit "
            "itself at n = 4 is the consensus_latency loopback row for 4 validators."
        ),
    }


# -- where a validator's CPU goes -----------------------------------------------------------------

# Loaded by every process of a profiled run (PYTHONPATH); profiles the validators only.
_SITECUSTOMIZE = """
import atexit, cProfile, os, sys
if "--role" in sys.argv and sys.argv[sys.argv.index("--role") + 1] == "validator":
    _profile = cProfile.Profile()
    _profile.enable()
    _out = os.path.join(sys.argv[sys.argv.index("--data-dir") + 1], "profile.pstats")
    # Written whole or not at all: a process killed while it dumps leaves no file.
    atexit.register(
        lambda: (_profile.disable(), _profile.dump_stats(_out + ".tmp"), os.replace(_out + ".tmp", _out))
    )
"""
# (label, file suffix, function): the pieces of a validator's round, as profiled.
PROFILED = (
    (
        "receive a submission (decode, check the worker's signature)",
        "deploy/node.py",
        "_submission",
    ),
    ("report: cheap checks and spot-check recomputation", "protocol/roles.py", "report"),
    (
        "derive the round (aggregate, new model, judge): propose and validate",
        "protocol/roles.py",
        "derive",
    ),
    (
        "PBFT step (includes validate's derivation at a backup)",
        "consensus/pbft/transition.py",
        "step",
    ),
    ("BLS pairing checks", "crypto/_bls_arkworks.py", "pairing_check"),
    ("vote log: write and fsync before sending", "deploy/store.py", "save"),
    ("commit: re-derive, write the transcript", "deploy/node.py", "_commit"),
    ("gRPC stream writes", "grpc/aio/_call.py", "write"),
    ("JIT compilation (first rounds)", "jax/_src/compiler.py", "backend_compile_and_load"),
)


def _profiled_run(s: GoodputSettings, workdir: Path, rounds: int) -> list[dict[str, float]]:
    """One PoT run of ``rounds`` rounds with its validators under cProfile: seconds per piece."""
    import pstats

    from pot_jax.deploy.cluster import up

    site = workdir / "profile-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    run_dir = workdir / f"pot-profiled-{rounds}"
    s = dataclasses.replace(s, rounds=rounds)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), old]))
    try:
        up(
            goodput_config(s, run_dir),
            keys_dir=str(workdir / f"pot-profiled-{rounds}.keys"),
            worker_hosts=s.worker_hosts,
            time_scale=s.time_scale,
            timeout=s.timeout,
            echo=lambda *_: None,
        )
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    per_validator = []
    for i in range(s.validators):
        path = run_dir / "nodes" / f"validator-{i}" / "profile.pstats"
        if not path.exists():
            continue  # killed before it finished writing its profile
        stats = pstats.Stats(str(path)).stats
        per_validator.append(
            {
                label: sum(
                    ct
                    for (f, _, fn), (_, _, _, ct, _) in stats.items()
                    if fn == name and f.endswith(suffix)
                )
                for label, suffix, name in PROFILED
            }
        )
    if not per_validator:
        raise RuntimeError(f"no validator of {run_dir} wrote its profile")
    return per_validator


def profile_validators(
    s: GoodputSettings, workdir: Path, rounds: tuple[int, int], echo=print
) -> dict:
    """Two more PoT runs, their validators under cProfile: ms per round in each piece.

    A piece's cost per round is its time in the long run minus its time in
    the short one, over the difference in rounds, so that what happens once
    (imports, JIT compilation in the first rounds, warm-up) cancels. Not
    counted in the goodput (profiling slows the validators). Times are
    cumulative, so nested pieces overlap: the PBFT step includes the
    derivation a backup runs to validate the proposal, pairings and vote-log
    writes.
    """
    short, long = rounds
    runs = {}
    for r in (short, long):
        echo(f"profile: one PoT run of {r} rounds, validators under cProfile")
        runs[r] = _profiled_run(s, workdir, r)

    def median(r, label):
        return statistics.median(v[label] for v in runs[r])

    return {
        "rounds": [short, long],
        "validators_profiled": [len(runs[short]), len(runs[long])],
        "ms_per_round_per_validator": {
            label: round((median(long, label) - median(short, label)) / (long - short) * 1000, 2)
            for label, _, _ in PROFILED
        },
        "once_seconds_per_validator": {
            label: round(median(short, label), 3) for label, _, _ in PROFILED
        },
        "note": (
            "per round: median over the validators of a piece's cumulative time in the long "
            "run minus the short run, over the extra rounds (one-time costs cancel); pieces "
            "nest (see profile_validators); cProfile slows Python code, and a shared machine "
            "adds noise (a negative or odd value is that noise)"
        ),
    }


# -- commit latency ------------------------------------------------------------------------------


def bench_value(k: int, size: int) -> bytes:
    """Value k of the stream: its index, then deterministic filler to ``size`` bytes."""
    head = struct.pack(">Q", k)
    filler = (b"pot-jax/bench/cluster/" + head) * (size // 30 + 1)
    return head + filler[: max(0, size - len(head))]


def measure_latency_point(
    s: LatencySettings, n: int, link: str, faults: dict | None, workdir: Path
) -> dict:
    """One (n, link) point: launch the replica hosts, stream the values, gather decision times."""
    from pot_jax.crypto.quorum import quorum_size

    d = workdir / f"pbft-n{n}-{link}"
    d.mkdir(parents=True)
    hosts = max(1, min(s.processes, n))
    hosted = [list(range(n))[k::hosts] for k in range(hosts)]
    interval = s.interval(n)
    spec = {
        "n": n,
        "addresses": [f"127.0.0.1:{p}" for p in free_ports(n)],
        "hosted": hosted,
        "values": s.values,
        "value_bytes": s.value_bytes,
        "interval": interval,
        "time_scale": s.time_scale,
        "faults": faults,
        "fault_seed": s.fault_seed,
        "vote_log": s.vote_log,
        "tail_seconds": s.tail_seconds,
        "dir": str(d),
    }
    spec_file = d / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = []
    try:
        for k in range(hosts):
            with open(d / f"host-{k}.log", "ab") as out:
                argv = [sys.executable, "-m", "pot_jax.bench.cluster", "_replicas"]
                procs.append(
                    subprocess.Popen(
                        [*argv, str(spec_file), str(k)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
        _wait_files(procs, d, [d / f"host-{k}" / "ready" for k in range(hosts)], 180.0)
        start = time.time() + 1.0
        # Written whole, then renamed: a host polling for the file must never read it empty
        # (under load one did, and every host died on float('')).
        (d / "go.tmp").write_text(repr(start))
        os.replace(d / "go.tmp", d / "go")
        end_by = s.values * interval + s.tail_seconds + 5.0
        _wait_files(procs, d, [d / f"host-{k}" / "finished" for k in range(hosts)], end_by + 1.0)
        (d / "stop").write_text("")
        for p in procs:
            p.wait(timeout=60)
        bad = [(k, p.returncode) for k, p in enumerate(procs) if p.returncode]
        if bad:
            raise RuntimeError(f"replica hosts exited with errors {bad}; see the logs in {d}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [json.loads((d / f"host-{k}" / "result.json").read_text()) for k in range(hosts)]
    decided: dict[int, list[float]] = {k: [] for k in range(s.values)}
    views, drops, transport, cpu = [], Counter(), Counter(), 0.0
    for res in results:
        for times in res["decided"].values():
            for k, t in times.items():
                decided[int(k)].append(t)
        views.extend(res["views"].values())
        drops.update(res["drops"])
        for stats in res["transport"].values():
            transport.update({k: v for k, v in stats.items() if isinstance(v, int)})
            transport.update({f"dropped: {k}": v for k, v in stats["dropped"].items()})
        cpu += res["cpu_seconds"]
    q = quorum_size(n)
    latency_quorum, latency_all, undecided = [], [], []
    for k in range(s.values):
        submitted = start + k * interval
        times = sorted(decided[k])
        if len(times) < q:
            undecided.append(k)
            continue
        if k < s.warmup:
            continue
        latency_quorum.append(times[q - 1] - submitted)
        if len(times) == n:
            latency_all.append(times[-1] - submitted)
    measured = len(latency_quorum)
    point = {
        "validators": n,
        "link": link,
        "faults": _describe_faults(faults, s.fault_seed),
        "processes": hosts,
        "replicas_per_process": [len(h) for h in hosted],
        "quorum": q,
        "submit_interval_seconds": interval,
        "values": s.values,
        "warmup_values_excluded": s.warmup,
        "measured": measured,
        "undecided_at_quorum": undecided,
        "latency_quorum_median": statistics.median(latency_quorum) if measured else None,
        "latency_quorum_p90": _quantile(latency_quorum, 0.9) if measured else None,
        "latency_quorum_max": max(latency_quorum) if measured else None,
        "latency_all_median": statistics.median(latency_all) if latency_all else None,
        "decided_by_all": len(latency_all),
        "max_view": max(views) if views else 0,
        "cpu_seconds_per_value": cpu / s.values,
        "replica_drops": dict(sorted(drops.items())),
        "transport": dict(sorted(transport.items())),
    }
    return point


def _describe_faults(faults: dict | None, seed: int) -> dict | None:
    if faults is None:
        return None
    from pot_jax.deploy.faults import FaultLayer, FaultSchedule

    return FaultLayer(FaultSchedule.from_dict(faults), seed=seed, start=0.0).describe()


def _wait_files(procs, d: Path, files: list[Path], timeout: float) -> None:
    until = time.time() + timeout
    while not all(f.exists() for f in files):
        for k, p in enumerate(procs):
            if p.poll() is not None and p.returncode:
                tail = (d / f"host-{k}.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(
                    f"replica host {k} exited with code {p.returncode}:\n" + "\n".join(tail)
                )
        if time.time() > until:
            missing = [str(f) for f in files if not f.exists()]
            raise TimeoutError(f"waited {timeout:.0f} s for {missing}")
        time.sleep(0.05)


def measure_latency(s: LatencySettings, workdir: Path, echo=print) -> dict:
    points = []
    for link, faults in s.links:
        for n in s.validators:
            echo(f"latency: n = {n}, {link}")
            p = measure_latency_point(s, n, link, faults, workdir)
            med = p["latency_quorum_median"]
            echo(
                f"latency: n = {n}, {link}: median {med if med is None else round(med, 3)} s, "
                f"{p['measured']} measured, {len(p['undecided_at_quorum'])} undecided"
            )
            points.append(p)
    at_goal = [
        p
        for p in points
        if p["validators"] == GOAL_LATENCY["validators"]
        and p["faults"] is not None
        and p["faults"]["schedule"]["delay"] == GOAL_LATENCY["delay_seconds"]
    ]
    return {
        "settings": dataclasses.asdict(s),
        "points": points,
        "goal": GOAL_LATENCY,
        "anchor": ANCHOR_LATENCY,
        "goal_met": (
            bool(at_goal[0]["latency_quorum_median"] is not None)
            and at_goal[0]["latency_quorum_median"] < GOAL_LATENCY["seconds"]
            if at_goal
            else None
        ),
        "replica_config": (
            "ReplicaConfig as the deployed validators build it: pattern linear, max_value_bytes "
            "4 MiB, request_timeout 8, view_change_timeout 8, checkpoint_interval 8, window 16, "
            "piggyback_delay 1 (time units of time_scale seconds), every value valid"
        ),
    }


# -- one replica-host process --------------------------------------------------------------------


def replica_host_main(argv: Sequence[str]) -> int:
    """``python -m pot_jax.bench.cluster _replicas SPEC K``: host replicas ``spec.hosted[K]``."""
    spec_file, k = argv[0], int(argv[1])
    spec = json.loads(Path(spec_file).read_text())
    asyncio.run(_host_replicas(spec, k))
    return 0


async def _host_replicas(spec: dict, k: int) -> None:
    import resource

    from pot_jax.consensus.keys import simulation_keys
    from pot_jax.consensus.pbft import (
        DURABLE_FIELDS,
        LINEAR,
        Deliver,
        Replica,
        ReplicaConfig,
        StepResult,
        Submit,
        TimerExpired,
        durable_state,
        initial_state,
        step,
    )
    from pot_jax.consensus.verifier import Verifier
    from pot_jax.crypto import bls
    from pot_jax.deploy.faults import FaultLayer, FaultSchedule
    from pot_jax.deploy.store import VoteLog
    from pot_jax.deploy.transport import Transport

    n, mine = spec["n"], spec["hosted"][k]
    d = Path(spec["dir"]) / f"host-{k}"
    d.mkdir(parents=True, exist_ok=True)
    sks, validators = simulation_keys(n)
    public_keys = validators.public_keys
    chain_id = b"pot-jax/bench/cluster"
    rc = ReplicaConfig(
        chain_id=chain_id, validators=validators, pattern=LINEAR, max_value_bytes=1 << 22
    )
    loop = asyncio.get_running_loop()
    scale = spec["time_scale"]
    schedule = FaultSchedule.from_dict(spec["faults"]) if spec["faults"] else None
    states, transports, logs = {}, {}, {}
    decided: dict[int, dict[int, float]] = {i: {} for i in mine}
    views: dict[int, int] = {}
    drops: Counter = Counter()
    finished = asyncio.Event()

    def verify(peer: str, message: bytes, signature: bytes) -> bool:
        role, _, index = peer.partition("/")
        if role != "validator" or not index.isdigit() or int(index) >= n:
            return False
        return bls.Verify(public_keys[int(index)], message, signature)

    replicas = {i: Replica(rc, i, sks[i], Verifier(validators)) for i in mine}

    def apply(i: int, result) -> None:
        old, states[i] = states.get(i), result.state
        if logs and (
            old is None
            or any(getattr(old, f) is not getattr(result.state, f) for f in DURABLE_FIELDS)
        ):
            logs[i].save(durable_state(result.state))  # durable before anything is sent, as a node
        for drop in result.drops:
            drops[drop.reason] += 1
        for s in result.sends:
            for j in range(n) if s.dest is None else (s.dest,):
                if j != i:
                    transports[i].send(f"validator/{j}", s.data)
        for t in result.timers:
            loop.call_later(t.delay * scale, fire, i, t.name, t.token)
        for dec in result.decisions:
            if dec.value is not None:
                decided[i].setdefault(struct.unpack_from(">Q", dec.value)[0], time.time())
            views[i] = max(views.get(i, 0), dec.view)
        if all(len(decided[j]) >= spec["values"] for j in mine):
            finished.set()

    def fire(i: int, name: str, token: int) -> None:
        apply(i, step(replicas[i], states[i], TimerExpired(name, token)))

    def on_message_of(i: int):
        def on_message(sender: str, data: bytes) -> None:
            apply(i, step(replicas[i], states[i], Deliver(int(sender.partition("/")[2]), data)))

        return on_message

    for i in mine:
        sk = sks[i]
        transports[i] = Transport(
            f"validator/{i}",
            spec["addresses"][i],
            {f"validator/{j}": a for j, a in enumerate(spec["addresses"]) if j != i},
            chain_id=chain_id,
            sign=lambda m, sk=sk: bls.Sign(sk, m),
            verify=verify,
            on_message=on_message_of(i),
            faults=None if schedule is None else FaultLayer(schedule, seed=spec["fault_seed"]),
            seed=i,
        )
        if spec["vote_log"]:
            logs[i] = VoteLog(d / f"validator-{i}" / "votes.log")  # own values/, as a node
        await transports[i].start()
        apply(i, StepResult(initial_state(replicas[i])))
    (d / "ready").write_text(str(os.getpid()))
    go = Path(spec["dir"]) / "go"
    while not go.exists():
        await asyncio.sleep(0.01)
    start = float(go.read_text())
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])

    def submit(v: int) -> None:
        value = bench_value(v, spec["value_bytes"])
        for i in mine:
            apply(i, step(replicas[i], states[i], Submit(value)))

    for v in range(spec["values"]):
        loop.call_later(max(0.0, start + v * spec["interval"] - time.time()), submit, v)
    end_by = start + spec["values"] * spec["interval"] + spec["tail_seconds"]
    try:
        await asyncio.wait_for(finished.wait(), timeout=max(0.0, end_by - time.time()))
    except TimeoutError:
        pass
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0
    (d / "finished").write_text("")
    stop = Path(spec["dir"]) / "stop"
    while not stop.exists():  # keep serving peers that have not decided yet
        await asyncio.sleep(0.05)
    result = {
        "decided": {str(i): {str(v): t for v, t in ts.items()} for i, ts in decided.items()},
        "views": {str(i): v for i, v in views.items()},
        "drops": dict(drops),
        "cpu_seconds": cpu,
        "transport": {
            str(i): {
                "sent": t.stats.sent,
                "received": t.stats.received,
                "bytes_sent": t.stats.bytes_sent,
                "reconnects": t.stats.reconnects,
                "dropped": dict(t.stats.dropped),
            }
            for i, t in transports.items()
        },
    }
    (d / "result.json").write_text(json.dumps(result))
    for t in transports.values():
        await t.stop()


# -- the result ----------------------------------------------------------------------------------


def measure(
    goodput: GoodputSettings | None,
    latency: LatencySettings | None,
    workdir: Path,
    echo=print,
    *,
    profile_rounds: tuple[int, int] | None = None,
) -> dict:
    from pot_jax.runinfo import run_metadata

    started = time.perf_counter()
    result: dict[str, Any] = {**run_metadata(), "benchmark": "cluster"}
    if latency is not None:
        result["consensus_latency"] = measure_latency(latency, workdir, echo)
    if goodput is not None:
        result["goodput"] = measure_goodput(goodput, workdir, echo)
        if profile_rounds:
            result["goodput"]["validator_profile"] = profile_validators(
                goodput, workdir, profile_rounds, echo
            )
    result["wall_seconds"] = time.perf_counter() - started
    result["notes"] = NOTES
    return result


NOTES = [
    "One machine: 2 CPU cores shared with other programs (cpu_seconds_other_programs in each "
    "goodput run says how much they took); every process of a run competes for them, so both "
    "runtimes are CPU-bound and the numbers are this machine's, not a network's.",
    "Goodput counts examples whose gradients reached the model: PoT counts only accepted "
    "submissions (a deadline miss loses the work), plain SGD waits for every gradient.",
    "The plain baseline is the same kind of processes (a server and the worker host) over the "
    "same gRPC transport, the same data, model, batches and gradient function, and no "
    "signatures, checks, validators, consensus or transcript.",
    "Network faults come from deploy.faults: a user-space layer on the sending side that delays "
    "or drops each message before it is queued for gRPC (no netem on these machines); a "
    "50 ms link adds 50 ms to every message in one direction, loss is per message.",
    "Commit latency: replicas use deterministic simulation keys (a public seed: benchmark only); "
    "the client's submission is scheduled at the same instant in every process, so latency "
    "has no client-to-replica hop; a value counts as decided when a quorum of replicas decided "
    "it (time.time() on one machine, comparable across its processes).",
    "The PBFT values are opaque bytes of value_bytes, the size class of a PoT proposal at "
    "n = 4 (goodput.runs[].proposal_bytes is the measured one); a real proposal grows with "
    "n, as it carries the validators' reports.",
]


def table(result: dict) -> str:
    lines = []
    g = result.get("goodput")
    if g:
        lines.append(
            f"{'runtime':8s} {'examples/s':>11s} {'steady/s':>9s} {'round ms':>9s} {'acc':>6s}"
        )
        for r in g["runs"]:
            lines.append(
                f"{r['runtime']:8s} {r['examples_per_second']:11.0f} "
                f"{r['steady_examples_per_second']:9.0f} {r['round_seconds_median'] * 1000:9.0f} "
                f"{r['test_accuracy']:6.3f}"
            )
        lines.append(
            f"PoT / plain goodput: {g['ratio']:.3f} (steady {g['steady_ratio']:.3f}; goal >= "
            f"{g['goal_ratio']})"
        )
        b = g["where_pot_round_time_goes"]
        lines.append(f"CPU ms per round by role: {b['cpu_ms_per_round_by_role']}")
        if "validator_profile" in g:
            lines.append("a validator's round, profiled (ms per round, pieces nest):")
            for label, ms in g["validator_profile"]["ms_per_round_per_validator"].items():
                lines.append(f"  {ms:8.1f}  {label}")
    c = result.get("consensus_latency")
    if c:
        lines.append(
            f"{'n':>3s} {'link':16s} {'median s':>9s} {'p90 s':>7s} {'meas':>5s} {'undec':>5s} {'view':>4s}"
        )
        for p in c["points"]:
            fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
            lines.append(
                f"{p['validators']:3d} {p['link']:16s} {fmt(p['latency_quorum_median']):>9s} "
                f"{fmt(p['latency_quorum_p90']):>7s} {p['measured']:5d} "
                f"{len(p['undecided_at_quorum']):5d} {p['max_view']:4d}"
            )
        lines.append(
            f"goal: < {c['goal']['seconds']} s at 64 validators, 50 ms: "
            f"{ {True: 'met', False: 'not met', None: 'not measured'}[c['goal_met']] }; anchor {c['anchor']['seconds']} s at "
            f"{c['anchor']['nodes']} nodes ({c['anchor']['source']})"
        )
    return "\n".join(lines)


def describe_existing(path: Path) -> str:
    try:
        old = json.loads(path.read_text())
        return (
            f"{path} holds the cluster benchmark of {old.get('utc_time')} "
            f"(git {str(old.get('git_commit'))[:10]})"
        )
    except (OSError, ValueError, TypeError):
        return f"{path} exists ({path.stat().st_size} bytes, not a cluster result)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pot-jax bench cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object on one line")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="result file ('-': none)")
    p.add_argument("--force", action="store_true", help="overwrite an existing result file")
    p.add_argument("--smoke", action="store_true", help="a minute-long run of everything")
    p.add_argument("--only", choices=("goodput", "latency"), default=None)
    p.add_argument("--rounds", type=int, default=None, help="goodput rounds per run")
    p.add_argument("--repeats", type=int, default=None, help="plain/PoT pairs, alternating")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="goodput: per-worker batch (the compute per round; default 8)",
    )
    p.add_argument("--validators", default=None, help="latency: comma-separated n")
    p.add_argument("--values", type=int, default=None, help="latency: values per point")
    p.add_argument(
        "--profile-rounds",
        default=None,
        help="rounds of the two extra PoT runs with their validators under cProfile (SHORT,LONG; "
        "0: none; "
        "default 10,60; 5,15 with --smoke)",
    )
    p.add_argument(
        "--workdir", default=None, help="keep the runs here (default: a temp dir, removed)"
    )
    return p


def _profile_rounds(text: str | None, smoke: bool) -> tuple[int, int] | None:
    if text is None:
        return (5, 15) if smoke else (10, 60)
    if text == "0":
        return None
    short, long = (int(x) for x in text.split(","))
    if not 0 < short < long:
        raise SystemExit(f"--profile-rounds {text}: expected SHORT,LONG with 0 < SHORT < LONG")
    return short, long


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_replicas"]:
        return replica_host_main(argv[1:])
    args = build_parser().parse_args(argv)
    out = None if args.out == "-" else Path(args.out)
    if out is not None and out.exists() and not args.force:
        print(f"{describe_existing(out)}; pass --force to overwrite", file=sys.stderr)
        return 1
    goodput = SMOKE_GOODPUT if args.smoke else GoodputSettings()
    latency = SMOKE_LATENCY if args.smoke else LatencySettings()
    if args.rounds is not None:
        goodput = dataclasses.replace(goodput, rounds=args.rounds)
    if args.repeats is not None:
        goodput = dataclasses.replace(goodput, repeats=args.repeats)
    if args.batch_size is not None:
        if args.batch_size < 1:
            print(f"--batch-size {args.batch_size}: expected a positive integer", file=sys.stderr)
            return 2
        goodput = dataclasses.replace(goodput, batch_size=args.batch_size)
    if args.validators is not None:
        latency = dataclasses.replace(
            latency, validators=tuple(int(x) for x in args.validators.split(","))
        )
    if args.values is not None:
        latency = dataclasses.replace(latency, values=args.values)
    workdir = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="pot-jax-bench-"))
    )
    echo = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    try:
        result = measure(
            None if args.only == "latency" else goodput,
            None if args.only == "goodput" else latency,
            workdir,
            echo,
            profile_rounds=_profile_rounds(args.profile_rounds, args.smoke),
        )
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
