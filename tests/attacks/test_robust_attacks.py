"""Attacks on robust aggregation and on tolerance-mode checks (``pot_jax.attacks.robust``).

Each property test states what the attack's paper promises and checks it
against an independent computation; knowledge tests check that an "own"
attack reads only its own row and a "colluding" one reads the others.
"""

import math

import jax
import numpy as np
import pytest

from pot_jax.attacks import (
    ATTACK_NAMES,
    ATTACKS,
    KNOWLEDGE,
    ROBUST_ATTACK_NAMES,
    SAMPLING_ATTACK_NAMES,
    SHEJWALKAR_DIRECTIONS,
    Attack,
    AttackContext,
    aggregate_deviation,
    alie_z,
    attack_defaults,
    build_attack,
    fang_krum_lambda,
    make_attack,
    mimic_target,
    scale_grid,
    shejwalkar_gamma,
)
from pot_jax.config import ConfigError, ProtocolConfig
from pot_jax.learning import (
    RULE_NAMES,
    BatchAssigner,
    iid_partition,
    load_dataset,
    make_learner,
    make_model,
    make_optimizer,
    make_rule,
)
from pot_jax.verification.fraud_proof import compare_gradients, gradient_distance
from pot_jax.verification.tolerance import calibrate_threshold

W, B = 10, 8
BYZANTINE = (1, 4, 7)
HONEST = np.array([w for w in range(W) if w not in BYZANTINE])
DATASET = load_dataset("teacher", n_train=W * B * 4, n_test=16, dim=4, num_classes=5)
MODEL = make_model("mlp", input_shape=(4,), num_classes=5, hidden=(8,))
PARAMS = MODEL.init(jax.random.key(1))
LEARNER = make_learner(MODEL, make_optimizer("sgd", learning_rate=0.1), PARAMS, num_workers=W)
ASSIGNER = BatchAssigner(0, iid_partition(DATASET.n_train, W, 0), B)


def _batch_of(worker):
    idx = ASSIGNER.indices(0, worker)
    return DATASET.x_train[idx], DATASET.y_train[idx]


def _round_batches(round_):
    idx = ASSIGNER.round_indices(round_)
    return DATASET.x_train[idx], DATASET.y_train[idx]


LEARNER_GRADS = np.stack(
    [np.asarray(LEARNER.worker_gradient(PARAMS, *_batch_of(w))) for w in range(W)]
)
P_LEARNER = LEARNER_GRADS.shape[1]

# Synthetic honest gradients for the aggregation properties: a common mean plus noise.
P = 200
_g = np.random.default_rng(0)
SYNTH = (_g.normal(0.5, 1.0, P) + _g.normal(0, 1.0, (W, P))).astype(np.float32)


def _ctx(grads=SYNTH, byzantine=BYZANTINE, round_=0):
    return AttackContext(
        learner=LEARNER,
        params=PARAMS,
        batch_of=_batch_of,
        grads_WxP=grads,
        round=round_,
        byzantine=byzantine,
        stale_params=MODEL.init(jax.random.key(0)),
    )


def _rng(seed=0):
    return np.random.default_rng(seed)


def _send(attack, ctx, worker=1, seed=0):
    return attack.apply(ctx, worker, _rng(seed))


def _submitted(sent):
    rows = SYNTH.copy()
    rows[list(BYZANTINE)] = sent
    return rows


ALL = np.ones(W, bool)

# Parameters each registered attack is exercised with (several per name where
# the parameter changes what the attack reads).
DRIFT_THRESHOLD = 1e-4
VARIANTS = {
    "honest": [{}],
    "sign_flip": [{}],
    "scaled": [{"factor": -3.0}],
    "gaussian": [{}, {"around_honest": True, "sigma": 0.1}],
    "alie": [{}],
    "ipm": [{}],
    "label_flip": [{}],
    "lazy": [{}],
    "free_rider": [{"mode": "zero"}, {"mode": "copy"}],
    "garbage": [{"kind": k} for k in ("bytes", "int32", "float64", "list", "none")],
    "nan_inf": [{"kind": k} for k in ("nan", "inf", "mixed")],
    "wrong_shape": [{"kind": k} for k in ("truncated", "extended", "matrix", "empty")],
    "cheat_sometimes": [{"attack": "sign_flip", "q": 1.0}, {"attack": "alie", "q": 1.0}],
    "inf": [{}],
    "fall_of_empires": [{}],
    "mimic": [{}, {"target": 2}],
    "optimal_ipm": [{"rule": "krum:f=3", "points": 8}],
    "optimal_alie": [{"rule": "coordinate_median", "points": 8}],
    "min_max": [{"direction": d} for d in SHEJWALKAR_DIRECTIONS],
    "min_sum": [{"direction": d} for d in SHEJWALKAR_DIRECTIONS],
    "fang_krum": [{}],
    "fang_trimmed_mean": [{}],
    "drift": [
        {"threshold": DRIFT_THRESHOLD},
        {"threshold": DRIFT_THRESHOLD, "direction": "random"},
    ],
    # Blind and always attacking here; tests/attacks/test_sample_aware.py covers the rest.
    "sample_aware": [{"inner": "sign_flip", "p": 1.0}, {"inner": "alie", "p": 1.0}],
}
OWN = {
    "honest",
    "sign_flip",
    "scaled",
    "gaussian",
    "label_flip",
    "lazy",
    "garbage",
    "nan_inf",
    "wrong_shape",
    "inf",
    "drift",
}


def _variants():
    return [
        pytest.param(name, kw, id=f"{name}-{i}")
        for name, kws in VARIANTS.items()
        for i, kw in enumerate(kws)
    ]


def _same(a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, list | bytes | str | type(None)):
        return a == b
    return type(a) is type(b)


# --------------------------------------------------------------------------- #
# Registry, knowledge and determinism
# --------------------------------------------------------------------------- #


def test_every_registered_attack_is_exercised_and_names_do_not_collide():
    assert (
        set(VARIANTS)
        == set(ATTACKS.names())
        == set(ATTACK_NAMES) | set(ROBUST_ATTACK_NAMES) | set(SAMPLING_ATTACK_NAMES)
    )
    assert not set(ATTACK_NAMES) & set(ROBUST_ATTACK_NAMES)
    assert not (set(ATTACK_NAMES) | set(ROBUST_ATTACK_NAMES)) & set(SAMPLING_ATTACK_NAMES)


def test_knowledge_is_as_stated_for_every_attack():
    """ "own": only the worker's row, batch, model, public data; everything else colludes."""
    for name, kws in VARIANTS.items():
        for kw in kws:
            attack = make_attack(name, **kw)
            assert attack.knowledge in KNOWLEDGE
            if name == "free_rider":
                expected = "own" if kw["mode"] == "zero" else "colluding"
            elif name == "cheat_sometimes":
                expected = make_attack(kw["attack"]).knowledge
            elif name == "sample_aware":
                expected = make_attack(kw["inner"]).knowledge
            else:
                expected = "own" if name in OWN else "colluding"
            assert attack.knowledge == expected, (name, kw)


def test_an_attack_that_does_not_say_is_treated_as_colluding():
    """The default restricts nothing, so attacks written before the field keep working."""
    assert Attack("plugin", lambda ctx, worker, rng: None).knowledge == "colluding"


@pytest.mark.parametrize(("name", "kw"), _variants())
def test_own_attacks_read_only_their_row_and_colluding_ones_read_the_others(name, kw):
    """Other rows set to NaN: an "own" attack's output is unchanged; a colluding one's is not."""
    attack = make_attack(name, **kw)
    grads = LEARNER_GRADS if attack.knowledge == "own" else SYNTH
    worker = 4
    ctx = _ctx(grads)
    before = _send(attack, ctx, worker, seed=5)
    if attack.knowledge == "own":
        blinded = np.full_like(grads, np.nan)
        blinded[worker] = grads[worker]
        after = _send(attack, ctx._replace(grads_WxP=blinded), worker, seed=5)
        assert _same(before, after), name
    else:
        # Finite replacements, so searches and eigensolvers still run.
        others = grads.copy()
        rest = [w for w in range(W) if w != worker]
        others[rest] = np.random.default_rng(9).normal(-2.0, 3.0, (len(rest), grads.shape[1]))
        after = _send(attack, ctx._replace(grads_WxP=others), worker, seed=5)
        assert not _same(before, after), name


@pytest.mark.parametrize("name", ROBUST_ATTACK_NAMES)
def test_new_attacks_are_deterministic_in_their_rng_and_well_formed_unless_flagged(name):
    for kw in VARIANTS[name]:
        attack = make_attack(name, **kw)
        assert attack.name == name and attack.malformed == (name == "inf")
        grads = LEARNER_GRADS if name == "drift" else SYNTH
        a, b = _send(attack, _ctx(grads), 1, 3), _send(attack, _ctx(grads), 1, 3)
        assert a.tobytes() == b.tobytes() and a.dtype == np.float32
        assert a.shape == (grads.shape[1],)
        assert attack.malformed or np.all(np.isfinite(a))
        assert not np.shares_memory(a, grads)


def test_searches_are_cached_per_round_and_follow_new_inputs():
    """Byzantine workers of one round share a search; a new round's gradients get a new one."""
    other = np.roll(SYNTH, 3, axis=0)
    for name, kw in (
        ("optimal_ipm", {"rule": "krum:f=3", "points": 8}),
        ("min_max", {}),
        ("fang_krum", {}),
    ):
        attack = make_attack(name, **kw)
        first = _send(attack, _ctx())
        assert _send(attack, _ctx(), worker=7).tobytes() == first.tobytes()
        assert (
            _send(attack, _ctx(other)).tobytes()
            == _send(make_attack(name, **kw), _ctx(other)).tobytes()
        )
        assert _send(attack, _ctx()).tobytes() == first.tobytes()


# --------------------------------------------------------------------------- #
# ByzFL's set
# --------------------------------------------------------------------------- #


def test_inf_is_not_finite_anywhere():
    out = _send(make_attack("inf"), _ctx())
    assert out.dtype == np.float32 and out.shape == (P,) and np.all(np.isposinf(out))


def test_fall_of_empires_is_ipm_with_epsilon_tau_minus_one():
    mean = SYNTH.astype(np.float64).mean(0)
    foe = _send(make_attack("fall_of_empires", tau=3.0), _ctx())
    assert np.allclose(foe, -2.0 * mean, atol=1e-6)
    ipm = _send(make_attack("ipm", epsilon=2.0), _ctx())
    assert np.array_equal(foe, ipm)


def test_mimic_sends_one_honest_row_the_most_extreme_along_the_top_principal_axis():
    out = _send(make_attack("mimic"), _ctx())
    matches = [w for w in range(W) if np.array_equal(out, SYNTH[w])]
    assert len(matches) == 1 and matches[0] in HONEST
    # Independent: principal axis by SVD of the centred honest rows.
    x = SYNTH[HONEST].astype(np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    assert matches[0] == HONEST[np.argmax(np.abs((x - x.mean(0)) @ vt[0]))]
    assert mimic_target(SYNTH, HONEST) == matches[0]
    # Two workers far out along one axis: the farther one is copied.
    planted = SYNTH.copy()
    planted[8] += 40.0
    planted[0] -= 25.0
    assert np.array_equal(_send(make_attack("mimic"), _ctx(planted)), planted[8])
    for k, w in enumerate(HONEST):
        assert np.array_equal(_send(make_attack("mimic", target=k), _ctx()), SYNTH[w])


@pytest.mark.parametrize(
    "rule",
    [
        "mean",
        "coordinate_median",
        "trimmed_mean:trim=3",
        "krum:f=3",
        "multi_krum:f=3;m=4",
        "nnm+mean:f=3",
    ],
)
@pytest.mark.parametrize(("name", "fixed"), [("optimal_ipm", "ipm"), ("optimal_alie", "alie")])
def test_line_searched_attack_moves_the_rule_at_least_as_far_as_the_fixed_scale(name, fixed, rule):
    """And its scale is the best of its grid, recomputed here by brute force."""
    built = make_rule_from(rule)
    searched = _send(make_attack(name, rule=rule, points=12), _ctx())
    at_default = _send(make_attack(fixed), _ctx())
    reach = aggregate_deviation(built, SYNTH, BYZANTINE, searched)
    assert reach >= aggregate_deviation(built, SYNTH, BYZANTINE, at_default)
    x = SYNTH.astype(np.float64)
    default = 0.1 if name == "optimal_ipm" else alie_z(W, len(BYZANTINE))
    grid = scale_grid(default, low=1e-2, high=1e3, points=12)
    if name == "optimal_ipm":
        vectors = [(-s * x.mean(0)).astype(np.float32) for s in grid]
    else:
        vectors = [(x.mean(0) - s * x.std(0)).astype(np.float32) for s in grid]
    best = max(aggregate_deviation(built, SYNTH, BYZANTINE, v) for v in vectors)
    assert reach == best


def _rule_args(spec):
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        kwargs[key] = int(value)
    return (name,), kwargs


def make_rule_from(spec):
    (name,), kwargs = _rule_args(spec)
    return make_rule(name, **kwargs)


def test_line_search_takes_a_rule_spec_with_several_parameters_through_the_registry():
    attack = ATTACKS.build("optimal_ipm:rule=multi_krum:f=3;m=4,points=5", flag="--attack")
    assert (
        dict(attack.params)["rule"] == "multi_krum:f=3,m=4" and dict(attack.params)["points"] == 5
    )
    built = make_rule("multi_krum", f=3, m=4)
    assert attack.label.startswith("optimal_ipm(rule=multi_krum:f=3,m=4")
    attack = make_attack("optimal_alie", rule=built)
    assert dict(attack.params)["rule"] == built.label


# --------------------------------------------------------------------------- #
# Shejwalkar and Houmansadr: min-max and min-sum
# --------------------------------------------------------------------------- #


def _pairwise_sq(x):
    return np.array([[float(np.sum((a - b) ** 2)) for b in x] for a in x])


def _direction(x, direction):
    mean = x.mean(0)
    return {
        "unit_vec": -mean / np.linalg.norm(mean),
        "std": -x.std(0),
        "sign": -np.sign(mean),
    }[direction]


@pytest.mark.parametrize("direction", SHEJWALKAR_DIRECTIONS)
def test_min_max_stays_within_the_honest_diameter_with_the_largest_gamma(direction):
    x = SYNTH.astype(np.float64)
    limit = _pairwise_sq(x).max()
    out = _send(make_attack("min_max", direction=direction), _ctx()).astype(np.float64)
    assert np.max(np.sum((out - x) ** 2, axis=1)) <= limit * (1 + 1e-5)
    gamma, fail = shejwalkar_gamma(x, direction, objective="min_max")
    p = _direction(x, direction)
    assert np.allclose(out, x.mean(0) + gamma * p, rtol=1e-6, atol=1e-5)
    assert 0 < fail - gamma <= 1e-6 * gamma
    over = x.mean(0) + fail * p
    assert np.max(np.sum((over - x) ** 2, axis=1)) > limit
    if direction == "unit_vec":  # distances scale with x, p does not: so does gamma
        gamma3, _ = shejwalkar_gamma(3 * x, direction, objective="min_max")
        assert gamma3 == pytest.approx(3 * gamma, rel=1e-6)
        assert gamma3 > 20.0  # beyond the authors' search ceiling of 2 * gamma_init


@pytest.mark.parametrize("bound", ["max", "min"])
@pytest.mark.parametrize("direction", SHEJWALKAR_DIRECTIONS)
def test_min_sum_gamma_is_the_closed_form_largest(direction, bound):
    """sum_i |mean + g p - x_i|^2 = S0 + n g^2 |p|^2, so g* = sqrt((limit - S0) / (n |p|^2))."""
    x = SYNTH.astype(np.float64)
    sums = _pairwise_sq(x).sum(1)
    limit = sums.max() if bound == "max" else sums.min()
    p = _direction(x, direction)
    s0 = np.sum((x - x.mean(0)) ** 2)
    closed = math.sqrt((limit - s0) / (W * float(p @ p)))
    gamma, fail = shejwalkar_gamma(x, direction, objective="min_sum", bound=bound)
    assert gamma <= closed * (1 + 1e-9) and fail >= closed * (1 - 1e-9)
    assert fail - gamma <= 1e-6 * gamma
    out = _send(make_attack("min_sum", direction=direction, bound=bound), _ctx()).astype(np.float64)
    assert np.sum((out - x) ** 2) <= limit * (1 + 1e-5)
    if bound == "max":
        assert np.sum((out - x) ** 2) > limit * (1 - 1e-3)  # it uses the slack


def test_shejwalkar_gamma_is_zero_when_the_direction_is_zero():
    same = np.tile(SYNTH[:1].astype(np.float64), (W, 1))
    assert shejwalkar_gamma(same, "std", objective="min_max") == (0.0, math.inf)


# --------------------------------------------------------------------------- #
# Fang et al.
# --------------------------------------------------------------------------- #


def test_fang_krum_is_selected_by_krum_with_enough_byzantine_copies():
    sent = _send(make_attack("fang_krum"), _ctx())
    krum = make_rule("krum", f=len(BYZANTINE))
    agg = np.asarray(krum.aggregate(_submitted(sent), ALL))
    assert np.array_equal(agg, sent)
    # It is -lambda * sign(mean) with lambda a halving of the paper's bound.
    s = np.sign(SYNTH.astype(np.float64).mean(0))
    lam = float(np.abs(sent).max())
    assert np.array_equal(sent, (-lam * s).astype(np.float32))
    ratio = fang_krum_lambda(SYNTH, BYZANTINE) / lam
    assert ratio >= 1 and math.log2(ratio) == pytest.approx(round(math.log2(ratio)), abs=1e-6)


def test_fang_krum_alone_is_not_selected_canary():
    """With one Byzantine row and no halving, Krum keeps an honest row: the check can fail."""
    lone = (5,)
    sent = _send(make_attack("fang_krum", f=3, iters=0), _ctx(byzantine=lone), worker=5)
    rows = SYNTH.copy()
    rows[5] = sent
    agg = np.asarray(make_rule("krum", f=3).aggregate(rows, ALL))
    assert not np.array_equal(agg, sent)


@pytest.mark.parametrize("rule", ["trimmed_mean:trim=3", "coordinate_median"])
def test_fang_trimmed_mean_moves_the_aggregate_against_the_mean_direction(rule):
    attack = make_attack("fang_trimmed_mean")
    rows = SYNTH.copy()
    for w in BYZANTINE:
        rows[w] = _send(attack, _ctx(), worker=w, seed=w)
    assert not np.array_equal(rows[1], rows[4])  # each worker draws its own values
    built = make_rule_from(rule)
    attacked = np.asarray(built.aggregate(rows, ALL), np.float64)
    honest = np.asarray(built.aggregate(SYNTH, ALL), np.float64)
    s = np.where(SYNTH.astype(np.float64).mean(0) > 0, 1.0, -1.0)
    assert np.all((attacked - honest) * s <= 0)
    assert np.sum((attacked - honest) * s) < 0


def test_fang_trimmed_mean_values_lie_beyond_the_honest_range_within_factor_b():
    x = SYNTH.astype(np.float64)
    for b in (1.5, 2.0):
        out = _send(make_attack("fang_trimmed_mean", b=b), _ctx()).astype(np.float64)
        down = x.mean(0) > 0
        lo, hi = x.min(0), x.max(0)
        assert np.all(out[down] <= lo[down]) and np.all(out[~down] >= hi[~down])
        reach = np.where(down, np.minimum(lo / b, lo * b), np.maximum(hi / b, hi * b))
        assert np.all(np.where(down, out >= reach - 1e-6, out <= reach + 1e-6))


# --------------------------------------------------------------------------- #
# drift: tolerance mode's slack
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def calibrated():
    threshold, stats = calibrate_threshold(
        LEARNER,
        PARAMS,
        [_round_batches(r) for r in range(10, 13)],
        fresh_batches=[_round_batches(r) for r in range(20, 23)],
    )
    assert stats.false_rejections == 0
    return threshold


@pytest.mark.parametrize("direction", ["opposite", "random"])
def test_drift_passes_a_calibrated_tolerance_check_and_fails_a_bitwise_one(calibrated, direction):
    expected = np.asarray(LEARNER.worker_gradient(PARAMS, *_batch_of(4)))
    attack = make_attack("drift", threshold=calibrated, margin=0.9, direction=direction)
    sent = _send(attack, _ctx(LEARNER_GRADS), worker=4)
    distance = gradient_distance(sent, expected)
    assert 0.9 * calibrated * 0.99 <= distance <= 0.9 * calibrated
    assert compare_gradients(sent, expected, mode="tolerance", threshold=calibrated)[0]
    assert not compare_gradients(sent, expected, mode="bitwise")[0]
    # Canary: sized for twice the threshold, the same check rejects it.
    loose = make_attack("drift", threshold=2 * calibrated, direction=direction)
    too_far = _send(loose, _ctx(LEARNER_GRADS), worker=4)
    assert not compare_gradients(too_far, expected, mode="tolerance", threshold=calibrated)[0]


def test_drift_at_full_margin_stays_within_the_threshold_after_float32_rounding():
    expected = np.asarray(LEARNER.worker_gradient(PARAMS, *_batch_of(2)))
    for threshold in (1e-7, 3e-7, 1e-6, 1e-3):
        for seed in range(3):
            attack = make_attack("drift", threshold=threshold, margin=1.0, direction="random")
            sent = _send(attack, _ctx(LEARNER_GRADS), worker=2, seed=seed)
            assert gradient_distance(sent, expected) <= threshold


# --------------------------------------------------------------------------- #
# Parameter validation
# --------------------------------------------------------------------------- #


def test_new_attacks_reject_bad_parameters_with_clear_errors():
    for call, fragment in (
        (lambda: ATTACKS.build("optimal_ipm", flag="--attack"), "needs parameter 'rule'"),
        (lambda: make_attack("optimal_ipm", rule="nope"), "unknown aggregation rule"),
        (lambda: make_attack("optimal_ipm", rule=3), "rule = 3, expected an aggregation rule"),
        (lambda: make_attack("optimal_alie", rule="krum:f=3", points=1), "points = 1"),
        (lambda: make_attack("optimal_alie", rule="krum:f=3", low=2.0, high=1.0), "high = 1.0"),
        (lambda: make_attack("fall_of_empires", tau=1), "tau = 1.0, expected a finite number > 1"),
        (lambda: make_attack("mimic", target=-1), "target = -1"),
        (lambda: make_attack("mimic", target=1.5), "target = 1.5"),
        (lambda: make_attack("min_max", direction="up"), "direction = 'up', expected one of"),
        (lambda: make_attack("min_max", gamma_init=0), "gamma_init = 0.0"),
        (lambda: make_attack("min_sum", bound="mean"), "bound = 'mean'"),
        (lambda: make_attack("min_sum", iters=0), "iters = 0"),
        (lambda: make_attack("fang_krum", f=-1), "f = -1"),
        (lambda: make_attack("fang_trimmed_mean", b=2.5), "b = 2.5, expected a number in (1, 2]"),
        (lambda: make_attack("fang_trimmed_mean", b=1), "b = 1.0"),
        (lambda: make_attack("drift"), "missing"),
        (
            lambda: make_attack("drift", threshold=0),
            "threshold = 0.0, expected a finite number > 0",
        ),
        (lambda: make_attack("drift", threshold=1e-5, margin=1.5), "margin = 1.5"),
        (lambda: make_attack("drift", threshold=1e-5, direction="up"), "direction = 'up'"),
    ):
        with pytest.raises(
            (ValueError, TypeError), match=fragment.replace("(", r"\(").replace("]", r"\]")
        ):
            call()
    with pytest.raises(ValueError, match="only 7 honest workers"):
        _send(make_attack("mimic", target=7), _ctx())


# --------------------------------------------------------------------------- #
# The rule a searching attack targets: the run's aggregation unless named
# --------------------------------------------------------------------------- #


def test_only_searching_attacks_that_name_no_rule_take_the_runs_aggregation():
    run = "nnm+krum:f=3"
    for spec in (
        "optimal_alie",
        "optimal_ipm:points=5",
        "sample_aware:inner=optimal_ipm",
        "cheat_sometimes:attack=optimal_alie",
    ):
        assert attack_defaults(spec, aggregation=run) == {"rule": run}, spec
        assert f"rule={run}" in build_attack(spec, aggregation=run).label, spec
    for spec in ("optimal_alie:rule=krum:f=2", "min_max", "fang_krum", "mimic", "sign_flip"):
        assert attack_defaults(spec, aggregation=run) == {}, spec
    assert "rule=krum:f=2" in build_attack("optimal_alie:rule=krum:f=2", aggregation=run).label


def test_the_default_rule_crafts_what_the_same_rule_named_explicitly_crafts():
    """Default = explicit rule of the same aggregation; another aggregation crafts another row."""
    ctx = _ctx()
    for name in ("optimal_alie", "optimal_ipm"):
        default = _send(build_attack(name, aggregation="krum:f=2"), ctx)
        named = _send(build_attack(f"{name}:rule=krum:f=2", aggregation="mean"), ctx)
        other = _send(build_attack(name, aggregation="mean"), ctx)
        assert np.array_equal(default, named), name
        assert not np.array_equal(default, other), name


def test_an_unknown_rule_is_refused_in_one_line_naming_the_valid_rules():
    for call in (
        lambda: ProtocolConfig(attack="optimal_alie:rule=krumm"),
        lambda: ProtocolConfig(attack="sample_aware:rule=krumm,inner=optimal_ipm"),
        lambda: build_attack("optimal_ipm:rule=krumm", aggregation="mean"),
    ):
        with pytest.raises(ValueError, match="'krumm': unknown aggregation rule") as err:
            call()
        message = str(err.value)
        assert "\n" not in message and all(rule in message for rule in RULE_NAMES), message
    with pytest.raises(ConfigError, match="needs parameter 'threshold'"):
        ProtocolConfig(attack="drift")  # run defaults give a rule, never other parameters
