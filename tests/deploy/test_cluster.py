"""pot-jax up with real node processes over gRPC on 127.0.0.1 (small: a few nodes, few rounds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pot_jax.config import ProtocolConfig
from pot_jax.deploy.cluster import up
from pot_jax.protocol.audit import Status, audit
from pot_jax.protocol.records import RoundRecord
from pot_jax.protocol.runner import run_protocol
from pot_jax.protocol.transcript import TRANSCRIPT_NAME, RecordKind, TranscriptReader

TINY = {
    "dataset": "teacher",
    "workers": 4,
    "batch_size": 8,
    "hidden": (16,),
    "learning_rate": 0.5,
    "eval_every": 2,
    "progress": False,
}


def _records(run_dir) -> list[RoundRecord]:
    return [
        RoundRecord.decode(rec.payload)
        for rec in TranscriptReader(run_dir / TRANSCRIPT_NAME)
        if rec.kind == RecordKind.ROUND
    ]


def test_cluster_commits_what_the_simulator_commits_and_passes_the_audit(tmp_path):
    fields = {**TINY, "rounds": 5, "byzantine_fraction": 0.0}
    result = up(
        ProtocolConfig(**fields, run_dir=str(tmp_path / "cluster")),
        keys_dir=str(tmp_path / "keys"),
        time_scale=0.1,
        timeout=240,
        echo=lambda *_: None,
    )
    assert result.rounds == 5
    sim = tmp_path / "sim"
    run_protocol(ProtocolConfig(**fields, run_dir=str(sim), keys=str(tmp_path / "keys")))
    cluster, simulated = _records(tmp_path / "cluster"), _records(sim)
    assert len(cluster) == len(simulated) == 5
    # The same model after every round; the same accepted workers and commitments.
    for a, b in zip(cluster, simulated, strict=True):
        assert a.new_params_hash == b.new_params_hash
        assert a.accepted == b.accepted and a.rejected == b.rejected
    header = json.loads((tmp_path / "cluster" / "config.json").read_text())
    assert header == json.loads((sim / "config.json").read_text()) | {
        "metadata": header["metadata"]
    }  # the same signed genesis
    report = audit(tmp_path / "cluster", recompute="all")
    assert report.status == Status.PASSED, report.reason
    assert report.reexecuted == 5
    # No secret key inside the run directory.
    for root, _, files in os.walk(tmp_path / "cluster"):
        assert not any(f.endswith(".key") for f in files), root


def test_killed_worker_host_misses_rounds_rejoins_and_is_never_slashed_on_a_lossy_network(tmp_path):
    fields = {**TINY, "rounds": 24, "byzantine_fraction": 0.25, "attack": "scaled", "budget": 0.5}
    faults = tmp_path / "faults.json"  # 1% loss, 1% duplicates, 10 ms delays, between real sockets
    faults.write_text(
        '{"delay": 0.01, "delay_kind": "exponential", "loss": 0.01, "duplicate": 0.01}'
    )
    result = up(
        ProtocolConfig(**fields, run_dir=str(tmp_path / "run")),
        keys_dir=str(tmp_path / "keys"),
        worker_hosts=2,
        time_scale=0.1,
        timeout=300,
        kill="workers/1@2",
        restart_after=1.0,
        faults=str(faults),
        echo=lambda *_: None,
    )
    assert result.kills == [{"round": result.kills[0]["round"], "node": "workers/1"}]
    records = _records(tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    hosted = {1, 3}  # _split(4, 2): host 1 runs nodes 1 and 3
    missed = [
        r.round
        for r in records
        if any(x.worker in hosted and x.category == "no_submission" for x in r.rejected)
    ]
    assert missed, "the killed host's nodes missed no round"
    back = [
        r.round
        for r in records
        if r.round > max(missed) and {a.worker for a in r.accepted} & hosted
    ]
    assert back, "the restarted host's nodes never submitted again"
    assert summary["honest_workers_slashed"] == 0
    # Not --recompute all: a cheater accepted unchecked is the spot check's known miss rate.
    report = audit(tmp_path / "run")
    assert report.status == Status.PASSED, report.reason


@pytest.mark.parametrize(
    "how",
    [
        # ~30 s each (five node processes import JAX): the default run keeps the variant that
        # covers Ctrl-C twice *and* an inherited ignored SIGINT; `-m slow` runs the other two.
        pytest.param("ctrl_c_twice", marks=pytest.mark.slow),
        pytest.param("sigterm", marks=pytest.mark.slow),
        "ctrl_c_inherited_ignored",
    ],
)
def test_ctrl_c_or_sigterm_stops_every_node_process(tmp_path, how):
    argv = [
        sys.executable, "-m", "pot_jax.cli", "up", "--dataset", "teacher", "--workers", "4",
        "--batch-size", "8", "--hidden", "16", "--rounds", "100000", "--time-scale", "0.1",
        "--run-dir", str(tmp_path / "run"), "--keys", str(tmp_path / "keys"),
    ]  # fmt: skip
    # A shell's background job inherits an ignored SIGINT; `up` must still answer it.
    ignored = how == "ctrl_c_inherited_ignored"
    up_proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignored else None,
        start_new_session=True,  # its own process group, killed whole if the test fails
    )
    try:
        _stop_and_check(up_proc, tmp_path, how)
    finally:
        if up_proc.poll() is None:  # a failed run must not leave the cluster running
            os.killpg(up_proc.pid, signal.SIGKILL)
            up_proc.wait()


def _stop_and_check(up_proc, tmp_path, how):
    nodes = tmp_path / "run" / "nodes"
    deadline = time.time() + 180
    while time.time() < deadline and not (nodes / "start").exists():
        time.sleep(0.2)
    assert (nodes / "start").exists(), up_proc.stdout.read1().decode(errors="replace")
    pids = [int((d / "ready").read_text()) for d in nodes.iterdir() if (d / "ready").exists()]
    assert len(pids) == 5  # 4 validators and one worker host
    if how == "sigterm":  # a scheduler, timeout(1) or kill; or a shell's background job
        up_proc.send_signal(signal.SIGTERM)
    else:
        up_proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        up_proc.send_signal(signal.SIGINT)  # impatient: a second Ctrl-C while it stops nodes
    out, _ = up_proc.communicate(timeout=60)
    assert up_proc.returncode == 130, out.decode(errors="replace")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_killed_validators_recover_and_a_killed_primary_causes_a_view_change(tmp_path):
    fields = {**TINY, "rounds": 10, "byzantine_fraction": 0.0, "checkpoint_every": 4}
    result = up(
        ProtocolConfig(**fields, run_dir=str(tmp_path / "run")),
        keys_dir=str(tmp_path / "keys"),
        time_scale=0.1,
        timeout=300,
        kill="validator/2@2,primary@5",
        restart_after=0.5,
        echo=lambda *_: None,
    )
    assert result.rounds == 10 and len(result.kills) == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    primary_killed = result.kills[1]
    view_before = rows[primary_killed["round"] - 1]["view"]
    assert rows[-1]["view"] > view_before, "killing the primary changed no view"
    assert primary_killed["node"] == f"validator/{view_before % 4}"
    report = audit(tmp_path / "run", recompute="all")
    assert report.status == Status.PASSED, report.reason
    # Each restarted validator resumed from its own transcript and vote log and caught up:
    # its own transcript is complete and passes the audit too.
    for kill in result.kills:
        own = tmp_path / "run" / "nodes" / kill["node"].replace("/", "-")
        stats = json.loads((own / "node-stats.json").read_text())
        assert stats["restarts"] == 1
        assert audit(own).status == Status.PASSED


def test_a_validator_down_longer_than_its_peers_keep_gradients_catches_up_by_state_transfer(
    tmp_path,
):
    """Validators keep 2 rounds of gradients here (64 by default): validator 2, killed after
    round 2 and down for seconds, can no longer re-derive the rounds it missed. It adopts
    the certified state of a checkpoint round from its peers, catches up and closes; its
    own transcript passes audit --recompute all."""
    fields = {
        **TINY,
        "rounds": 40,
        "byzantine_fraction": 0.0,
        "byzantine_validators": "",
        "checkpoint_every": 4,
    }
    result = up(
        ProtocolConfig(**fields, run_dir=str(tmp_path / "run")),
        keys_dir=str(tmp_path / "keys"),
        time_scale=0.1,
        timeout=300,
        kill="validator/2@2",
        restart_after=2.0,
        history_rounds=2,
        transfer_after=3,
        echo=lambda *_: None,
    )
    assert result.rounds == 40 and len(result.kills) == 1
    own = tmp_path / "run" / "nodes" / "validator-2"
    stats = json.loads((own / "node-stats.json").read_text())
    assert stats["restarts"] == 1 and stats["progress"]["closed"]
    assert stats["state transfers"] >= 1 and stats["rounds adopted by state transfer"] >= 3
    report = audit(own, recompute="all")
    assert report.status == Status.PASSED, report.reason
    assert audit(tmp_path / "run", recompute="all").status == Status.PASSED


def test_the_cluster_runs_as_ray_actors(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    result = up(
        ProtocolConfig(**TINY, rounds=4, run_dir=str(tmp_path / "run")),
        keys_dir=str(tmp_path / "keys"),
        time_scale=0.1,
        timeout=300,
        engine="ray",
        kill="workers/0@2",
        restart_after=0.5,
        echo=lambda *_: None,
    )
    assert result.rounds == 4 and result.kills[0]["node"] == "workers/0"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cluster"]["engine"] == "ray"
    assert audit(tmp_path / "run").status == Status.PASSED


def test_a_byzantine_primary_that_equivocates_double_votes_and_spams_cannot_stop_the_cluster(
    tmp_path,
):
    """The simulator's consensus-level strategies run on real messages between processes.

    Validator 0, the first primary, forks its pre-prepares between the others, signs a
    second digest for every vote and broadcasts garbage once a delay. The honest three
    drop what is malformed, change view, commit every round, and slash it for the
    equivocation their replicas proved.
    """
    fields = {
        **TINY,
        "rounds": 6,
        "byzantine_fraction": 0.0,
        "byzantine_validators": "0",
        "validator_strategy": "equivocating_primary+double_voting+garbage",
    }
    run_dir = tmp_path / "run"
    result = up(
        ProtocolConfig(**fields, run_dir=str(run_dir)),
        keys_dir=str(tmp_path / "keys"),
        time_scale=0.1,
        timeout=300,
        echo=lambda *_: None,
    )
    assert result.rounds == 6
    report = audit(run_dir, recompute="all")
    assert report.status == Status.PASSED, report.reason
    stats = {
        i: json.loads((run_dir / "nodes" / f"validator-{i}" / "node-stats.json").read_text())
        for i in range(4)
    }
    assert stats[0]["byzantine acts"] > 0 and stats[0]["byzantine messages sent"] > 0
    for i in (1, 2, 3):
        drops = {k: v for k, v in stats[i].items() if k.startswith("dropped: pbft: ")}
        assert drops.get("dropped: pbft: malformed", 0) > 0, drops
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["max_view"] >= 1  # the forked first proposal never gathered a quorum
    assert "equivocation" in summary["slashed_validators"].get("0", []), summary


def test_a_worker_host_that_finished_is_not_a_failure_but_any_other_exit_is(tmp_path):
    """A host exits 0 once f + 1 validators announced the end, maybe before they close."""
    from pot_jax.deploy.cluster import Proc, _check_alive

    class Runner:
        def __init__(self, codes):
            self.codes = codes

        def exit_code(self, p):
            return self.codes[p.name]

    log = tmp_path / "absent.log"
    procs = [Proc("workers/0", [], tmp_path, log), Proc("validator/1", [], tmp_path, log)]
    _check_alive(Runner({"workers/0": 0, "validator/1": None}), procs)
    for codes in ({"workers/0": 1, "validator/1": None}, {"workers/0": None, "validator/1": 0}):
        with pytest.raises(RuntimeError, match="exited with code"):
            _check_alive(Runner(codes), procs)
