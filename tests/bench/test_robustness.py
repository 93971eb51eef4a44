"""The robustness benchmark (``pot_jax.bench.robustness``) and ByzFL's gamma-similarity split.

The sweep is checked on the ``tiny`` preset: it emits every requested run
and cell, a cell is the minimum over attacks, the spot-check model bans a
caught worker (whose rows then never reach the model) and never an honest
one, and a canary shows the undefended mean collapsing under a strong
attack. Each attack's JAX form is checked against its registered version.
"""

import dataclasses
import itertools
import json

import jax.numpy as jnp
import numpy as np
import pytest

from pot_jax.attacks import ATTACKS, AttackContext
from pot_jax.bench import robustness as rb
from pot_jax.learning import RULES, load_dataset
from pot_jax.learning.datasets import gamma_similarity_partition

TINY = rb.PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny_result():
    return rb.measure_robustness(TINY)


# --------------------------------------------------------------------------- #
# gamma-similarity partition
# --------------------------------------------------------------------------- #

LABELS = np.repeat(np.arange(10, dtype=np.int32), 30)[np.random.default_rng(3).permutation(300)]


@pytest.mark.parametrize("gamma", [0.0, 0.33, 0.66, 1.0])
def test_gamma_partition_uses_every_index_exactly_once(gamma):
    shards = gamma_similarity_partition(LABELS, 10, gamma, seed=5)
    merged = np.concatenate(shards)
    assert sorted(merged.tolist()) == list(range(len(LABELS)))
    assert all(s.dtype == np.int64 and np.all(np.diff(s) > 0) for s in shards)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 2  # array_split of the IID part and of the sorted rest


def test_gamma_one_is_iid_like_every_worker_sees_every_class():
    labels = np.tile(np.arange(10, dtype=np.int32), 300)  # 300 examples per worker
    for seed in range(5):
        for shard in gamma_similarity_partition(labels, 10, 1.0, seed):
            assert len(np.unique(labels[shard])) == 10
            assert np.bincount(labels[shard], minlength=10).min() >= 10


def test_gamma_zero_gives_each_worker_its_block_of_the_label_sorted_examples():
    """ByzFL's extreme_niid: sort by (label, index), cut into contiguous blocks."""
    by_label = np.lexsort((np.arange(len(LABELS)), LABELS))
    expected = np.array_split(by_label, 10)
    for seed in (0, 1):
        shards = gamma_similarity_partition(LABELS, 10, 0.0, seed)
        for shard, block in zip(shards, expected, strict=True):
            assert np.array_equal(shard, np.sort(block))
            assert len(np.unique(LABELS[shard])) == 1  # 30 per class, 30 per worker


def test_gamma_partition_is_deterministic_in_seed_and_mixes_in_between():
    a = gamma_similarity_partition(LABELS, 10, 0.33, seed=1)
    b = gamma_similarity_partition(LABELS, 10, 0.33, seed=1)
    c = gamma_similarity_partition(LABELS, 10, 0.33, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # floor(0.33 * 300) = 99 examples shared IID: more classes than gamma = 0, fewer than 1.
    classes = np.mean([len(np.unique(LABELS[s])) for s in a])
    assert 1 < classes < 10


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan"), "0.5", True])
def test_gamma_partition_rejects_gamma_outside_the_unit_interval(gamma):
    with pytest.raises(ValueError, match="gamma"):
        gamma_similarity_partition(LABELS, 10, gamma, seed=0)


def test_epoch_batches_walk_each_shard_without_replacement_and_sample_tiny_ones():
    shards = [np.arange(0, 10), np.arange(10, 13)]  # 10 examples, and 3 < batch
    batches = rb.epoch_batches(shards, 4, 6, seed=0)
    assert batches.shape == (6, 2, 4)
    epoch = batches[:2, 0].ravel()  # 10 // 4 = 2 batches an epoch, no repeats within it
    assert len(set(epoch.tolist())) == 8 and set(epoch.tolist()) <= set(range(10))
    assert set(batches[:, 1].ravel().tolist()) <= {10, 11, 12}


# --------------------------------------------------------------------------- #
# Attacks: the JAX forms match the registered ones
# --------------------------------------------------------------------------- #

W, P = 9, 24
BYZ = (2, 6)
GRADS = np.random.default_rng(0).standard_normal((W, P)).astype(np.float32) + 0.3
RULE = "trimmed_mean:trim=2"


def _round(grads=GRADS):
    byz_W = np.zeros(W, bool)
    byz_W[list(BYZ)] = True
    g = jnp.asarray(grads)
    return rb._Round(
        ref_CxP=g,
        base_WxP=g,
        byz_W=jnp.asarray(byz_W),
        own_FxP=g[jnp.asarray(BYZ)],
        flipped=lambda: None,
        byz_idx_F=jnp.asarray(BYZ),
        key=lambda: None,
    )


@pytest.mark.parametrize(
    "spec",
    [
        "ipm:epsilon=1.0",
        "fall_of_empires",
        "alie",
        "alie:z=0.7",
        "optimal_ipm:points=8",
        "optimal_alie:points=8",
        "mimic",
        "mimic:target=3",
        "min_max",
        "min_max:direction=std",
        "min_sum:direction=sign",
        "min_sum:bound=min",
        "fang_krum",
        "sign_flip",
        "scaled:factor=-3.0",
        "honest",
    ],
)
def test_jax_attack_sends_what_the_registered_attack_sends(spec):
    rule = RULES.build(RULE, flag="rule")
    extra = {"rule": rule} if spec.startswith("optimal") else {}
    registered = ATTACKS.build(spec, flag="spec", **extra)
    ctx = AttackContext(None, None, None, GRADS, 0, BYZ)
    expected = np.stack([registered.apply(ctx, w, np.random.default_rng(w)) for w in BYZ])
    ours = rb.jax_attack(spec, rule=rule, n_workers=W, n_byzantine=len(BYZ), protocol_mode=True)
    sent = np.asarray(ours.craft(_round()))
    np.testing.assert_allclose(sent, expected, rtol=2e-4, atol=2e-5)


def test_jax_fang_trimmed_mean_lies_beyond_the_honest_range_against_the_mean():
    ours = rb.jax_attack(
        "fang_trimmed_mean", rule=None, n_workers=W, n_byzantine=2, protocol_mode=True
    )
    import jax

    sent = np.asarray(ours.craft(_round()._replace(key=lambda: jax.random.key(0))))
    mean, high, low = GRADS.mean(0), GRADS.max(0), GRADS.min(0)
    down = mean > 0
    assert np.all(np.where(down, sent <= low + 1e-6, sent >= high - 1e-6))


def test_attacks_needing_their_own_gradient_are_refused_where_byzantine_workers_hold_no_data():
    with pytest.raises(ValueError, match="own gradient"):
        rb.jax_attack("sign_flip", rule=None, n_workers=W, n_byzantine=2, protocol_mode=False)


# --------------------------------------------------------------------------- #
# The sweep
# --------------------------------------------------------------------------- #


def test_sweep_emits_every_requested_run_and_cell(tiny_result):
    runs = tiny_result["runs"]
    keys = {
        (r["heterogeneity"], r["f"], r["aggregator"], r["attack"], r["verification"], r["seed"])
        for r in runs
    }
    expected = set(
        itertools.product(
            TINY.heterogeneity,
            TINY.byzantine,
            TINY.aggregators,
            TINY.attacks,
            TINY.verifications,
            TINY.seeds,
        )
    ) | set(
        itertools.product(TINY.heterogeneity, [0], TINY.aggregators, ["none"], ["none"], TINY.seeds)
    )
    assert keys == expected and len(runs) == len(expected)
    cells = {
        (c["heterogeneity"], c["f"], c["aggregator"], c["verification"])
        for c in tiny_result["cells"]
    }
    assert cells == set(
        itertools.product(TINY.heterogeneity, TINY.byzantine, TINY.aggregators, TINY.verifications)
    )
    assert {(c["heterogeneity"], c["aggregator"]) for c in tiny_result["no_attack"]} == set(
        itertools.product(TINY.heterogeneity, TINY.aggregators)
    )
    assert set(tiny_result["reference"]) == set(TINY.heterogeneity)
    for r in runs:
        assert len(r["accuracy"]) == TINY.steps // TINY.eval_every + 1
    for key in ("config", "seeds", "jax_version", "device", "git_commit"):
        assert key in tiny_result


def test_a_cell_is_the_worst_attack_of_the_seed_mean_best_accuracy(tiny_result):
    for cell in tiny_result["cells"]:
        mine = [
            r
            for r in tiny_result["runs"]
            if (r["heterogeneity"], r["f"], r["aggregator"], r["verification"])
            == (cell["heterogeneity"], cell["f"], cell["aggregator"], cell["verification"])
        ]
        per_attack = {
            a: float(np.max(np.mean([r["accuracy"] for r in mine if r["attack"] == a], axis=0)))
            for a in TINY.attacks
        }
        assert cell["worst_best"]["value"] == pytest.approx(min(per_attack.values()), abs=1e-4)
        assert cell["worst_best"]["attack"] == min(per_attack, key=per_attack.get)


def test_cell_takes_the_minimum_over_attacks_not_the_mean_or_maximum():
    """Two attacks, two seeds: the cell is the lower attack's seed-mean best, its seeds' spread."""

    def run(attack, seed, curve):
        return {"attack": attack, "seed": seed, "accuracy": curve}

    runs = [
        run("weak", 0, [0.1, 0.8, 0.7]),
        run("weak", 1, [0.1, 0.6, 0.9]),
        run("strong", 0, [0.1, 0.3, 0.2]),
        run("strong", 1, [0.1, 0.5, 0.4]),
    ]
    cell = rb._cell(runs, "best")
    assert cell["attack"] == "strong"
    assert cell["value"] == pytest.approx(0.4)  # best of the seed-mean curve [0.1, 0.4, 0.3]
    assert (cell["seed_min"], cell["seed_max"]) == (0.3, 0.5)
    assert rb._cell(runs, "final")["value"] == pytest.approx(0.3)


PROTOCOL_ATTACKS = ("honest", "ipm:epsilon=1.0", "fall_of_empires:tau=9.0", "inf")


@pytest.fixture(scope="module")
def protocol_program():
    """Protocol mode, 5 workers of which 2 Byzantine (slots 1 and 3), the mean, 40 rounds."""
    data = load_dataset("teacher", seed=0)
    config = dataclasses.replace(TINY, steps=40)
    learner = rb._learner(config, data)
    W, F = 5, 2
    rule = RULES.build("mean", flag="x")
    attacks = [
        rb.jax_attack(spec, rule=rule, n_workers=W, n_byzantine=F, protocol_mode=True)
        for spec in PROTOCOL_ATTACKS
    ]
    shape = rb._Shape(W, W, F, 8, config.steps, config.eval_every, True)
    program = rb._program(learner, [rule], attacks, shape, momentum=0.0, num_classes=10)
    shards = rb.heterogeneity_shards("iid", data.y_train, W, 0)
    arrays = tuple(map(jnp.asarray, (data.x_train, data.y_train, data.x_test, data.y_test)))
    batches = {("iid", 0): rb.epoch_batches(shards, 8, config.steps, 0)}
    byz_W = np.zeros(W, bool)
    byz_W[[1, 3]] = True
    init = rb._initializer(learner)

    def call(attack, catch):
        inputs = rb._Inputs(arrays, init, batches, {}, catch)
        group = [("iid", 0, "spot_check_model")]
        which = PROTOCOL_ATTACKS.index(attack)
        return rb._execute(program, which, shape, group, inputs, byz_W)

    return call


def test_spot_check_model_bans_a_caught_worker_and_never_an_honest_one(protocol_program):
    # Byzantine workers sending their own correct gradient are never banned, even if checked
    # every round; workers sending a wrong one are banned in the first checked round.
    assert protocol_program("honest", 1.0)[1].tolist() == [[-1, -1]]
    assert protocol_program("ipm:epsilon=1.0", 1.0)[1].tolist() == [[0, 0]]
    assert protocol_program("ipm:epsilon=1.0", 0.0)[1].tolist() == [[-1, -1]]
    # A malformed row is rejected by the finiteness check, not proven wrong: no ban.
    assert protocol_program("inf", 1.0)[1].tolist() == [[-1, -1]]


def test_a_worker_banned_in_round_zero_never_reaches_the_model(protocol_program):
    """Checked every round, the attackers are banned in round 0: the run is the one in which
    their rows are rejected from the start (Inf, rejected by the finiteness check)."""
    attacked = protocol_program("fall_of_empires:tau=9.0", 1.0)
    rejected = protocol_program("inf", 0.0)
    undefended = protocol_program("fall_of_empires:tau=9.0", 0.0)
    np.testing.assert_array_equal(attacked[0], rejected[0])
    assert not np.allclose(undefended[0], rejected[0], atol=0.05)


def test_the_same_seed_gives_the_same_run(protocol_program):
    first, second = (
        protocol_program("ipm:epsilon=1.0", 0.5),
        protocol_program("ipm:epsilon=1.0", 0.5),
    )
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_canary_the_undefended_mean_collapses_under_a_strong_attack(tiny_result):
    """Ten times minus the honest mean from 1 of 5 workers, no verification: far below no
    attack (a checker that could not fail would pass this)."""
    runs = tiny_result["runs"]

    def acc(attack, aggregator, verification):
        rs = [
            r
            for r in runs
            if r["attack"] == attack
            and r["aggregator"] == aggregator
            and r["verification"] == verification
            and r["heterogeneity"] == "gamma:1.0"
        ]
        return np.mean([r["final"] for r in rs])

    clean = acc("none", "mean", "none")
    assert clean > 0.35  # chance: 0.1
    assert acc("ipm:epsilon=10.0", "mean", "none") < 0.15


def test_validation_cells_are_protocol_configs_and_model_attacks():
    """What validate_against_protocol hands the real protocol parses, and the model runs it."""
    from pot_jax.config import ProtocolConfig

    config = rb.ValidationConfig()
    for aggregation, attack in config.cells:
        ProtocolConfig(aggregation=aggregation, attack=attack, workers=config.workers)
        rule = RULES.build(aggregation, flag="x")
        rb.jax_attack(
            attack, rule=rule, n_workers=config.workers, n_byzantine=4, protocol_mode=True
        )


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #


def test_main_writes_the_result_and_refuses_to_overwrite_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "robustness.json"
    monkeypatch.setitem(
        rb.PRESETS, "tiny", dataclasses.replace(TINY, aggregators=("mean",), attacks=("alie",))
    )
    assert rb.main(["--preset", "tiny", "--out", str(out), "--json", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads(out.read_text())
    assert printed == stored
    for key in ("config", "seeds", "jax_version", "device", "runs", "cells", "goal"):
        assert key in stored["sweep"]
    before = out.read_text()
    assert rb.main(["--preset", "tiny", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "robustness benchmark" in err[0] and "--force" in err[0]
    assert out.read_text() == before


# --------------------------------------------------------------------------- #
# Resuming a sweep
# --------------------------------------------------------------------------- #

ONE_ATTACK = dataclasses.replace(TINY, aggregators=("mean",), attacks=("alie",))
TWO_ATTACKS = dataclasses.replace(ONE_ATTACK, attacks=("alie", "ipm:epsilon=10.0"))


def _curves(result):
    return {rb._run_key(r): r["accuracy"] for r in result["runs"]}


def test_a_resumed_sweep_runs_only_what_is_missing_and_equals_a_fresh_one(monkeypatch):
    monkeypatch.setattr(rb, "SAVE_EVERY", 0.0)  # a save after every attack
    first = rb.measure_robustness(ONE_ATTACK)
    config = rb.resume_config(TWO_ATTACKS, first)
    saved = []
    resumed = rb.measure_robustness(config, previous=first, on_progress=saved.append)
    fresh = rb.measure_robustness(TWO_ATTACKS)
    assert _curves(resumed) == _curves(fresh)
    new = [t for t in resumed["timings"] if t not in first["timings"]]
    assert {t["attack"] for t in new} == {"ipm:epsilon=10.0"}  # alie was not run again
    assert [s["runs"] for s in resumed["sessions"]] == [len(first["runs"]), 4]
    assert len(saved) == 1 and saved[0]["runs"] == resumed["runs"]
    assert all(c["complete"] for c in resumed["cells"])


def test_resume_refuses_a_sweep_made_with_another_setting():
    first = rb.measure_robustness(ONE_ATTACK)
    with pytest.raises(ValueError, match=r"another setting \(steps 40 -> 60"):
        rb.resume_config(dataclasses.replace(TWO_ATTACKS, steps=60), first)
    with pytest.raises(ValueError, match="not a robustness sweep"):
        rb.resume_config(TWO_ATTACKS, {"runs": []})


def test_resume_refuses_stored_runs_that_do_not_reproduce():
    """Runs computed differently (or tampered) are found by re-running some of each session's."""
    first = rb.measure_robustness(ONE_ATTACK)
    both = rb.measure_robustness(rb.resume_config(TWO_ATTACKS, first), previous=first)
    assert {r["session"] for r in both["runs"]} == {0, 1}
    config = rb.resume_config(TWO_ATTACKS, both)
    check = rb.check_reproduces(config, both)
    assert check["max_difference"] == 0.0
    assert [(c["session"], c["of"][2]) for c in check["checked"]] == [
        (0, "alie"),
        (1, "ipm:epsilon=10.0"),
    ]
    for attack, session in (("alie", 0), ("ipm:epsilon=10.0", 1)):  # either session's drift
        tampered = json.loads(json.dumps(both))
        target = next(r for r in tampered["runs"] if r["attack"] == attack)
        assert target["session"] == session
        target["accuracy"] = [a + 0.01 for a in target["accuracy"]]
        with pytest.raises(ValueError, match="do not reproduce here"):
            rb.check_reproduces(config, tampered)
    doubled = {**both, "runs": both["runs"] + both["runs"][-1:]}
    with pytest.raises(ValueError, match="two runs of the same cell"):
        rb.resume_config(TWO_ATTACKS, doubled)


def test_an_incomplete_cell_is_marked_and_left_out_of_the_goal():
    fresh = rb.measure_robustness(TWO_ATTACKS)
    partial = [r for r in fresh["runs"] if not (r["attack"] == "alie" and r["seed"] == 0)]
    s = rb.summarize_runs(partial, TWO_ATTACKS)
    attacked = [c for c in s["cells"]]
    assert attacked and all(not c["complete"] and c["missing"] == ["alie"] for c in attacked)
    goal = s["goal"]["worst_best"]
    assert goal == {}  # no complete spot-check cell: nothing judged
    whole = rb.summarize_runs(fresh["runs"], TWO_ATTACKS)["goal"]["worst_best"]["mean"]
    assert whole["cells"] == 2 and whole["incomplete_cells"] == 0


def test_main_resumes_an_interrupted_sweep(tmp_path, capsys, monkeypatch):
    """Killed after its first (aggregator, f, attack), a sweep resumes where it stopped."""
    out = tmp_path / "robustness.json"
    monkeypatch.setitem(rb.PRESETS, "tiny", TWO_ATTACKS)
    monkeypatch.setattr(rb, "SAVE_EVERY", 0.0)
    real = rb.measure_robustness

    def interrupted(config, **kwargs):
        def stop(partial):
            kwargs["on_progress"](partial)
            if len({r["attack"] for r in partial["runs"]}) == 2:  # none, alie
                raise KeyboardInterrupt

        return real(config, **{**kwargs, "on_progress": stop})

    monkeypatch.setattr(rb, "measure_robustness", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rb.main(["--preset", "tiny", "--out", str(out), "--quiet"])
    stopped = json.loads(out.read_text())["sweep"]
    assert {r["attack"] for r in stopped["runs"]} == {"none", "alie"}
    assert not (tmp_path / "robustness.json.part").exists()
    monkeypatch.setattr(rb, "measure_robustness", real)
    assert rb.main(["--preset", "tiny", "--out", str(out), "--quiet"]) == 1  # no --resume
    assert "--resume" in capsys.readouterr().err
    assert rb.main(["--preset", "tiny", "--out", str(out), "--quiet", "--resume"]) == 0
    done = json.loads(out.read_text())
    assert done["resumed"]["reproduced"]["max_difference"] == 0.0
    assert len(done["resumed"]["reproduced"]["checked"]) == 1
    assert _curves(done["sweep"]) == _curves(real(TWO_ATTACKS))
    bad = ["--preset", "tiny", "--out", str(out), "--quiet", "--resume", "--steps", "60"]
    before = out.read_text()
    assert rb.main(bad) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume" in err[-1] and "steps" in err[-1]
    assert out.read_text() == before


def test_split_specs_keeps_each_attack_with_its_parameters():
    text = "ipm:epsilon=1.0, optimal_ipm:low=0.1,high=100.0,points=12,alie,,min_max"
    assert rb.split_specs(text) == (
        "ipm:epsilon=1.0",
        "optimal_ipm:low=0.1,high=100.0,points=12",
        "alie",
        "min_max",
    )
    assert rb.split_specs(",".join(rb.MINI_ATTACKS)) == rb.MINI_ATTACKS


@pytest.mark.slow  # ~30 s of CNN compilation; the mini preset covers the same sweep code
def test_the_mnist_preset_runs_on_mnist_files_with_byzfls_cnn(tmp_path):
    """ByzFL's published setting runs from --data-dir (synthetic IDX files here: no MNIST)."""
    from tests.learning.test_datasets import make_idx_dir

    make_idx_dir(tmp_path, n_train=200, n_test=20)
    config = dataclasses.replace(
        rb.PRESETS["mnist"],
        data_dir=str(tmp_path),
        byzantine=(1,),
        heterogeneity=("gamma:0.0",),
        aggregators=("trimmed_mean",),
        attacks=("alie",),
        steps=4,
        eval_every=2,
        seeds=(0,),
    )
    result = rb.measure_robustness(config)
    assert result["params"] == 431_080  # ByzFL's cnn_mnist: conv 20 and 50 of 5x5, dense 500
    assert result["n_train"] == 160  # ByzFL keeps 20% of the training set for validation
    assert {(r["attack"], r["verification"]) for r in result["runs"]} == {
        ("none", "none"),
        ("alie", "none"),
        ("alie", "spot_check_model"),
    }
    assert all(r["finite"] and len(r["accuracy"]) == 3 for r in result["runs"])  # steps 0, 2, 4


def test_progress_is_saved_at_most_every_save_every_seconds(monkeypatch):
    """Summarising every run for each save took 2 s at 10k runs: not after every call."""
    monkeypatch.setattr(rb, "SAVE_EVERY", 3600.0)
    saved = []
    rb.measure_robustness(TWO_ATTACKS, on_progress=saved.append)
    assert saved == []  # canary below: with 0 it saves after each attack
    monkeypatch.setattr(rb, "SAVE_EVERY", 0.0)
    rb.measure_robustness(TWO_ATTACKS, on_progress=saved.append)
    assert len(saved) == 3  # no attack, alie, ipm


def test_a_second_benchmark_writing_the_same_file_is_refused(tmp_path, capsys):
    """Two sweeps saving one file would save over each other's runs."""
    import subprocess
    import sys

    out = tmp_path / "robustness.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pot_jax.bench import robustness as rb; "
         f"assert rb._lock(rb.Path({str(out)!r})); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert rb.main(["--preset", "tiny", "--out", str(out), "--quiet"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another running benchmark" in err[0]
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert rb._lock(out)  # canary: once the holder is gone the lock is free
