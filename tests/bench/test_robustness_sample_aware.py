"""The sample-aware attackers in the robustness benchmark's spot-check model.

A sampled round in which the attacker sends its own gradient passes; a
sampled attacking round is caught and the worker banned; the oracle attacks
exactly where no honest validator samples it; a canary that attacks exactly
where it is sampled is caught at once. Then ``measure_sample_aware`` on the
``tiny`` preset and its command line. The oracle's prediction itself is
checked against the real protocol in tests/attacks/test_sample_aware.py.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pot_jax.attacks import AttackContext, sample_aware
from pot_jax.attacks.sampling import shared_attack
from pot_jax.bench import robustness as rb
from pot_jax.learning import RULES, load_dataset

TINY = rb.SAMPLE_AWARE_PRESETS["tiny"]
INNER = "ipm:epsilon=10.0"
WRAPPED = f"sample_aware:inner={INNER}"
SPECS = (
    "honest",
    INNER,
    f"{WRAPPED},knows=oracle",
    f"{WRAPPED},knows=blind,p=1.0",
    f"{WRAPPED},knows=blind,p=0.0",
    f"{WRAPPED},knows=blind,p=0.5",
    f"{WRAPPED},knows=blind,p=0.5,coin=shared,seed=1",
    f"{WRAPPED},knows=blind,p=1.0,coin=turns",
    f"{WRAPPED},knows=blind,p=1.0,coin=shared,start=30",
)
W, F = 5, 2


def _anti_oracle(rule):
    """Canary: attacks exactly in the rounds an honest validator samples it."""
    inner = rb.jax_attack(INNER, rule=rule, n_workers=W, n_byzantine=F, protocol_mode=True)

    def craft(rnd):
        return jnp.where(rnd.sampled_F[:, None], inner.craft(rnd), rnd.own_FxP)

    return rb.JaxAttack("anti_oracle", craft)


@pytest.fixture(scope="module")
def run():
    """Protocol mode, 5 workers of which 2 Byzantine (slots 1 and 3), the mean, 40 rounds."""
    data = load_dataset("teacher", seed=0)
    config = dataclasses.replace(rb.PRESETS["tiny"], steps=40)
    learner = rb._learner(config, data)
    rule = RULES.build("mean", flag="x")
    attacks = [
        rb.jax_attack(spec, rule=rule, n_workers=W, n_byzantine=F, protocol_mode=True)
        for spec in SPECS
    ] + [_anti_oracle(rule)]
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
        which = len(SPECS) if attack == "anti_oracle" else SPECS.index(attack)
        return rb._execute(program, which, shape, [("iid", 0, "spot_check_model")], inputs, byz_W)

    return call


def _same(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_sampled_round_sent_honestly_passes_and_the_oracle_is_never_banned(run):
    """Sampled every round, the oracle always sends its own gradient: the honest run, exactly."""
    oracle = run(f"{WRAPPED},knows=oracle", 1.0)
    assert oracle[1].tolist() == [[-1, -1]]
    _same(oracle, run("honest", 1.0))
    # Never sampled, it attacks every round: the inner attack's run, exactly.
    _same(run(f"{WRAPPED},knows=oracle", 0.0), run(INNER, 0.0))


def test_a_sampled_attacking_round_is_caught_and_banned(run):
    assert run(f"{WRAPPED},knows=blind,p=1.0", 1.0)[1].tolist() == [[0, 0]]
    for catch in (0.0, 0.3):  # p = 1 is the inner attack, checks and all
        _same(run(f"{WRAPPED},knows=blind,p=1.0", catch), run(INNER, catch))
    _same(run(f"{WRAPPED},knows=blind,p=0.0", 1.0), run("honest", 1.0))
    # p = 0.5, checked every round: banned in the first round its coin says attack.
    half = run(f"{WRAPPED},knows=blind,p=0.5", 1.0)[1]
    assert np.all(half >= 0) and np.all(half < 40)


def test_with_a_shared_coin_the_colluders_are_banned_together_in_the_first_shared_round(run):
    """Checked every round, both are caught the first round the shared coin (seed 1 + run seed 0)
    says attack; with their own coins they attack, and are banned, apart; taking turns, the
    colluder of rank r mod 2 attacks in round r; with start=30, nobody attacks before it."""
    first = next(r for r in range(40) if shared_attack(1, r, 0.5))
    assert first > 0  # else the test cannot tell the shared coin from p = 1
    assert run(f"{WRAPPED},knows=blind,p=0.5,coin=shared,seed=1", 1.0)[1].tolist() == [
        [first, first]
    ]
    own = run(f"{WRAPPED},knows=blind,p=0.5", 1.0)[1]
    assert own[0, 0] != own[0, 1]
    assert run(f"{WRAPPED},knows=blind,p=1.0,coin=turns", 1.0)[1].tolist() == [[0, 1]]
    late = f"{WRAPPED},knows=blind,p=1.0,coin=shared,start=30"
    assert run(late, 1.0)[1].tolist() == [[30, 30]]
    _same(run(late, 0.0)[1:], run(INNER, 0.0)[1:])


def _round(round_, seed, grads, byz, sampled=(False, False)):
    g = jnp.asarray(grads)
    return rb._Round(
        ref_CxP=g,
        base_WxP=g,
        byz_W=jnp.asarray(np.isin(np.arange(W), byz)),
        own_FxP=g[byz],
        flipped=lambda: None,
        byz_idx_F=jnp.asarray(byz),
        key=lambda: jax.random.key(0),
        sampled_F=jnp.array(sampled),
        round=round_,
        seed=seed,
    )


@pytest.mark.parametrize("coin", ["shared", "turns"])
def test_the_models_shared_draws_are_the_protocol_attacks_round_for_round(coin):
    """The model's run with seed s draws what the protocol attacker with ``seed + s`` draws."""
    rule = RULES.build("mean", flag="x")
    grads = np.random.default_rng(0).standard_normal((W, 7)).astype(np.float32)
    byz = np.array([1, 3])
    spec = f"{WRAPPED},knows=blind,p=0.3,coin={coin},seed=5"
    model = rb.jax_attack(spec, rule=rule, n_workers=W, n_byzantine=F, protocol_mode=True)
    craft = jax.jit(lambda r, s: model.craft(_round(r, s, grads, byz)))
    for run_seed in (0, 2):
        protocol = sample_aware(inner=INNER, p=0.3, coin=coin, seed=5 + run_seed)
        model_rounds, protocol_rounds = [], []
        for r in range(120):
            sent = np.asarray(craft(jnp.int32(r), jnp.int32(run_seed)))
            model_rounds.append(tuple(bool(np.any(sent[i] != grads[w])) for i, w in enumerate(byz)))
            ctx = AttackContext(None, None, None, grads, r, tuple(int(w) for w in byz))
            protocol_rounds.append(
                tuple(
                    bool(np.any(protocol.apply(ctx, int(w), np.random.default_rng(r)) != grads[w]))
                    for w in byz
                )
            )
        assert model_rounds == protocol_rounds
        assert {a for row in model_rounds for a in row} == {True, False}
        if coin == "shared":
            assert all(a == b for a, b in model_rounds)  # together
        else:
            assert not any(a and b for a, b in model_rounds)  # one at a time
    # Another run seed, other rounds: the model's colluders do not replay one sequence.
    other = [
        bool(np.any(np.asarray(craft(jnp.int32(r), jnp.int32(1)))[0] != grads[1]))
        for r in range(120)
    ]
    assert other != [a for a, _ in model_rounds]


def test_canary_an_attacker_that_attacks_when_sampled_is_banned_in_its_first_checked_round(run):
    caught = run("anti_oracle", 0.3)[1]
    first_checked = [
        int(np.argmax(c < 0.3)) for c in rb.round_draws(0, 40, W, F)[0].T
    ]  # the model's draws: the first round each worker is recomputed
    assert caught.tolist() == [first_checked]
    assert run(f"{WRAPPED},knows=oracle", 0.3)[1].tolist() == [[-1, -1]]


def test_the_oracle_sends_its_own_row_exactly_where_sampled_and_the_inner_attack_elsewhere():
    rule = RULES.build("mean", flag="x")
    grads = np.random.default_rng(0).standard_normal((W, 7)).astype(np.float32)
    byz = np.array([1, 3])
    rnd = _round(None, None, grads, byz, sampled=(True, False))
    oracle = rb.jax_attack(
        f"{WRAPPED},knows=oracle", rule=rule, n_workers=W, n_byzantine=F, protocol_mode=True
    )
    sent = np.asarray(oracle.craft(rnd))
    np.testing.assert_array_equal(sent[0], grads[1])
    np.testing.assert_allclose(sent[1], -10.0 * grads.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_sample_aware_needs_workers_that_hold_data():
    rule = RULES.build("mean", flag="x")
    with pytest.raises(ValueError, match="protocol mode"):
        rb.jax_attack(WRAPPED, rule=rule, n_workers=W, n_byzantine=F, protocol_mode=False)


@pytest.fixture(scope="module")
def tiny_result():
    return rb.measure_sample_aware(TINY)


def test_every_variant_runs_for_every_seed_and_the_cells_summarise_them(tiny_result):
    names = [v[0] for v in TINY.variants()]
    assert names == [
        "no_attack",
        "inner_alone",
        "oracle",
        "blind_p=1.0",
        "blind_p=0.3",
        "shared_p=0.3",
        "turns_p=1.0",
        "shared_last=10",
    ]
    runs = tiny_result["runs"]
    assert len(runs) == (len(names) * len(TINY.aggregators) + 2) * len(TINY.seeds)
    cells = {c["variant"]: c for c in tiny_result["cells"]}
    assert set(cells) == {*names, "honest_workers_only", "all_workers_honest"}
    assert cells["honest_workers_only"]["damage"] == {"mean": 0, "min": 0, "max": 0, "std": 0}
    assert cells["no_attack"]["damage_vs_no_attack"]["max"] == 0.0
    assert cells["honest_workers_only"]["aggregator"] == "mean"
    assert cells["oracle"]["bans"]["banned"] == 0
    assert cells["oracle"]["expected"]["banned"] == 0
    assert cells["blind_p=1.0"]["bans"]["banned"] == cells["blind_p=1.0"]["bans"]["of"] == 2
    assert "shared_p=0.3" in rb.sample_aware_table(tiny_result)
    assert cells["turns_p=1.0"]["expected"]["mean_ban_round"] == round(
        1 / tiny_result["catch_probability_per_round"] - 1, 1
    )  # one Byzantine worker: its turn is every round
    assert set(cells["shared_last=10"]["expected"]) == {"p_unbanned_at_end"}
    shared_last = [r for r in runs if r["variant"] == "shared_last=10"]
    assert all(c < 0 or c >= 30 for r in shared_last for c in r["caught_rounds"])
    for r in runs:
        assert r["finite"] and len(r["caught_rounds"]) == TINY.byzantine
    assert tiny_result["jax_version"] == jax.__version__ and tiny_result["device"]
    assert "oracle" in rb.sample_aware_table(tiny_result)


def test_the_oracle_and_the_unverified_attack_cost_more_than_a_banned_blind_attacker(tiny_result):
    """On the tiny preset (ten times minus the mean from 1 of 5 workers) the order is clear."""
    cells = {c["variant"]: c for c in tiny_result["cells"]}
    assert cells["inner_alone"]["damage"]["mean"] > 0.03
    assert cells["oracle"]["damage"]["mean"] > 0.03
    assert cells["blind_p=1.0"]["damage"]["mean"] < cells["oracle"]["damage"]["mean"]


def test_main_sample_aware_writes_its_own_file_and_refuses_to_overwrite_it(tmp_path, capsys):
    out = tmp_path / "sample_aware.json"
    args = ["--sample-aware", "--preset", "tiny", "--steps", "20", "--seeds", "0", "--quiet"]
    assert rb.main([*args, "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads(out.read_text())
    assert printed == stored and stored["sample_aware"]["config"]["steps"] == 20
    assert rb.main([*args, "--out", str(out)]) == 1
    assert "sample-aware benchmark" in capsys.readouterr().err
    assert rb.main(["--sample-aware", "--preset", "mnist", "--out", "-", "--quiet"]) == 2
