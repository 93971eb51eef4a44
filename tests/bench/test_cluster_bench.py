"""pot-jax bench cluster, small: the plain SGD baseline trains, the latency harness measures."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from pot_jax.bench import cluster as bench
from pot_jax.config import ProtocolConfig
from pot_jax.deploy.plain import (
    PlainWireError,
    build_context,
    decode,
    encode_gradient,
    run_plain,
)
from pot_jax.learning.encoding import decode_pytree, pytree_digest

TINY = {
    "dataset": "teacher",
    "workers": 4,
    "batch_size": 8,
    "hidden": (16,),
    "learning_rate": 0.5,
    "rounds": 2,
    "eval_every": 2,
    "byzantine_fraction": 0.0,
    "byzantine_validators": "",
    "progress": False,
}


def _direct_sgd(ctx, rounds: int):
    """W workers' gradients averaged and ``p - lr * g`` taken, in NumPy, in this process."""
    flat, unravel = ravel_pytree(ctx.params0)
    p_P = np.asarray(flat, np.float64)
    W, lr = ctx.config.workers, ctx.config.learning_rate
    for r in range(rounds):
        params = unravel(p_P.astype(np.float32))
        g_WxP = [
            np.asarray(ctx.learner.worker_gradient(params, *ctx.batches(r, w))) for w in range(W)
        ]
        p_P = p_P - lr * np.mean(np.asarray(g_WxP, np.float64), axis=0)
    return p_P


def test_plain_sgd_over_processes_is_the_mean_sgd_step_and_lowers_the_loss(tmp_path):
    """Two rounds through a server and two worker-host processes give the model that direct
    mean-gradient SGD computes in-process, and the loss on those rounds' batches falls."""
    config = ProtocolConfig(**TINY, run_dir=str(tmp_path / "unused"))
    result = run_plain(
        config, tmp_path / "plain", worker_hosts=2, timeout=120, echo=lambda *_: None
    )
    assert result.rounds == 2 and result.processes == 3
    ctx = build_context(config)
    params = decode_pytree((tmp_path / "plain" / "server" / "model.bin").read_bytes(), ctx.params0)
    assert pytree_digest(params, ctx.learner.spec).hex() == result.final_params_hash
    got_P = np.asarray(ravel_pytree(params)[0])
    start_P = np.asarray(ravel_pytree(ctx.params0)[0])
    assert not np.allclose(got_P, start_P)
    np.testing.assert_allclose(got_P, _direct_sgd(ctx, 2), rtol=1e-4, atol=1e-6)
    xs, ys = zip(*(ctx.batches(r, w) for r in range(2) for w in range(4)), strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert float(ctx.learner.loss(params, x, y)) < float(ctx.learner.loss(ctx.params0, x, y))
    rows = [json.loads(line) for line in (tmp_path / "plain/server/metrics.jsonl").open()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["accepted"] == 4 for r in rows)
    # Every gradient arrived once, over the transport: 4 workers x 2 rounds.
    assert result.node_stats["server"]["transport"]["received"] == 8


def test_plain_wire_refuses_truncated_or_unknown_messages():
    kind, r, w, payload = decode(encode_gradient(3, 2, np.ones(5, np.float32)))
    assert (kind, r, w, len(payload)) == (2, 3, 2, 20)
    for bad in (b"", b"\x02\x00", b"\x09abc", b"\x03extra"):
        with pytest.raises(PlainWireError):
            decode(bad)


def test_commit_latency_of_four_replicas_over_real_streams(tmp_path):
    """n = 4 replicas in 2 processes decide every value at a quorum; through the fault layer's
    50 ms links a decision takes at least the 4 one-way hops of linear PBFT before anyone
    decides (pre-prepare, prepare votes, prepare QC, commit votes)."""
    s = dataclasses.replace(
        bench.LatencySettings(), validators=(4,), processes=2, values=4, warmup=1, tail_seconds=15
    )
    clean = bench.measure_latency_point(s, 4, "loopback", None, tmp_path)
    slow = bench.measure_latency_point(s, 4, "slow", {"delay": 0.05}, tmp_path)
    for point in (clean, slow):
        assert point["undecided_at_quorum"] == [] and point["measured"] == 3
        assert point["replicas_per_process"] == [2, 2] and point["max_view"] == 0
    assert 0 < clean["latency_quorum_median"] < 2.0
    assert slow["latency_quorum_median"] >= 4 * 0.05
    assert slow["faults"]["method"] == "user-space sender-side fault layer"
    assert slow["transport"]["sent"] > 0


def test_bench_refuses_to_overwrite_a_result_without_force(tmp_path, capsys):
    out = tmp_path / "cluster.json"
    out.write_text(json.dumps({"utc_time": "then", "git_commit": "abc"}))
    assert bench.main(["--out", str(out), "--only", "latency"]) == 1
    assert "--force" in capsys.readouterr().err
    assert json.loads(out.read_text())["utc_time"] == "then"


def test_goodput_rate_counts_only_accepted_examples():
    rows = [
        {"accepted": 4, "wall_seconds": 1.0, "round_wall_seconds": 1.0},
        {"accepted": 0, "wall_seconds": 2.0, "round_wall_seconds": 1.0},
        {"accepted": 4, "wall_seconds": 3.0, "round_wall_seconds": 1.0},
    ]
    rate = bench._rate(rows, batch_size=8, skip=0.1)
    assert rate["examples"] == 64 and rate["examples_per_second"] == pytest.approx(64 / 3)
    assert rate["steady_examples_per_second"] == pytest.approx(32 / 2)
