"""The rewards ledger: integer, double-entry accounting of stakes and rewards.

Money is counted in integer base units (``TOKEN`` = 10**6 units per token), never
in floats, so conservation is exact. Every account has a liquid *balance* and a
bonded *stake*; two more accounts are explicit: ``"emission"`` (the source of
new value; its balance is minus the total ever emitted) and ``"burn"`` (the sink
of destroyed value; its balance is the total ever burned). Each round writes
entries whose deltas sum to zero, so over all accounts, emission and burn
included, the total never changes; over participants only,

    balances + stakes == genesis stakes + total emitted - total burned.

One round (``Ledger.apply_round``), in entry order:

1. ``emission``: ``emission_per_round`` leaves the emission account, always.
2. ``reward``: the workers' pool, ``emission - validator pool``, is split among
   the accepted workers in proportion to their weight (example count under the
   ``"per_example"`` rule, the supplied integer quality weight under
   ``"quality"``), each share rounded down, in ascending worker order.
3. ``qc-reward``: the validator pool, ``emission * validator_share_bps //
   10_000``, is split equally among the distinct QC signers, rounded down.
4. ``burn-unallocated``: whatever 2 and 3 did not pay out is burned: the
   rounding remainders, and a whole pool if nobody can receive it (no accepted
   worker or zero total weight; no signer). Remainders go to the burn, not to
   a lowest index, so no participant gains from the rounding rule.
5. For each worker named in a fraud proof, once, in ascending worker order:
   ``slash`` takes ``ceil(stake * slash_fraction_bps / 10_000)`` from its
   current stake (rounding against the cheater, so a positive fraction of a
   positive stake always takes at least one unit and a stake never goes
   negative); ``bounty`` pays ``min(fraud_proof_bounty, slashed)`` to the
   prover, the lowest validator index among the proofs naming that worker
   (independent of proof order); ``burn-slashed`` burns the rest. A worker whose
   stake is already zero gets one ``slash-empty-stake`` entry with delta 0 and no
   bounty is paid, so the attempt is still on the record.
6. For each validator named in a validator fault (``ValidatorFault``: its own
   signed messages show it skipped or changed its sample, vouched for a
   gradient proven wrong, forged a fraud proof or equivocated), once, in
   ascending order: ``slash-validator`` takes ``ceil(stake *
   slash_fraction_bps / 10_000)`` of its stake and ``burn-slashed`` burns all
   of it (nobody is paid for evidence the proposer merely forwarded); an
   empty stake gets one ``slash-validator-empty-stake`` entry with delta 0.

Zero-amount entries for the emission and the burn are omitted; every accepted
worker, every signer and every proven worker always gets its entry, even at 0.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType

__all__ = [
    "BPS",
    "BURN",
    "EMISSION",
    "LEDGER_ENCODING_VERSION",
    "REASONS",
    "REWARD_RULES",
    "TOKEN",
    "Contribution",
    "FraudProofRef",
    "Ledger",
    "ValidatorFault",
    "LedgerConfig",
    "LedgerEntry",
    "LedgerError",
    "RoundRewards",
    "check_conservation",
    "decode_entries",
    "encode_entries",
    "entries_digest",
    "validator_account",
    "worker_account",
]

TOKEN = 10**6
"""Base units per token."""
BPS = 10_000
"""Basis points in one whole: fractions are ``bps / BPS``."""

EMISSION = "emission"
BURN = "burn"

REWARD_RULES = ("per_example", "quality")

# Entry reasons. Each reason fixes which column it moves (balance or stake),
# which accounts it may name and the sign its delta may take.
R_EMISSION = "emission"
R_REWARD = "reward"
R_QC_REWARD = "qc-reward"
R_BURN_UNALLOCATED = "burn-unallocated"
R_SLASH = "slash"
R_SLASH_EMPTY = "slash-empty-stake"
R_BOUNTY = "bounty"
R_BURN_SLASHED = "burn-slashed"
R_SLASH_VALIDATOR = "slash-validator"
R_SLASH_VALIDATOR_EMPTY = "slash-validator-empty-stake"

_BALANCE, _STAKE = "balance", "stake"


@dataclass(frozen=True)
class _ReasonRule:
    code: int  # its byte in the canonical encoding
    column: str
    account_kind: str  # "worker", "validator", "emission" or "burn"
    sign: int  # +1: delta >= 0; -1: delta <= 0; 0: delta == 0


_REASON_RULES: dict[str, _ReasonRule] = {
    R_EMISSION: _ReasonRule(1, _BALANCE, "emission", -1),
    R_REWARD: _ReasonRule(2, _BALANCE, "worker", +1),
    R_QC_REWARD: _ReasonRule(3, _BALANCE, "validator", +1),
    R_BURN_UNALLOCATED: _ReasonRule(4, _BALANCE, "burn", +1),
    R_SLASH: _ReasonRule(5, _STAKE, "worker", -1),
    R_SLASH_EMPTY: _ReasonRule(6, _STAKE, "worker", 0),
    R_BOUNTY: _ReasonRule(7, _BALANCE, "validator", +1),
    R_BURN_SLASHED: _ReasonRule(8, _BALANCE, "burn", +1),
    R_SLASH_VALIDATOR: _ReasonRule(9, _STAKE, "validator", -1),
    R_SLASH_VALIDATOR_EMPTY: _ReasonRule(10, _STAKE, "validator", 0),
}
_REASON_BY_CODE = {rule.code: reason for reason, rule in _REASON_RULES.items()}
REASONS = tuple(_REASON_RULES)
"""Every entry reason, in encoding-code order."""

_ACCOUNT_RE = re.compile(r"(worker|validator):(0|[1-9][0-9]*)")
_U64_MAX = (1 << 64) - 1
_AMOUNT_BYTES = 16  # signed big-endian; the emission balance is negative
_AMOUNT_MIN, _AMOUNT_MAX = -(1 << 127), (1 << 127) - 1

LEDGER_ENCODING_VERSION = 1
_ENTRIES_MAGIC = b"PJLE"
_STATE_DOMAIN = b"pot-jax/ledger/state/v1\x00"
_ENTRIES_DOMAIN = b"pot-jax/ledger/entries/v1\x00"


class LedgerError(ValueError):
    """An invalid ledger input or undecodable ledger bytes; the text says what and why."""


def worker_account(index: int) -> str:
    """Account name of worker ``index``: ``"worker:<index>"``."""
    return f"worker:{_index(index, 'worker index')}"


def validator_account(index: int) -> str:
    """Account name of validator ``index``: ``"validator:<index>"``."""
    return f"validator:{_index(index, 'validator index')}"


def _index(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise LedgerError(f"{what} must be a non-negative int, got {value!r}")
    return value


def _account_kind(account: str) -> str | None:
    if account in (EMISSION, BURN):
        return account
    match = _ACCOUNT_RE.fullmatch(account)
    return match.group(1) if match else None


# ---------------------------------------------------------------------------
# Configuration and round inputs


@dataclass(frozen=True)
class LedgerConfig:
    """Economic parameters of a run, all integers (base units or basis points).

    Attributes:
      worker_stake: stake each worker bonds at genesis, in base units.
      validator_stake: stake each validator bonds at genesis, in base units.
      emission_per_round: new value created every committed round, in base units.
      validator_share_bps: part of each round's emission paid to the QC signers,
        in basis points (1_000 = 10%); the rest goes to accepted workers.
      fraud_proof_bounty: most a prover is paid for one caught worker; it is paid
        out of the slashed stake, never from emission.
      slash_fraction_bps: part of the cheater's current stake slashed per caught
        round, in basis points (10_000 = the whole stake); the slash pays the
        bounty and the rest is burned.
      reward_rule: ``"per_example"`` (pay each accepted example equally) or
        ``"quality"`` (pay in proportion to per-worker integer quality weights,
        e.g. aggregation scores scaled and rounded by the caller).
    """

    worker_stake: int = 1_000 * TOKEN
    validator_stake: int = 10_000 * TOKEN
    emission_per_round: int = 100 * TOKEN
    validator_share_bps: int = 1_000
    fraud_proof_bounty: int = 50 * TOKEN
    slash_fraction_bps: int = BPS
    reward_rule: str = "per_example"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name == "reward_rule":
                continue
            value = getattr(self, f.name)
            upper = BPS if f.name.endswith("_bps") else _U64_MAX
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= upper:
                raise LedgerError(
                    f"LedgerConfig.{f.name} = {value!r}: expected an int in [0, {upper}]"
                )
        if self.reward_rule not in REWARD_RULES:
            raise LedgerError(
                f"LedgerConfig.reward_rule = {self.reward_rule!r}: expected one of {REWARD_RULES}"
            )

    def encode(self) -> bytes:
        """Canonical bytes: the six amounts as big-endian u64, then the rule's index as u8."""
        amounts = [getattr(self, f.name) for f in fields(self) if f.name != "reward_rule"]
        return struct.pack(">6QB", *amounts, REWARD_RULES.index(self.reward_rule))


@dataclass(frozen=True)
class Contribution:
    """An accepted worker's share of a round: its example count and optional quality weight."""

    worker: int
    examples: int
    quality: int | None = None

    def __post_init__(self) -> None:
        _index(self.worker, "Contribution.worker")
        if not isinstance(self.examples, int) or isinstance(self.examples, bool):
            raise LedgerError(f"Contribution.examples must be an int, got {self.examples!r}")
        if self.examples < 0:
            raise LedgerError(f"worker {self.worker}: examples = {self.examples}, expected >= 0")
        if self.quality is not None and (
            not isinstance(self.quality, int) or isinstance(self.quality, bool) or self.quality < 0
        ):
            raise LedgerError(
                f"worker {self.worker}: quality = {self.quality!r}, expected a non-negative int"
                " (scale and round float scores before they reach the ledger)"
            )


@dataclass(frozen=True)
class FraudProofRef:
    """A checked fraud proof: ``validator`` proved that ``worker`` cheated."""

    validator: int
    worker: int

    def __post_init__(self) -> None:
        _index(self.validator, "FraudProofRef.validator")
        _index(self.worker, "FraudProofRef.worker")


@dataclass(frozen=True)
class ValidatorFault:
    """Validator ``validator`` is slashed for ``fault`` (a ``protocol.round.Fault`` value)."""

    validator: int
    fault: str

    def __post_init__(self) -> None:
        _index(self.validator, "ValidatorFault.validator")
        if not isinstance(self.fault, str) or not self.fault:
            raise LedgerError(f"ValidatorFault.fault = {self.fault!r}: expected a non-empty str")


@dataclass(frozen=True)
class RoundRewards:
    """What a committed round tells the ledger.

    Attributes:
      round: the round number; strictly greater than the last applied round.
      accepted: one ``Contribution`` per accepted worker (no worker twice).
      qc_signers: validator indices whose signatures are in the round's QC.
      fraud_proofs: checked fraud proofs; a worker may appear in several.
      validator_faults: validators to slash; a validator may appear in several.
    """

    round: int
    accepted: tuple[Contribution, ...] = ()
    qc_signers: tuple[int, ...] = ()
    fraud_proofs: tuple[FraudProofRef, ...] = ()
    validator_faults: tuple[ValidatorFault, ...] = ()

    def __post_init__(self) -> None:
        _index(self.round, "RoundRewards.round")
        if self.round > _U64_MAX:
            raise LedgerError(f"RoundRewards.round = {self.round}, expected < 2**64")
        object.__setattr__(self, "accepted", tuple(self.accepted))
        object.__setattr__(self, "qc_signers", tuple(self.qc_signers))
        object.__setattr__(self, "fraud_proofs", tuple(self.fraud_proofs))
        object.__setattr__(self, "validator_faults", tuple(self.validator_faults))
        for item, cls in (
            *((a, Contribution) for a in self.accepted),
            *((p, FraudProofRef) for p in self.fraud_proofs),
            *((v, ValidatorFault) for v in self.validator_faults),
        ):
            if not isinstance(item, cls):
                raise LedgerError(f"round {self.round}: expected a {cls.__name__}, got {item!r}")
        workers = [c.worker for c in self.accepted]
        if len(set(workers)) != len(workers):
            raise LedgerError(f"round {self.round}: a worker is accepted twice in {workers}")
        for signer in self.qc_signers:
            _index(signer, f"round {self.round}: QC signer")
        if len(set(self.qc_signers)) != len(self.qc_signers):
            raise LedgerError(
                f"round {self.round}: QC signers {list(self.qc_signers)} repeat a validator"
            )


@dataclass(frozen=True)
class LedgerEntry:
    """One movement of value: ``delta`` base units into ``account`` for ``reason``."""

    round: int
    account: str
    delta: int
    reason: str


# ---------------------------------------------------------------------------
# The ledger


@dataclass(frozen=True)
class Ledger:
    """Balances, stakes and the full entry history; immutable, each round makes a new one.

    Build one with ``Ledger.genesis``. ``balances`` holds every participant plus
    ``"emission"`` and ``"burn"``; ``stakes`` holds every participant.
    """

    config: LedgerConfig
    n_workers: int
    n_validators: int
    balances: Mapping[str, int]
    stakes: Mapping[str, int]
    entries: tuple[LedgerEntry, ...] = ()
    last_round: int | None = None

    @classmethod
    def genesis(cls, config: LedgerConfig, *, n_workers: int, n_validators: int) -> Ledger:
        """Every worker and validator bonds its configured stake; all balances are 0."""
        _index(n_workers, "n_workers")
        _index(n_validators, "n_validators")
        workers = [worker_account(i) for i in range(n_workers)]
        validators = [validator_account(j) for j in range(n_validators)]
        stakes = {a: config.worker_stake for a in workers}
        stakes.update({a: config.validator_stake for a in validators})
        balances = dict.fromkeys([*workers, *validators, EMISSION, BURN], 0)
        return cls(
            config=config,
            n_workers=n_workers,
            n_validators=n_validators,
            balances=MappingProxyType(balances),
            stakes=MappingProxyType(stakes),
        )

    # -- reading

    def balance(self, account: str) -> int:
        return self.balances[account]

    def stake(self, account: str) -> int:
        return self.stakes[account]

    @property
    def total_emitted(self) -> int:
        return -self.balances[EMISSION]

    @property
    def total_burned(self) -> int:
        return self.balances[BURN]

    @property
    def genesis_total(self) -> int:
        return (
            self.n_workers * self.config.worker_stake
            + self.n_validators * self.config.validator_stake
        )

    @property
    def participant_total(self) -> int:
        """Balances plus stakes of workers and validators (not emission, not burn)."""
        liquid = sum(v for a, v in self.balances.items() if a not in (EMISSION, BURN))
        return liquid + sum(self.stakes.values())

    def round_entries(self, round_: int) -> tuple[LedgerEntry, ...]:
        """The entries written by round ``round_`` (empty if it wrote none)."""
        return tuple(e for e in self.entries if e.round == round_)

    # -- the transition

    def apply_round(self, rewards: RoundRewards) -> Ledger:
        """Pay, slash and burn for one committed round; returns a new ledger.

        Raises:
          LedgerError: the round is not after the last one, an index is out of
            range, a worker is both accepted and proven to cheat, or the
            ``"quality"`` rule is on and an accepted worker has no weight.
        """
        new_entries = self._round_entries(rewards)
        balances, stakes = dict(self.balances), dict(self.stakes)
        _post(balances, stakes, new_entries)
        return Ledger(
            config=self.config,
            n_workers=self.n_workers,
            n_validators=self.n_validators,
            balances=MappingProxyType(balances),
            stakes=MappingProxyType(stakes),
            entries=self.entries + tuple(new_entries),
            last_round=rewards.round,
        )

    def _round_entries(self, rewards: RoundRewards) -> list[LedgerEntry]:
        self._check_round(rewards)
        cfg, r = self.config, rewards.round
        out: list[LedgerEntry] = []

        def add(account: str, delta: int, reason: str) -> None:
            out.append(LedgerEntry(r, account, delta, reason))

        emission = cfg.emission_per_round
        validator_pool = emission * cfg.validator_share_bps // BPS
        worker_pool = emission - validator_pool
        if emission:
            add(EMISSION, -emission, R_EMISSION)

        paid = 0
        accepted = sorted(rewards.accepted, key=lambda c: c.worker)
        if cfg.reward_rule == "quality":
            weights = [c.quality for c in accepted]
        else:
            weights = [c.examples for c in accepted]
        total_weight = sum(weights)
        for contribution, weight in zip(accepted, weights, strict=True):
            share = worker_pool * weight // total_weight if total_weight else 0
            add(worker_account(contribution.worker), share, R_REWARD)
            paid += share
        signers = sorted(rewards.qc_signers)
        for signer in signers:
            share = validator_pool // len(signers)
            add(validator_account(signer), share, R_QC_REWARD)
            paid += share
        if emission - paid:
            add(BURN, emission - paid, R_BURN_UNALLOCATED)

        provers: dict[int, int] = {}
        for proof in rewards.fraud_proofs:
            provers[proof.worker] = min(proof.validator, provers.get(proof.worker, proof.validator))
        for worker in sorted(provers):
            account = worker_account(worker)
            stake = self.stakes[account]
            if stake == 0:
                add(account, 0, R_SLASH_EMPTY)
                continue
            slashed = -(-stake * cfg.slash_fraction_bps // BPS)  # ceil, <= stake
            bounty = min(cfg.fraud_proof_bounty, slashed)
            add(account, -slashed, R_SLASH)
            add(validator_account(provers[worker]), bounty, R_BOUNTY)
            if slashed - bounty:
                add(BURN, slashed - bounty, R_BURN_SLASHED)
        for validator in sorted({v.validator for v in rewards.validator_faults}):
            account = validator_account(validator)
            stake = self.stakes[account]
            if stake == 0:
                add(account, 0, R_SLASH_VALIDATOR_EMPTY)
                continue
            slashed = -(-stake * cfg.slash_fraction_bps // BPS)
            add(account, -slashed, R_SLASH_VALIDATOR)
            add(BURN, slashed, R_BURN_SLASHED)
        return out

    def _check_round(self, rewards: RoundRewards) -> None:
        if not isinstance(rewards, RoundRewards):
            raise LedgerError(f"apply_round expects RoundRewards, got {type(rewards).__name__}")
        r = rewards.round
        if self.last_round is not None and r <= self.last_round:
            raise LedgerError(
                f"round {r} applied after round {self.last_round}: rounds must strictly increase"
            )
        for c in rewards.accepted:
            if c.worker >= self.n_workers:
                raise LedgerError(
                    f"round {r}: accepted worker {c.worker} out of range, ledger has "
                    f"{self.n_workers} workers"
                )
            if self.config.reward_rule == "quality" and c.quality is None:
                raise LedgerError(
                    f"round {r}: worker {c.worker} has no quality weight, the 'quality' "
                    "reward rule needs one for every accepted worker"
                )
        for signer in rewards.qc_signers:
            if signer >= self.n_validators:
                raise LedgerError(
                    f"round {r}: QC signer {signer} out of range, ledger has "
                    f"{self.n_validators} validators"
                )
        accepted = {c.worker for c in rewards.accepted}
        for proof in rewards.fraud_proofs:
            if proof.worker >= self.n_workers or proof.validator >= self.n_validators:
                raise LedgerError(
                    f"round {r}: fraud proof {proof} out of range, ledger has "
                    f"{self.n_workers} workers and {self.n_validators} validators"
                )
            if proof.worker in accepted:
                raise LedgerError(
                    f"round {r}: worker {proof.worker} is both accepted and proven to cheat by "
                    f"validator {proof.validator}; a proven worker must be excluded"
                )
        for fault in rewards.validator_faults:
            if fault.validator >= self.n_validators:
                raise LedgerError(
                    f"round {r}: validator fault {fault} out of range, ledger has "
                    f"{self.n_validators} validators"
                )

    # -- commitments

    def encode_state(self) -> bytes:
        """Canonical bytes of the state (config, sizes, last round, balances, stakes)."""
        parts = [
            self.config.encode(),
            struct.pack(">QQ", self.n_workers, self.n_validators),
            b"\x00" if self.last_round is None else b"\x01" + struct.pack(">Q", self.last_round),
        ]
        for table in (self.balances, self.stakes):
            parts.append(struct.pack(">I", len(table)))
            for account in sorted(table):
                parts.append(_encode_account(account) + _encode_amount(table[account]))
        return b"".join(parts)

    def ledger_digest(self) -> bytes:
        """SHA-256 of ``encode_state()`` under a domain tag; goes into the round record."""
        return hashlib.sha256(_STATE_DOMAIN + self.encode_state()).digest()


def _post(balances: dict[str, int], stakes: dict[str, int], entries: Iterable[LedgerEntry]) -> None:
    for e in entries:
        table = stakes if _REASON_RULES[e.reason].column == _STAKE else balances
        table[e.account] += e.delta


# ---------------------------------------------------------------------------
# Audit


def check_conservation(ledger: Ledger) -> bool:
    """Whether ``ledger`` is exactly what its own entries produce from genesis.

    True iff: every entry is well-formed (known reason, an account of the kind
    the reason allows, a delta of the allowed sign, rounds non-decreasing and
    not after ``last_round``); each round's deltas sum to zero; replaying the
    entries over the genesis state gives ``balances`` and ``stakes`` exactly,
    with no participant balance or stake ever negative; and participants hold
    ``genesis + emitted - burned``.
    """
    try:
        genesis = Ledger.genesis(
            ledger.config, n_workers=ledger.n_workers, n_validators=ledger.n_validators
        )
    except (LedgerError, TypeError):
        return False
    balances, stakes = dict(genesis.balances), dict(genesis.stakes)
    by_round: dict[int, list[LedgerEntry]] = {}
    previous = -1
    for e in ledger.entries:
        if not isinstance(e.reason, str) or not isinstance(e.account, str):
            return False
        rule = _REASON_RULES.get(e.reason)
        if (
            rule is None
            or not isinstance(e.delta, int)
            or not isinstance(e.round, int)
            or _account_kind(e.account) != rule.account_kind
            or (e.account not in balances)
            or (rule.sign > 0 and e.delta < 0)
            or (rule.sign < 0 and e.delta > 0)
            or (rule.sign == 0 and e.delta != 0)
            or e.round < previous
            or ledger.last_round is None
            or e.round > ledger.last_round
        ):
            return False
        previous = e.round
        by_round.setdefault(e.round, []).append(e)
    for entries in by_round.values():
        if sum(e.delta for e in entries) != 0:
            return False
        _post(balances, stakes, entries)
        participants = [a for a in balances if a not in (EMISSION, BURN)]
        if any(balances[a] < 0 for a in participants) or any(v < 0 for v in stakes.values()):
            return False
        if balances[BURN] < 0 or balances[EMISSION] > 0:
            return False
    if balances != dict(ledger.balances) or stakes != dict(ledger.stakes):
        return False
    return ledger.participant_total == (
        ledger.genesis_total + ledger.total_emitted - ledger.total_burned
    )


# ---------------------------------------------------------------------------
# Canonical encoding of entries


def _encode_account(account: str) -> bytes:
    raw = account.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def _encode_amount(amount: int) -> bytes:
    if not _AMOUNT_MIN <= amount <= _AMOUNT_MAX:
        raise LedgerError(f"amount {amount} does not fit the signed 128-bit encoding")
    return amount.to_bytes(_AMOUNT_BYTES, "big", signed=True)


def encode_entries(entries: Sequence[LedgerEntry]) -> bytes:
    """Canonical bytes: ``b"PJLE" | u8 version | u32 count`` then per entry
    ``u64 round | u16 len | account (UTF-8) | i128 delta | u8 reason code``, big-endian.
    """
    parts = [_ENTRIES_MAGIC, struct.pack(">BI", LEDGER_ENCODING_VERSION, len(entries))]
    for i, e in enumerate(entries):
        rule = _REASON_RULES.get(e.reason)
        if rule is None:
            raise LedgerError(f"entry {i}: unknown reason {e.reason!r}, expected one of {REASONS}")
        if _account_kind(e.account) is None:
            raise LedgerError(
                f"entry {i}: account {e.account!r} is not 'worker:<n>', 'validator:<n>', "
                f"{EMISSION!r} or {BURN!r}"
            )
        if not isinstance(e.round, int) or not 0 <= e.round <= _U64_MAX:
            raise LedgerError(f"entry {i}: round {e.round!r} is not a u64")
        parts += [
            struct.pack(">Q", e.round),
            _encode_account(e.account),
            _encode_amount(e.delta),
            bytes([rule.code]),
        ]
    return b"".join(parts)


def decode_entries(data: bytes) -> tuple[LedgerEntry, ...]:
    """Inverse of ``encode_entries``; raises ``LedgerError`` on any malformed byte."""
    data = bytes(data)
    if data[:4] != _ENTRIES_MAGIC:
        raise LedgerError(f"ledger entries start with {data[:4]!r}, expected {_ENTRIES_MAGIC!r}")
    if len(data) < 9:
        raise LedgerError(f"ledger entries are {len(data)} bytes, shorter than the 9-byte header")
    version, count = struct.unpack_from(">BI", data, 4)
    if version != LEDGER_ENCODING_VERSION:
        raise LedgerError(f"ledger entries version {version}, expected {LEDGER_ENCODING_VERSION}")
    pos, out = 9, []
    for i in range(count):
        if len(data) < pos + 10:
            raise LedgerError(f"entry {i} at byte {pos}: truncated header")
        round_, length = struct.unpack_from(">QH", data, pos)
        pos += 10
        end = pos + length + _AMOUNT_BYTES + 1
        if len(data) < end:
            raise LedgerError(f"entry {i} at byte {pos - 10}: truncated, needs {end} bytes")
        try:
            account = data[pos : pos + length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LedgerError(f"entry {i}: account is not UTF-8 ({exc})") from None
        if _account_kind(account) is None:
            raise LedgerError(f"entry {i}: account {account!r} is not a ledger account name")
        pos += length
        delta = int.from_bytes(data[pos : pos + _AMOUNT_BYTES], "big", signed=True)
        code = data[pos + _AMOUNT_BYTES]
        pos = end
        if code not in _REASON_BY_CODE:
            raise LedgerError(f"entry {i}: unknown reason code {code}")
        out.append(LedgerEntry(round_, account, delta, _REASON_BY_CODE[code]))
    if pos != len(data):
        raise LedgerError(f"{len(data) - pos} trailing bytes after {count} ledger entries")
    return tuple(out)


def entries_digest(entries: Sequence[LedgerEntry]) -> bytes:
    """SHA-256 of ``encode_entries(entries)`` under a domain tag."""
    return hashlib.sha256(_ENTRIES_DOMAIN + encode_entries(entries)).digest()
