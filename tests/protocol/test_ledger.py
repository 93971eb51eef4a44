"""Tests for pot_jax.protocol.ledger: exact payouts, slashing rules, conservation.

The written argument this checks: proofs/ledger.md.
"""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.protocol.ledger import (
    BPS,
    BURN,
    EMISSION,
    TOKEN,
    Contribution,
    FraudProofRef,
    Ledger,
    LedgerConfig,
    LedgerEntry,
    LedgerError,
    RoundRewards,
    check_conservation,
    decode_entries,
    encode_entries,
    entries_digest,
    validator_account,
    worker_account,
)

W, V = worker_account, validator_account

SMALL = LedgerConfig(
    worker_stake=1_000,
    validator_stake=5_000,
    emission_per_round=1_000,
    validator_share_bps=1_000,  # 100 to validators, 900 to workers
    fraud_proof_bounty=300,
    slash_fraction_bps=5_000,
)


def _genesis(config=SMALL, n_workers=4, n_validators=4):
    return Ledger.genesis(config, n_workers=n_workers, n_validators=n_validators)


def _assert_invariants(ledger: Ledger) -> None:
    assert ledger.participant_total == (
        ledger.genesis_total + ledger.total_emitted - ledger.total_burned
    )
    assert all(v >= 0 for a, v in ledger.balances.items() if a != EMISSION)
    assert all(v >= 0 for v in ledger.stakes.values())
    assert check_conservation(ledger)


# ---------------------------------------------------------------------------
# Config and inputs


def test_default_config_is_valid_and_in_base_units():
    cfg = LedgerConfig()
    assert cfg.worker_stake % TOKEN == 0 and cfg.reward_rule == "per_example"


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("worker_stake", -1, "worker_stake = -1"),
        ("emission_per_round", 1.5, "emission_per_round = 1.5"),
        ("validator_share_bps", BPS + 1, "validator_share_bps = 10001"),
        ("slash_fraction_bps", True, "slash_fraction_bps = True"),
        ("fraud_proof_bounty", 2**64, "expected an int in [0, 18446744073709551615]"),
        ("reward_rule", "stake", "reward_rule = 'stake': expected one of"),
    ],
)
def test_config_validation_names_field_value_and_expectation(field, value, expected):
    with pytest.raises(LedgerError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        LedgerConfig(**{field: value})


def test_round_inputs_reject_duplicates_and_negatives():
    with pytest.raises(LedgerError, match="accepted twice"):
        RoundRewards(0, accepted=(Contribution(1, 3), Contribution(1, 4)))
    with pytest.raises(LedgerError, match="repeat a validator"):
        RoundRewards(0, qc_signers=(2, 2))
    with pytest.raises(LedgerError, match="examples = -1, expected >= 0"):
        Contribution(0, -1)
    with pytest.raises(LedgerError, match="quality = 0.5"):
        Contribution(0, 1, quality=0.5)
    with pytest.raises(LedgerError, match="expected a FraudProofRef"):
        RoundRewards(0, fraud_proofs=((1, 2),))


def test_apply_round_rejects_inputs_that_do_not_fit_the_ledger():
    ledger = _genesis().apply_round(RoundRewards(3))
    with pytest.raises(LedgerError, match="round 3 applied after round 3"):
        ledger.apply_round(RoundRewards(3))
    with pytest.raises(LedgerError, match="accepted worker 4 out of range, ledger has 4 workers"):
        ledger.apply_round(RoundRewards(4, accepted=(Contribution(4, 1),)))
    with pytest.raises(LedgerError, match="QC signer 9 out of range"):
        ledger.apply_round(RoundRewards(4, qc_signers=(9,)))
    with pytest.raises(LedgerError, match="fraud proof .* out of range"):
        ledger.apply_round(RoundRewards(4, fraud_proofs=(FraudProofRef(0, 7),)))
    with pytest.raises(LedgerError, match="worker 1 is both accepted and proven to cheat"):
        ledger.apply_round(
            RoundRewards(4, accepted=(Contribution(1, 1),), fraud_proofs=(FraudProofRef(0, 1),))
        )
    quality = _genesis(dataclasses.replace(SMALL, reward_rule="quality"))
    with pytest.raises(LedgerError, match="worker 2 has no quality weight"):
        quality.apply_round(RoundRewards(0, accepted=(Contribution(2, 10),)))


# ---------------------------------------------------------------------------
# Exact payouts


def test_per_example_split_burns_the_rounding_remainder():
    """900 to workers by examples 1:2 (300, 600); 100 to 3 signers (33 each); 1 burned."""
    ledger = _genesis().apply_round(
        RoundRewards(0, accepted=(Contribution(2, 20), Contribution(0, 10)), qc_signers=(3, 0, 1))
    )
    assert ledger.round_entries(0) == (
        LedgerEntry(0, EMISSION, -1_000, "emission"),
        LedgerEntry(0, W(0), 300, "reward"),
        LedgerEntry(0, W(2), 600, "reward"),
        LedgerEntry(0, V(0), 33, "qc-reward"),
        LedgerEntry(0, V(1), 33, "qc-reward"),
        LedgerEntry(0, V(3), 33, "qc-reward"),
        LedgerEntry(0, BURN, 1, "burn-unallocated"),
    )
    assert ledger.balance(W(2)) == 600 and ledger.total_burned == 1
    _assert_invariants(ledger)


def test_quality_rule_pays_by_weight_not_examples():
    cfg = dataclasses.replace(SMALL, reward_rule="quality", validator_share_bps=0)
    ledger = _genesis(cfg).apply_round(
        RoundRewards(0, accepted=(Contribution(0, 100, quality=1), Contribution(1, 1, quality=2)))
    )
    assert ledger.balance(W(0)) == 333 and ledger.balance(W(1)) == 666
    # No signers: the validator pool is 0 here; the one-unit remainder is burned.
    assert ledger.total_burned == 1
    _assert_invariants(ledger)


def test_pools_nobody_can_receive_are_burned_not_lost():
    ledger = _genesis().apply_round(RoundRewards(0, accepted=(Contribution(1, 0),)))
    assert ledger.total_emitted == 1_000 and ledger.total_burned == 1_000
    assert ledger.balance(W(1)) == 0
    _assert_invariants(ledger)


def test_worker_caught_twice_is_slashed_once_and_lowest_prover_gets_bounty():
    ledger = _genesis().apply_round(
        RoundRewards(0, fraud_proofs=(FraudProofRef(3, 1), FraudProofRef(2, 1)))
    )
    slashes = [e for e in ledger.round_entries(0) if e.reason == "slash"]
    assert slashes == [LedgerEntry(0, W(1), -500, "slash")]
    assert ledger.balance(V(2)) == 300 and ledger.balance(V(3)) == 0
    assert ledger.stake(W(1)) == 500
    assert ledger.round_entries(0)[-1] == LedgerEntry(0, BURN, 200, "burn-slashed")
    _assert_invariants(ledger)


def test_slash_rounds_against_cheater_and_stops_at_an_empty_stake():
    """Half of 1 unit rounds up to 1; then the stake is 0 and the attempt is recorded."""
    cfg = dataclasses.replace(SMALL, worker_stake=3, emission_per_round=0)
    ledger = _genesis(cfg)
    stakes = []
    for r in range(4):
        ledger = ledger.apply_round(RoundRewards(r, fraud_proofs=(FraudProofRef(0, 2),)))
        stakes.append(ledger.stake(W(2)))
        _assert_invariants(ledger)
    assert stakes == [1, 0, 0, 0]
    assert ledger.round_entries(2) == (LedgerEntry(2, W(2), 0, "slash-empty-stake"),)
    # The bounty is capped by what was slashed: 2 + 1 units in total, none burned.
    assert ledger.balance(V(0)) == 3 and ledger.total_burned == 0


def test_zero_slash_fraction_records_the_proof_without_moving_value():
    cfg = dataclasses.replace(SMALL, slash_fraction_bps=0, emission_per_round=0)
    ledger = _genesis(cfg).apply_round(RoundRewards(0, fraud_proofs=(FraudProofRef(1, 0),)))
    assert ledger.round_entries(0) == (
        LedgerEntry(0, W(0), 0, "slash"),
        LedgerEntry(0, V(1), 0, "bounty"),
    )
    _assert_invariants(ledger)


def test_apply_round_is_pure():
    genesis = _genesis()
    before = (dict(genesis.balances), dict(genesis.stakes), genesis.entries)
    genesis.apply_round(RoundRewards(0, accepted=(Contribution(0, 1),), qc_signers=(0,)))
    assert (dict(genesis.balances), dict(genesis.stakes), genesis.entries) == before
    with pytest.raises(TypeError):
        genesis.balances[W(0)] = 10**9  # type: ignore[index]


# ---------------------------------------------------------------------------
# Conservation, property-tested


@st.composite
def _runs(draw):
    n_workers = draw(st.integers(1, 7))
    n_validators = draw(st.integers(1, 5))
    cfg = LedgerConfig(
        worker_stake=draw(st.integers(0, 10_000)),
        validator_stake=draw(st.integers(0, 10_000)),
        emission_per_round=draw(st.integers(0, 10_000)),
        validator_share_bps=draw(st.integers(0, BPS)),
        fraud_proof_bounty=draw(st.integers(0, 5_000)),
        slash_fraction_bps=draw(st.integers(0, BPS)),
        reward_rule=draw(st.sampled_from(["per_example", "quality"])),
    )
    rounds, r = [], 0
    for _ in range(draw(st.integers(0, 8))):
        r += draw(st.integers(1, 3))
        cheaters = draw(st.sets(st.integers(0, n_workers - 1), max_size=n_workers))
        proofs = [
            FraudProofRef(draw(st.integers(0, n_validators - 1)), w)
            for w in sorted(cheaters)
            for _ in range(draw(st.integers(1, 2)))  # some workers caught twice
        ]
        honest = sorted(set(range(n_workers)) - cheaters)
        accepted_ids = draw(st.lists(st.sampled_from(honest), unique=True)) if honest else []
        accepted = tuple(
            Contribution(w, draw(st.integers(0, 500)), quality=draw(st.integers(0, 10**6)))
            for w in accepted_ids
        )
        signers = tuple(draw(st.sets(st.integers(0, n_validators - 1))))
        rounds.append(RoundRewards(r, accepted, signers, tuple(draw(st.permutations(proofs)))))
    return cfg, n_workers, n_validators, rounds


@given(_runs())
def test_conservation_no_negatives_and_honest_never_slashed(run):
    """After every round: participants hold genesis + emitted - burned exactly, nothing is
    negative, each round's entries sum to zero, and a worker never named in a fraud proof
    keeps its whole stake."""
    cfg, n_workers, n_validators, rounds = run
    ledger = Ledger.genesis(cfg, n_workers=n_workers, n_validators=n_validators)
    accused: set[int] = set()
    for k, rewards in enumerate(rounds, start=1):
        ledger = ledger.apply_round(rewards)
        accused |= {p.worker for p in rewards.fraud_proofs}
        _assert_invariants(ledger)
        assert sum(e.delta for e in ledger.round_entries(rewards.round)) == 0
        assert ledger.total_emitted == k * cfg.emission_per_round
        for w in set(range(n_workers)) - accused:
            assert ledger.stake(W(w)) == cfg.worker_stake
        slashed_now = [
            e.account
            for e in ledger.round_entries(rewards.round)
            if e.reason in ("slash", "slash-empty-stake")
        ]
        assert sorted(slashed_now) == sorted({W(p.worker) for p in rewards.fraud_proofs})
    assert decode_entries(encode_entries(ledger.entries)) == ledger.entries


# ---------------------------------------------------------------------------
# The checker can fail (canaries)


def _busy_ledger() -> Ledger:
    ledger = _genesis()
    ledger = ledger.apply_round(
        RoundRewards(0, accepted=(Contribution(0, 5), Contribution(1, 7)), qc_signers=(0, 1, 2))
    )
    return ledger.apply_round(
        RoundRewards(1, accepted=(Contribution(2, 3),), fraud_proofs=(FraudProofRef(3, 0),))
    )


def _with_entry(ledger: Ledger, index: int, **changes) -> Ledger:
    entries = list(ledger.entries)
    entries[index] = dataclasses.replace(entries[index], **changes)
    return dataclasses.replace(ledger, entries=tuple(entries))


def test_conservation_checker_fails_when_an_entry_is_altered():
    ledger = _busy_ledger()
    assert check_conservation(ledger)
    reward = next(i for i, e in enumerate(ledger.entries) if e.reason == "reward")
    slash = next(i for i, e in enumerate(ledger.entries) if e.reason == "slash")
    e = ledger.entries[reward]
    assert not check_conservation(_with_entry(ledger, reward, delta=e.delta + 1))
    assert not check_conservation(_with_entry(ledger, reward, account=W(3)))
    assert not check_conservation(_with_entry(ledger, reward, reason="bounty"))
    assert not check_conservation(_with_entry(ledger, slash, delta=0))
    assert not check_conservation(_with_entry(ledger, reward, round=1))
    dropped = dataclasses.replace(ledger, entries=ledger.entries[:-1])
    assert not check_conservation(dropped)


def test_conservation_checker_fails_on_minted_value_even_if_entries_agree():
    """Inflating an entry and the balance together still breaks the round's zero sum."""
    ledger = _busy_ledger()
    i = next(i for i, e in enumerate(ledger.entries) if e.reason == "reward")
    forged = _with_entry(ledger, i, delta=ledger.entries[i].delta + 50)
    balances = dict(ledger.balances)
    balances[ledger.entries[i].account] += 50
    assert not check_conservation(dataclasses.replace(forged, balances=balances))
    stakes = dict(ledger.stakes)
    stakes[W(1)] -= 1
    assert not check_conservation(dataclasses.replace(ledger, stakes=stakes))


# ---------------------------------------------------------------------------
# Encoding and digests


_entry = st.builds(
    LedgerEntry,
    round=st.integers(0, 2**64 - 1),
    account=st.one_of(
        st.sampled_from([EMISSION, BURN]),
        st.integers(0, 10**6).map(W),
        st.integers(0, 10**6).map(V),
    ),
    delta=st.integers(-(2**127), 2**127 - 1),
    reason=st.sampled_from(["emission", "reward", "qc-reward", "slash", "bounty", "burn-slashed"]),
)


@given(st.lists(_entry, max_size=20))
def test_entries_encoding_round_trips(entries):
    data = encode_entries(entries)
    assert decode_entries(data) == tuple(entries)
    assert entries_digest(entries) == entries_digest(list(decode_entries(data)))


def test_entries_decoding_rejects_malformed_bytes():
    data = encode_entries(_busy_ledger().entries)
    for bad, message in [
        (data[:-1], "truncated"),
        (data + b"\0", "1 trailing bytes"),
        (b"XXXX" + data[4:], "expected b'PJLE'"),
        (data[:4] + b"\x02" + data[5:], "version 2, expected 1"),
        (data[:-1] + b"\xff", "unknown reason code 255"),
        (data[:19] + b"wrkr:0" + data[25:], "not a ledger account name"),
    ]:
        with pytest.raises(LedgerError, match=message):
            decode_entries(bad)
    with pytest.raises(LedgerError, match="account 'worker:01'"):
        encode_entries([LedgerEntry(0, "worker:01", 1, "reward")])
    with pytest.raises(LedgerError, match="unknown reason 'gift'"):
        encode_entries([LedgerEntry(0, W(0), 1, "gift")])


def test_ledger_digest_commits_to_state():
    a = _busy_ledger()
    assert a.ledger_digest() == _busy_ledger().ledger_digest()
    assert len(a.ledger_digest()) == 32
    b = a.apply_round(RoundRewards(2))
    assert b.ledger_digest() != a.ledger_digest()  # emission moved, last_round changed
    balances = dict(a.balances)
    balances[W(0)] += 1
    assert dataclasses.replace(a, balances=balances).ledger_digest() != a.ledger_digest()
    other = dataclasses.replace(a, config=dataclasses.replace(a.config, fraud_proof_bounty=1))
    assert other.ledger_digest() != a.ledger_digest()
