"""The sample-aware attack (``pot_jax.attacks.sampling``): honest when it might be recomputed.

First the two knowledge levels on one worker, against the validators' real
VRF selection; then the real protocol (``run_protocol``, a tiny run of 12
rounds, budget 0.5): with derived keys the oracle is never caught although it
sends wrong gradients, the blind attacker with p = 1 is caught in the first
round an honest validator samples it, and (the canary) the same oracle facing
secret keys is caught where the true samples say.
"""

import json

import jax
import numpy as np
import pytest
from scipy import stats

from pot_jax.attacks import (
    ATTACKS,
    SAMPLE_KNOWLEDGE,
    AttackContext,
    inner_spec,
    make_attack,
    predicted_samples,
    sample_aware,
)
from pot_jax.attacks.sampling import SAMPLE_COINS, shared_attack
from pot_jax.config import ProtocolConfig
from pot_jax.consensus.keys import simulation_keys
from pot_jax.learning import make_learner, make_model, make_optimizer
from pot_jax.protocol import run_protocol
from pot_jax.protocol.keys import derived_keys, generate_keys
from pot_jax.verification.context import RoundContext
from pot_jax.verification.schemes import spot_check

W, P, N_VALIDATORS = 8, 12, 4
CHAIN = b"pot-jax/test/sample-aware"
GRADS = np.random.default_rng(0).standard_normal((W, P)).astype(np.float32)
BYZANTINE = (2, 5)
MODEL = make_model("mlp", input_shape=(4,), num_classes=3, hidden=(4,))
PARAMS = MODEL.init(jax.random.key(0))
LEARNER = make_learner(MODEL, make_optimizer("sgd", learning_rate=0.1), PARAMS, num_workers=W)


def _ctx(round_=0, *, n_validators=N_VALIDATORS, chain_id=CHAIN):
    return AttackContext(
        learner=LEARNER,
        params=PARAMS,
        batch_of=lambda w: (None, None),
        grads_WxP=GRADS,
        round=round_,
        byzantine=BYZANTINE,
        n_validators=n_validators,
        chain_id=chain_id,
    )


def _true_samplers(round_, worker, secret_keys, budget, validators):
    """Who recomputes ``worker``: each validator's own ``spot_check.select``, as roles.py calls it."""
    ctx = RoundContext(
        chain_id=CHAIN, round=round_, params=PARAMS, learner=LEARNER, batch_of=None, n_workers=W
    )
    scheme = spot_check(budget)
    return [
        v
        for v in validators
        if worker in scheme.select(ctx, v, len(secret_keys), secret_keys[v]).workers
    ]


def _sent(attack, round_, worker, seed=0):
    return attack.apply(_ctx(round_), worker, np.random.default_rng([seed, round_, worker]))


def _honest(sent, worker):
    return sent.dtype == np.float32 and sent.tobytes() == GRADS[worker].tobytes()


# --------------------------------------------------------------------------- #
# One worker, no protocol
# --------------------------------------------------------------------------- #


def test_oracle_is_honest_exactly_when_a_validator_it_does_not_collude_with_samples_it():
    """With the derived keys (``derived_keys``, the run's key source) the prediction is the truth."""
    attack = sample_aware(inner="sign_flip", knows="oracle", budget=0.5, colluders=0)
    true_keys = derived_keys(N_VALIDATORS, W, chain_id=CHAIN, seed=3).validator_secret_keys
    outcomes = set()
    for r in range(30):
        for worker in BYZANTINE:
            sampled = bool(_true_samplers(r, worker, true_keys, 0.5, range(1, N_VALIDATORS)))
            sent = _sent(attack, r, worker)
            if sampled:
                assert _honest(sent, worker), (r, worker)
            else:
                np.testing.assert_array_equal(sent, -GRADS[worker])
            outcomes.add(sampled)
    assert outcomes == {True, False}  # both branches were exercised


def test_oracle_without_colluders_also_avoids_the_byzantine_validators_samples():
    everyone = sample_aware(inner="sign_flip", knows="oracle", budget=0.5)
    true_keys = simulation_keys(N_VALIDATORS)[0]
    for r in range(30):
        sampled = bool(_true_samplers(r, 2, true_keys, 0.5, range(N_VALIDATORS)))
        assert _honest(_sent(everyone, r, 2), 2) == sampled


def test_predicted_samples_are_each_validators_spot_check_selection():
    keys = simulation_keys(N_VALIDATORS)[0]
    for r in range(5):
        samples = predicted_samples(_ctx(r), keys, budget=0.5)
        assert len(samples) == N_VALIDATORS
        for v, sample in enumerate(samples):
            assert [w for w in range(W) if w in sample] == [
                w for w in range(W) if _true_samplers(r, w, keys, 0.5, [v])
            ]


def test_canary_an_oracle_with_the_wrong_keys_attacks_while_a_validator_samples_it():
    """A guess from keys that are not the validators' is independent of their samples."""
    wrong = simulation_keys(N_VALIDATORS, seed=b"not the validators' keys")[0]
    attack = sample_aware(inner="sign_flip", knows="oracle", budget=0.5, keys=wrong)
    true_keys = simulation_keys(N_VALIDATORS)[0]
    exposed = [
        r
        for r in range(30)
        if _true_samplers(r, 2, true_keys, 0.5, range(N_VALIDATORS))
        and not _honest(_sent(attack, r, 2), 2)
    ]
    assert exposed


def test_blind_attacks_in_a_fraction_p_of_rounds_whatever_the_samples():
    for p, expect in ((0.0, 0), (1.0, 400)):
        attack = sample_aware(inner="sign_flip", knows="blind", p=p)
        assert sum(not _honest(_sent(attack, r, 2), 2) for r in range(400)) == expect
    attack = sample_aware(inner="sign_flip", knows="blind", p=0.3)
    attacked = sum(not _honest(_sent(attack, r, 2), 2) for r in range(600))
    assert stats.binomtest(attacked, 600, 0.3).pvalue > 1e-4
    # It needs no committee and no chain id: it predicts nothing.
    blind_ctx = _ctx(n_validators=0)._replace(chain_id=b"")
    assert attack.apply(blind_ctx, 2, np.random.default_rng(0)).shape == (P,)
    a, b = _sent(attack, 7, 5, seed=4), _sent(attack, 7, 5, seed=4)
    assert a.tobytes() == b.tobytes()


def _attack_rounds(attack, worker, rounds=200, seed=0):
    return {r for r in range(rounds) if not _honest(_sent(attack, r, worker, seed=seed), worker)}


def test_a_shared_coin_makes_every_colluder_attack_in_exactly_the_same_rounds():
    """One coin of (seed, round) for all; with their own coins the colluders part ways."""
    shared = sample_aware(inner="sign_flip", knows="blind", p=0.3, coin="shared", seed=7)
    a, b = (_attack_rounds(shared, w) for w in BYZANTINE)
    assert a == b and 0 < len(a) < 200
    assert stats.binomtest(len(a), 200, 0.3).pvalue > 1e-4
    assert a == {r for r in range(200) if shared_attack(7, r, 0.3)}
    own = sample_aware(inner="sign_flip", knows="blind", p=0.3)
    assert _attack_rounds(own, BYZANTINE[0]) != _attack_rounds(own, BYZANTINE[1])


def test_the_shared_coin_is_a_function_of_the_colluders_seed_and_the_round_alone():
    """Not of the protocol's per-worker generator: any rng, the same rounds; another seed, others."""
    shared = sample_aware(inner="sign_flip", p=0.3, coin="shared", seed=7)
    rounds = _attack_rounds(shared, 2, seed=0)
    assert _attack_rounds(shared, 2, seed=1) == rounds
    assert (
        _attack_rounds(sample_aware(inner="sign_flip", p=0.3, coin="shared", seed=7), 5) == rounds
    )
    assert (
        _attack_rounds(sample_aware(inner="sign_flip", p=0.3, coin="shared", seed=8), 2) != rounds
    )
    # The oracle with a shared coin still skips the rounds it is sampled in.
    oracle = sample_aware(inner="sign_flip", knows="oracle", p=0.3, coin="shared", seed=7)
    true_keys = simulation_keys(N_VALIDATORS)[0]
    watched = {r for r in range(200) if _true_samplers(r, 2, true_keys, 0.1, range(N_VALIDATORS))}
    assert watched and _attack_rounds(oracle, 2) == rounds - watched


def test_taking_turns_only_the_colluder_whose_rank_is_the_round_mod_f_attacks():
    turns = sample_aware(inner="sign_flip", p=1.0, coin="turns", seed=7)
    for rank, worker in enumerate(BYZANTINE):
        assert _attack_rounds(turns, worker, rounds=20) == set(range(rank, 20, 2))
    coin = sample_aware(inner="sign_flip", p=0.5, coin="turns", seed=7)
    assert _attack_rounds(coin, 5, rounds=100) == {
        r for r in range(1, 100, 2) if shared_attack(7, r, 0.5)
    }
    with pytest.raises(ValueError, match="not among the round's Byzantine workers"):
        _sent(turns, 0, 4)


def test_no_attack_before_start():
    late = sample_aware(inner="sign_flip", p=1.0, coin="shared", start=15)
    assert _attack_rounds(late, 2, rounds=20) == set(range(15, 20))
    own = sample_aware(inner="sign_flip", p=1.0, start=15)
    assert _attack_rounds(own, 5, rounds=20) == set(range(15, 20))


def test_knowledge_is_the_inner_attacks_and_the_label_says_what_it_assumes():
    assert sample_aware(inner="sign_flip").knowledge == "own"
    assert sample_aware(inner="alie").knowledge == "colluding"
    oracle = sample_aware(inner="alie", knows="oracle", colluders="0;2")
    assert oracle.label == (
        "sample_aware(inner=alie(z=None), knows=oracle, p=1.0, keys=derived, budget=0.1, "
        "colluders=(0, 2))"
    )
    leaked = sample_aware(inner="alie", knows="oracle", keys=simulation_keys(4)[0])
    assert dict(leaked.params)["keys"] == "given"
    assert SAMPLE_KNOWLEDGE == ("oracle", "blind")
    assert SAMPLE_COINS == ("own", "shared", "turns")
    assert sample_aware(inner="alie", p=0.3, coin="shared", seed=4, start=9).label == (
        "sample_aware(inner=alie(z=None), knows=blind, p=0.3, coin=shared, seed=4, start=9)"
    )


def test_nested_specs_build_and_the_protocol_config_accepts_them():
    spec = (
        "sample_aware:inner=optimal_alie:low=0.1;points=12,knows=oracle,colluders=0,"
        "rule=trimmed_mean:trim=2"
    )
    attack = ATTACKS.build(spec, flag="--attack")
    assert dict(attack.params)["inner"] == (
        "optimal_alie(rule=trimmed_mean:trim=2, low=0.1, high=1000.0, points=12)"
    )
    assert ProtocolConfig(attack=spec).attack == spec
    assert inner_spec("min_max:direction=std;iters=5") == "min_max:direction=std,iters=5"
    # The rule a searching inner attack gets from the run when its spec names none.
    from pot_jax.learning import RULES

    built = ATTACKS.build(
        "sample_aware:inner=optimal_ipm", flag="x", rule=RULES.build("krum:f=2", flag="x")
    )
    assert "rule=krum" in dict(built.params)["inner"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"knows": "psychic"}, "knows"),
        ({"p": 1.5}, "p = 1.5"),
        ({"p": True}, "p = True"),
        ({"inner": "sample_aware"}, "another attack"),
        ({"inner": ""}, "inner"),
        ({"inner": "no_such_attack"}, "no_such_attack"),
        ({"knows": "oracle", "keys": "random"}, "keys"),
        ({"knows": "oracle", "colluders": "a;b"}, "colluders"),
        ({"knows": "oracle", "budget": 0}, "budget"),
        ({"coin": "maybe"}, r"coin = 'maybe', expected one of \('own', 'shared', 'turns'\)"),
        ({"coin": "shared", "seed": -1}, r"seed = -1, expected an int in \[0, 2147483648\)"),
        ({"coin": "shared", "seed": 0.5}, "seed = 0.5"),
        ({"seed": True}, "seed = True"),
        ({"start": -3}, "start = -3, expected an int >= 0"),
    ],
)
def test_bad_parameters_are_refused_with_what_was_expected(kw, message):
    with pytest.raises(ValueError, match=message) as raised:
        sample_aware(**kw)
    assert "\n" not in str(raised.value)  # one line


def test_an_oracle_without_the_committee_or_chain_id_refuses_to_guess():
    attack = sample_aware(knows="oracle", inner="sign_flip")
    with pytest.raises(ValueError, match="n_validators"):
        attack.apply(_ctx(n_validators=0), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="chain_id"):
        attack.apply(_ctx(chain_id=b""), 2, np.random.default_rng(0))
    short = sample_aware(knows="oracle", inner="sign_flip", keys=simulation_keys(3)[0])
    with pytest.raises(ValueError, match="3 validator keys"):
        short.apply(_ctx(), 2, np.random.default_rng(0))


def test_make_attack_builds_it_like_the_registry():
    assert make_attack("sample_aware", inner="sign_flip", p=0.5).label == (
        "sample_aware(inner=sign_flip, knows=blind, p=0.5)"
    )


# --------------------------------------------------------------------------- #
# The real protocol
# --------------------------------------------------------------------------- #

TINY = dict(
    dataset="teacher",
    workers=W,
    batch_size=8,
    rounds=12,
    hidden=(16,),
    learning_rate=0.5,
    eval_every=6,
    checkpoint_every=4,
    budget=0.5,
    progress=False,
)
INNER = "ipm:epsilon=1.0"


def _run(tmp_path, attack, *, keys="derived", keyring=None):
    """The run's summary and, per Byzantine worker banned, the round of its fraud proof."""
    rows = []
    config = ProtocolConfig(**TINY, attack=attack, keys=keys, run_dir=str(tmp_path))
    summary = run_protocol(config, keys=keyring, on_commit=lambda r, row: rows.append(row))
    bans, seen = [], 0
    for row in rows:
        while row["caught"] > seen:
            bans.append(row["round"] - 1)
            seen += 1
    header = json.loads((tmp_path / "config.json").read_text())
    assert header["genesis"]["key_source"] == (keys if keyring is None else keyring.source)
    return summary, bans


def _first_checked_attack(worker, true_keys, attacks_in_round):
    """The first round the worker attacks while an honest validator (1..3) samples it."""
    for r in range(TINY["rounds"]):
        if attacks_in_round(r) and _protocol_samplers(r, worker, true_keys, range(1, 4)):
            return r
    return None


def _protocol_samplers(round_, worker, secret_keys, validators):
    ctx = RoundContext(
        chain_id=ProtocolConfig().chain_id.encode(),
        round=round_,
        params=None,
        learner=None,
        batch_of=None,
        n_workers=W,
    )
    scheme = spot_check(TINY["budget"])
    return [v for v in validators if worker in scheme.select(ctx, v, 4, secret_keys[v]).workers]


def test_with_derived_keys_the_oracle_is_never_caught_though_it_sends_wrong_gradients(tmp_path):
    attack = f"sample_aware:inner={INNER},knows=oracle,budget=0.5,colluders=0"
    summary, bans = _run(tmp_path, attack)
    assert summary.byzantine_workers and summary.key_source == "derived"
    assert summary.cheaters_caught == () and bans == [] and summary.fraud_proofs == 0
    assert summary.wrong_gradients_checked == 0
    # It attacked in most rounds: every round no honest validator sampled it.
    assert summary.wrong_gradients_accepted_unchecked >= TINY["rounds"]


def test_with_derived_keys_blind_p1_is_caught_in_the_first_round_it_is_sampled(tmp_path):
    summary, bans = _run(tmp_path, f"sample_aware:inner={INNER},knows=blind,p=1.0")
    true_keys = simulation_keys(4)[0]
    expected = sorted(
        r
        for w in summary.byzantine_workers
        if (r := _first_checked_attack(w, true_keys, lambda r: True)) is not None
    )
    assert expected, "no Byzantine worker was sampled in 12 rounds: the test proves nothing"
    assert bans == expected
    assert sorted(summary.cheaters_caught) == sorted(
        w
        for w in summary.byzantine_workers
        if _first_checked_attack(w, true_keys, lambda r: True) is not None
    )


def test_blind_colluders_with_a_shared_coin_are_caught_in_the_first_shared_round_sampled(tmp_path):
    """In the real protocol: each is banned the first round the shared coin says attack and an
    honest validator's VRF sample holds it."""
    summary, bans = _run(tmp_path, f"sample_aware:inner={INNER},knows=blind,p=0.5,coin=shared")
    true_keys = simulation_keys(4)[0]
    shared = [bool(shared_attack(0, r, 0.5)) for r in range(TINY["rounds"])]
    first = {
        w: _first_checked_attack(w, true_keys, lambda r: shared[r])
        for w in summary.byzantine_workers
    }
    assert any(r is not None for r in first.values()), "nobody caught: the test proves nothing"
    assert bans == sorted(r for r in first.values() if r is not None)
    assert sorted(summary.cheaters_caught) == sorted(w for w, r in first.items() if r is not None)


def test_canary_the_same_oracle_is_caught_when_the_validators_keys_are_secret(tmp_path):
    """Its derived-key guess meets secret keys: caught where the true samples say."""
    guess = simulation_keys(4)[0]
    for attempt in range(5):  # keys from the OS; retry the rare set that catches nobody
        keyring = generate_keys(4, W)
        true_keys = keyring.validator_secret_keys
        summary, bans = _run(
            tmp_path / f"run{attempt}",
            f"sample_aware:inner={INNER},knows=oracle,budget=0.5,colluders=0",
            keyring=keyring,
        )
        want = sorted(
            r
            for w in summary.byzantine_workers
            if (
                r := _first_checked_attack(
                    w, true_keys, lambda r, w=w: not _protocol_samplers(r, w, guess, range(1, 4))
                )
            )
            is not None
        )
        assert bans == want
        if want:
            assert summary.cheaters_caught and summary.fraud_proofs > 0
            return
    pytest.fail("five key sets in a row caught no oracle: the canary never fired")
