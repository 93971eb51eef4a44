"""Byzantine worker attacks: what each sends, determinism, and parameter validation."""

import math
import subprocess
import sys
from fractions import Fraction

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from pot_jax.attacks import (
    ATTACK_NAMES,
    GARBAGE_KINDS,
    Attack,
    AttackContext,
    alie_z,
    choose_byzantine,
    commitment_of,
    make_attack,
)
from pot_jax.learning import (
    BatchAssigner,
    flat_digest,
    iid_partition,
    load_dataset,
    make_learner,
    make_model,
    make_optimizer,
)

W, B = 6, 8
DATASET = load_dataset("teacher", n_train=W * B * 2, n_test=16, dim=4, num_classes=5)
MODEL = make_model("mlp", input_shape=(4,), num_classes=5, hidden=(8,))
STALE = MODEL.init(jax.random.key(0))
PARAMS = MODEL.init(jax.random.key(1))
LEARNER = make_learner(MODEL, make_optimizer("sgd", learning_rate=0.1), PARAMS, num_workers=W)
P = LEARNER.num_params
ASSIGNER = BatchAssigner(0, iid_partition(DATASET.n_train, W, 0), B)


def _batch_of(worker):
    idx = ASSIGNER.indices(0, worker)
    return DATASET.x_train[idx], DATASET.y_train[idx]


GRADS = np.stack([np.asarray(LEARNER.worker_gradient(PARAMS, *_batch_of(w))) for w in range(W)])
BYZANTINE = (1, 4)
CTX = AttackContext(
    learner=LEARNER,
    params=PARAMS,
    batch_of=_batch_of,
    grads_WxP=GRADS,
    round=0,
    byzantine=BYZANTINE,
    stale_params=STALE,
)
WELL_FORMED = (
    "honest",
    "sign_flip",
    "scaled",
    "gaussian",
    "alie",
    "ipm",
    "label_flip",
    "lazy",
    "free_rider",
)


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack_is_deterministic_in_its_rng_and_well_formed_unless_flagged(name):
    attack = make_attack(name)
    assert isinstance(attack, Attack) and attack.name == name
    a, b = attack.apply(CTX, 1, _rng(3)), attack.apply(CTX, 1, _rng(3))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    else:
        assert type(a) is type(b)
    assert attack.malformed == (name in ("garbage", "nan_inf", "wrong_shape"))
    if not attack.malformed:
        for seed in range(5):
            out = attack.apply(CTX, 4, _rng(seed))
            assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (P,)
            assert np.all(np.isfinite(out))
            assert not np.shares_memory(out, GRADS)
    assert GRADS.flags.writeable and np.array_equal(GRADS, CTX.grads_WxP)


def test_well_formed_attacks_send_what_their_papers_say():
    g = GRADS[1]
    grads64 = GRADS.astype(np.float64)
    assert np.array_equal(make_attack("honest").apply(CTX, 1, _rng()), g)
    assert np.array_equal(make_attack("sign_flip").apply(CTX, 1, _rng()), -g)
    assert np.allclose(make_attack("scaled", factor=-3).apply(CTX, 1, _rng()), -3 * g)
    noise = make_attack("gaussian", sigma=2.0).apply(CTX, 1, _rng())
    assert 1.5 < noise.std() < 2.5
    around = make_attack("gaussian", sigma=1e-3, around_honest=True).apply(CTX, 1, _rng())
    assert 0 < np.abs(around - g).max() < 1e-2
    z = alie_z(W, len(BYZANTINE))
    expected = grads64.mean(0) - z * grads64.std(0)
    assert np.allclose(make_attack("alie").apply(CTX, 1, _rng()), expected, atol=1e-6)
    assert np.allclose(
        make_attack("alie", z=1.5).apply(CTX, 1, _rng()),
        grads64.mean(0) - 1.5 * grads64.std(0),
        atol=1e-6,
    )
    assert np.allclose(
        make_attack("ipm", epsilon=0.5).apply(CTX, 1, _rng()), -0.5 * grads64.mean(0), atol=1e-7
    )
    x, y = _batch_of(1)
    flipped = np.asarray(LEARNER.worker_gradient(PARAMS, x, 4 - y))
    assert np.array_equal(make_attack("label_flip").apply(CTX, 1, _rng()), flipped)
    assert not np.array_equal(flipped, g)
    stale = np.asarray(LEARNER.worker_gradient(STALE, x, y))
    assert np.array_equal(make_attack("lazy").apply(CTX, 1, _rng()), stale)
    assert np.array_equal(make_attack("lazy").apply(CTX._replace(stale_params=None), 1, _rng()), g)
    assert not np.any(make_attack("free_rider").apply(CTX, 1, _rng()))
    copies = {
        make_attack("free_rider", mode="copy").apply(CTX, 1, _rng(s)).tobytes() for s in range(30)
    }
    assert copies == {GRADS[w].tobytes() for w in range(W) if w != 1}


def test_alie_z_follows_baruch_et_al():
    """z_max = Phi^-1((n - s) / n) with s = floor(n/2 + 1) - f."""
    for n, f in ((50, 12), (20, 4), (10, 1), (6, 2)):
        s = n // 2 + 1 - f
        assert alie_z(n, f) == pytest.approx(stats.norm.ppf((n - s) / n))
    assert alie_z(1, 0) == 0.0
    assert np.isfinite(alie_z(10, 9))  # outside the paper's range: clamped


def test_malformed_attacks_send_malformed_things():
    for kind in GARBAGE_KINDS:
        out = make_attack("garbage", kind=kind).apply(CTX, 1, _rng())
        assert not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (P,))
    kinds = {type(make_attack("garbage").apply(CTX, 1, _rng(s))).__name__ for s in range(40)}
    assert len(kinds) >= 5
    for kind in ("nan", "inf", "mixed"):
        out = make_attack("nan_inf", kind=kind, fraction=0.1).apply(CTX, 1, _rng())
        assert out.shape == (P,) and np.count_nonzero(~np.isfinite(out)) == int(np.ceil(0.1 * P))
    shapes = {
        make_attack("wrong_shape", kind=k).apply(CTX, 1, _rng()).shape
        for k in ("truncated", "extended", "matrix", "empty")
    }
    assert shapes == {(P - 1,), (P + 1,), (1, P), (0,)}


def test_cheat_sometimes_cheats_in_a_fraction_q_of_rounds():
    attack = make_attack("cheat_sometimes", attack="sign_flip", q=0.3)
    cheated = sum(
        not np.array_equal(attack.apply(CTX, 1, _rng(seed)), GRADS[1]) for seed in range(600)
    )
    assert stats.binomtest(cheated, 600, 0.3).pvalue > 1e-4
    inner = make_attack("garbage", kind="none")
    wrapped = make_attack("cheat_sometimes", attack=inner, q=1.0)
    assert wrapped.malformed and wrapped.apply(CTX, 1, _rng()) is None
    assert (
        make_attack("cheat_sometimes", attack="lazy", q=0.0).apply(CTX, 1, _rng()).tobytes()
        == GRADS[1].tobytes()
    )
    assert wrapped.label == "cheat_sometimes(attack=garbage(kind=none), q=1.0)"


def test_commitment_of_hashes_arrays_and_randomises_the_rest():
    g = GRADS[0]
    assert commitment_of(g, LEARNER.header, _rng()) == flat_digest(LEARNER.header, g)
    assert commitment_of(g[:3], LEARNER.header, _rng()) == flat_digest(LEARNER.header, g[:3])
    for junk in (None, b"abc", "x", [1.0], object(), np.array([object()])):
        c = commitment_of(junk, LEARNER.header, _rng())
        assert isinstance(c, bytes) and len(c) == 32


def test_make_attack_rejects_bad_names_and_parameters():
    for call, fragment in (
        (lambda: make_attack("sybil"), "unknown attack 'sybil'"),
        (lambda: make_attack("scaled", factr=2), "scaled has no parameter 'factr'"),
        (
            lambda: make_attack("scaled", factor=1),
            "factor = 1.0, expected a finite number other than 1",
        ),
        (lambda: make_attack("scaled", factor=float("inf")), "factor"),
        (lambda: make_attack("gaussian", sigma=0), "sigma = 0.0, expected a finite number > 0"),
        (lambda: make_attack("gaussian", around_honest="yes"), "around_honest"),
        (lambda: make_attack("ipm", epsilon=-1), "epsilon"),
        (lambda: make_attack("alie", z="big"), "z = 'big'"),
        (lambda: make_attack("free_rider", mode="nap"), "mode = 'nap', expected one of"),
        (lambda: make_attack("garbage", kind="soup"), "kind = 'soup'"),
        (lambda: make_attack("nan_inf", fraction=0), "fraction"),
        (lambda: make_attack("wrong_shape", kind="cube"), "kind = 'cube'"),
        (lambda: make_attack("cheat_sometimes", q=2), "q = 2.0, expected a number in [0, 1]"),
        (lambda: make_attack("cheat_sometimes", attack="cheat_sometimes"), "another attack"),
        (lambda: make_attack("cheat_sometimes", attack=3), "attack = 3"),
        (lambda: make_attack("sign_flip", factor=2), "it takes no parameters"),
    ):
        with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
            call()


def test_choose_byzantine_is_deterministic_and_nested():
    a = choose_byzantine(20, 0.25, seed=3)
    assert a == choose_byzantine(20, 0.25, seed=3) and len(a) == 5 and list(a) == sorted(a)
    assert a != choose_byzantine(20, 0.25, seed=4)
    assert set(a) <= set(choose_byzantine(20, 0.5, seed=3))
    assert choose_byzantine(10, 0.3, 0) == choose_byzantine(10, 0.3, 0)[:3]
    assert len(choose_byzantine(10, 0.3, 0)) == 3  # exact decimal: 0.3 * 10 is 3
    assert choose_byzantine(7, 0, 1) == () and choose_byzantine(7, 1, 1) == tuple(range(7))
    for args, field in (
        ((0, 0.1, 0), "n_workers"),
        ((5, 1.5, 0), "fraction"),
        ((5, float("nan"), 0), "fraction"),
        ((5, 0.1, 2**64), "seed"),
        ((5, True, 0), "fraction"),
    ):
        with pytest.raises(ValueError, match=field):
            choose_byzantine(*args)


@given(n=st.integers(1, 200), fraction=st.floats(0, 1), seed=st.integers(-(2**63), 2**63 - 1))
def test_choose_byzantine_picks_floor_fraction_distinct_workers(n, fraction, seed):
    chosen = choose_byzantine(n, fraction, seed)
    assert len(set(chosen)) == len(chosen) and all(0 <= w < n for w in chosen)
    assert len(chosen) == math.floor(Fraction(str(fraction)) * n)


def test_attacks_depend_on_learning_only():
    """And on pot_jax.registry, the leaf module every component kind shares."""
    code = (
        "import sys, pot_jax.attacks; "
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('pot_jax.')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "['attacks', 'learning', 'registry']"
