"""Offline audit of a run directory: ``pot-jax audit RUN_DIR [--genesis HASH] [--recompute ...]``.

Trust anchor. A transcript names its own validator set, so on its own it
proves only that *some* set of keys signed it. The auditor therefore pins
the genesis it trusts: ``--genesis HASH`` (the digest the run's operators
published) or ``--validators FILE`` (their public keys). Without a pin the
audit still checks everything below, and prints the genesis digest and the
validator keys it had to trust so a reader can compare them with what was
published. A genesis made with ``keys = derived`` (simulation keys that
anyone can recompute) proves nothing against the run's own participants,
and the audit says so on its first line.

What is checked, in order, and the first failure stops the audit:

1. the run directory's files are regular files (a FIFO, a device or a
   symlink to one is refused at once); framing and checksums of every
   record (``TranscriptReader``);
2. the header: canonical JSON; its genesis hashes to the digest the genesis
   QC signs; the genesis QC verifies against the genesis validator set
   (registered with proofs of possession); the pin, if any; the config is
   valid and within the limits; ``config.json`` equals the signed header;
3. the data: the dataset rebuilt from the signed config (``--data-dir``
   where the files moved) hashes to the genesis's data digest;
4. the **canonical record order**: HEADER, the genesis CHECKPOINT, then per
   round ROUND, QC, [CHECKPOINT of the round's input model, FRAUD_PROOF per
   cited proof in the record's order], LEDGER, [CHECKPOINT of its output:
   every ``checkpoint_every`` rounds and after the last], and finally one
   CLOSING record; nothing else, nothing after;
5. per round: the record decodes canonically, for this chain and this
   genesis, with consecutive rounds; its commit QC verifies; its input model
   hash is the previous output hash; every accepted worker trained on
   ``batch_size`` examples; every **fraud proof** is verified in full (the
   worker's signature and key, the carried gradient hashing to the signed
   commitment, and one recomputation from the input checkpoint showing the
   gradient is wrong); the **ledger** is replayed from the rewards rule and
   compared with the entries and the record's digest;
6. checkpoints: each stored model hashes to the record's output hash;
7. **re-execution** (``--recompute all`` or ``sample:F``, drawn from the
   operating system's randomness unless ``--seed`` repeats a draw; each
   checkpoint interval with probability F, and at least one): from a
   checkpoint, recompute every accepted worker's gradient, check it against
   the signed commitment, aggregate, update, compare the new model's hash
   with the record. A mismatch means the committee accepted a wrong
   gradient its sampling missed;
8. the **closing record**: its statement names this chain and genesis, the
   number of rounds, the last output hash and the replayed ledger's state
   digest, and its QC verifies. A transcript without it is *unfinished*
   (its own exit code), never passed;
9. ``summary.json`` and ``metrics.jsonl``: every claim that follows from the
   transcript (rounds, cheaters caught, fraud proofs, rejections, honest
   workers slashed, ledger totals, largest view, and the test accuracy
   re-evaluated from the checkpoints on the signed test data) must match.
   Claims the transcript cannot support (the centralized baseline, wall
   time, message counts, ground-truth counts of wrong gradients) are listed
   as not checked.

proofs/audit.md states what a passed audit guarantees and under which trust
assumption.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import random
import secrets
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pot_jax.attacks import build_attack, choose_byzantine
from pot_jax.config import COMPONENT_FIELDS, LOCAL_FIELDS, ConfigError, ProtocolConfig
from pot_jax.consensus.messages import value_digest
from pot_jax.crypto.quorum import QuorumCertificate, ValidatorSet, verify_qc, vote_message
from pot_jax.crypto.worker_signatures import worker_signature_scheme
from pot_jax.learning.assignment import BatchAssigner
from pot_jax.learning.encoding import EncodingError, decode_pytree, flat_digest, pytree_digest
from pot_jax.learning.trainer import build_learner, load_for, worker_shards
from pot_jax.protocol.genesis import (
    GENESIS_FORMAT,
    GenesisError,
    canonical_json,
    dataset_digest,
    decode_closing_record,
    genesis_digest,
    genesis_vote_message,
)
from pot_jax.protocol.ledger import (
    Ledger,
    LedgerConfig,
    LedgerError,
    check_conservation,
    decode_entries,
    encode_entries,
)
from pot_jax.protocol.messages import MessageError, RoundInputs, encode_proposal
from pot_jax.protocol.records import RecordError, RoundRecord
from pot_jax.protocol.roles import worker_program
from pot_jax.protocol.round import (
    Fault,
    InputsError,
    advance,
    cited_proofs,
    finish,
    genesis_state,
    judge,
    transition,
)
from pot_jax.protocol.setup import Batches, make_rules, make_verification
from pot_jax.protocol.transcript import (
    TRANSCRIPT_NAME,
    RecordKind,
    TranscriptError,
    TranscriptReader,
    decode_fraud_record,
    decode_qc_record,
)
from pot_jax.registry import import_paths
from pot_jax.verification.checks import Category
from pot_jax.verification.fraud_proof import FraudProof, check_fraud_proof


class Status(enum.Enum):
    PASSED = "passed"
    FAILED = "FAILED"
    UNFINISHED = "UNFINISHED"


EXIT_CODES = {Status.PASSED: 0, Status.FAILED: 1, Status.UNFINISHED: 3}
"""``pot-jax audit`` exit codes; 2 is a usage error (no such directory, bad flag)."""

NOT_CHECKED_SUMMARY = (
    "centralized_accuracy",
    "accuracy_ratio",
    "wrong_gradients_checked",
    "wrong_gradients_caught",
    "wrong_gradients_accepted_unchecked",
    "recomputed_gradients",
    "worker_gradients",
    "verification_compute_ratio",
    "messages",
    "virtual_time",
    "wall_seconds",
    "run_dir",
)


class AuditUsageError(ValueError):
    """The audit cannot start: no such run directory, or a malformed pin."""


class AuditFailure(Exception):
    """The first check that failed, with its round (None: before any round)."""

    def __init__(self, round_: int | None, reason: str):
        super().__init__(reason if round_ is None else f"round {round_}: {reason}")
        self.round = round_
        self.reason = reason


class _Unfinished(Exception):
    """The transcript ends before its closing record."""


@dataclass
class AuditReport:
    status: Status = Status.PASSED
    rounds: int = 0
    reexecuted: int = 0
    fraud_proofs: int = 0
    checkpoints: int = 0
    first_bad_round: int | None = None
    reason: str = ""
    genesis: str = ""
    validators: list[str] = field(default_factory=list)
    key_source: str = ""
    pinned: str = ""
    sample_seed: int | None = None
    not_checked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is Status.PASSED

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def __str__(self) -> str:
        if self.status is Status.PASSED:
            head = "audit passed"
        elif self.status is Status.UNFINISHED:
            head = f"audit UNFINISHED (not passed): {self.reason}"
        else:
            head = f"audit FAILED: {self.reason}"
        lines = []
        if self.key_source == "derived":
            lines.append(
                "WARNING: this run used derived (simulation) keys that anyone can recompute "
                "from its config: its transcript proves nothing against its own participants"
            )
        lines.append(head)
        lines.append(
            f"rounds verified {self.rounds}, re-executed {self.reexecuted}, "
            f"fraud proofs {self.fraud_proofs}, checkpoints {self.checkpoints}"
        )
        if self.genesis:
            if self.pinned:
                lines.append(f"trusted genesis {self.genesis} (pinned by {self.pinned})")
            else:
                lines.append(
                    f"trusted genesis {self.genesis} WITHOUT a pin: compare it and the "
                    "validator keys below with what the run's operators published, or pass "
                    "--genesis HASH or --validators FILE"
                )
                lines.extend(f"  validator {i}: {pk}" for i, pk in enumerate(self.validators))
        if self.sample_seed is not None:
            lines.append(f"re-execution sample seed {self.sample_seed} (repeat with --seed)")
        if self.not_checked:
            lines.append("not checked: " + ", ".join(self.not_checked))
        return "\n".join([*lines, *self.notes])


def parse_recompute(text: str) -> float:
    """``none`` -> 0, ``all`` -> 1, ``sample:F`` -> F in (0, 1]."""
    if text == "none":
        return 0.0
    if text == "all":
        return 1.0
    if text.startswith("sample:"):
        try:
            fraction = float(text.split(":", 1)[1])
        except ValueError:
            fraction = float("nan")
        if 0 < fraction <= 1:
            return fraction
    raise AuditUsageError(
        f"--recompute {text!r}: expected none, all or sample:FRACTION with 0 < F <= 1"
    )


def load_validator_pin(path: str | Path) -> tuple[str, ...]:
    """Validator public keys (hex) from a ``public.json`` (``pot-jax keygen``) or a JSON list."""
    try:
        obj = json.loads(Path(path).read_text())
        entries = obj["validators"] if isinstance(obj, dict) else obj
        keys = tuple(e[0] if isinstance(e, list) else e for e in entries)
        if not keys or not all(isinstance(k, str) and len(k) == 96 for k in keys):
            raise ValueError("expected 48-byte public keys in hex")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise AuditUsageError(f"--validators {path}: not a validator key file ({err})") from None
    return keys


def _regular_file(path: Path, what: str) -> os.stat_result | None:
    """``stat`` of ``path`` if it is a regular file, None if absent; anything else fails."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise AuditFailure(None, f"{what} {path} is not a regular file (a FIFO, device or dir)")
    return st


_MAX_SIDE_FILE = 64 << 20  # config.json, summary.json, metrics.jsonl


def _read_json_file(path: Path, what: str):
    st = _regular_file(path, what)
    if st is None:
        return None
    if st.st_size > _MAX_SIDE_FILE:
        raise AuditFailure(None, f"{what} {path} is {st.st_size} bytes, more than 64 MiB")
    return path.read_bytes()


@dataclass
class _Round:
    number: int
    record_bytes: bytes
    record: RoundRecord
    qc: bytes
    inputs_bytes: bytes
    inputs: RoundInputs
    input_checkpoint: bytes | None
    fraud: list[tuple[bytes, bytes]]  # (digest, proof bytes), in citation order
    ledger: bytes
    checkpoint: bytes | None


class _Records:
    """A cursor over the record stream that enforces the canonical order."""

    def __init__(self, reader: TranscriptReader):
        self.reader = reader
        self.it = iter(reader)
        self.peeked = None
        self.done = False

    def peek(self):
        if self.peeked is None and not self.done:
            try:
                self.peeked = next(self.it)
            except StopIteration:
                self.done = True
        return self.peeked

    def take(self, kind: RecordKind, round_: int | None, what: str):
        rec = self.peek()
        if rec is None:
            torn = self.reader.torn_tail
            if torn is not None:
                raise _Unfinished(
                    f"the transcript ends in a torn record where {what} should follow "
                    f"({torn.reason}; a crash mid-write)"
                )
            raise _Unfinished(f"the transcript ends where {what} should follow")
        if rec.kind != kind:
            raise AuditFailure(
                round_,
                f"record seq {rec.seq} is kind {_kind_name(rec.kind)}, the canonical order "
                f"expects {what} here",
            )
        self.peeked = None
        return rec


def _kind_name(kind: int) -> str:
    try:
        return RecordKind(kind).name
    except ValueError:
        return str(kind)


class Auditor:
    def __init__(
        self,
        run_dir: str | Path,
        *,
        recompute: float = 0.0,
        seed: int | None = None,
        genesis: str | None = None,
        validators: tuple[str, ...] | None = None,
        data_dir: str | None = None,
        allow_plugins: bool = False,
        scheme=None,
        replay_from: int | None = None,
    ):
        """``replay_from``: re-execute only the checkpoint intervals that start at or
        after this round (with ``recompute`` > 0); every round is still verified (its
        QC, hashes, fraud proofs, ledger), and the state after the last round is
        complete when a checkpoint starts at or before ``replay_from``. A restarting
        validator rebuilds its state this way from its own last checkpoint instead of
        recomputing every gradient since the genesis (``pot_jax.deploy.node``)."""
        self.run_dir = Path(run_dir)
        self.scheme = scheme
        self.allow_plugins = allow_plugins
        self.replay_from = replay_from
        self.recompute = recompute
        self.seed = seed
        self.pin_genesis = genesis.lower() if genesis else None
        self.pin_validators = validators
        self.data_dir = data_dir
        self.state = None  # the state after the last complete round checked
        self.facts = None

    def run(self) -> AuditReport:
        if not self.run_dir.is_dir():
            raise AuditUsageError(f"{self.run_dir}: no such run directory")
        report = AuditReport()
        try:
            self._audit(report)
        except _Unfinished as unfinished:
            report.status = Status.UNFINISHED
            report.reason = (
                f"{unfinished}; the run has no signed closing record (interrupted, still "
                "running, or truncated)"
            )
            if (self.run_dir / "summary.json").exists():
                report.status = Status.FAILED
                report.reason = (
                    f"summary.json describes a finished run, but {unfinished} and there is "
                    "no signed closing record"
                )
        except AuditFailure as failure:
            report.status = Status.FAILED
            report.first_bad_round = failure.round
            report.reason = str(failure)
        except TranscriptError as err:
            report.status = Status.FAILED
            report.reason = f"transcript is corrupt: {err}"
        return report

    # -- header, pins, config, data ----------------------------------------------------------

    def _header(self, records: _Records, report: AuditReport) -> dict:
        rec = records.peek()
        if rec is None:
            raise _Unfinished("the transcript holds no records")
        if rec.kind != RecordKind.HEADER:
            raise AuditFailure(None, f"the first record is kind {_kind_name(rec.kind)}, not HEADER")
        records.peeked = None
        try:
            header = json.loads(rec.payload)
            genesis = header["genesis"]
            claimed = bytes.fromhex(header["genesis_digest"])
            qc = QuorumCertificate.decode(bytes.fromhex(header["genesis_qc"]))
        except (ValueError, KeyError, TypeError) as err:
            raise AuditFailure(None, f"the header is malformed: {err}") from None
        if canonical_json(header) != rec.payload:
            raise AuditFailure(None, "the header is not canonical JSON")
        if not isinstance(genesis, dict) or genesis.get("format") != GENESIS_FORMAT:
            raise AuditFailure(None, f"the genesis is not a {GENESIS_FORMAT} object")
        digest = genesis_digest(genesis)
        if digest != claimed:
            raise AuditFailure(None, "the genesis does not hash to the header's genesis digest")
        report.genesis = digest.hex()
        report.key_source = str(genesis.get("key_source", ""))
        try:
            validator_set = ValidatorSet.from_registrations(
                [(bytes.fromhex(pk), bytes.fromhex(pop)) for pk, pop in genesis["validators"]]
            )
            chain_id = bytes.fromhex(genesis["chain_id"])
        except (KeyError, TypeError, ValueError) as err:
            raise AuditFailure(None, f"the genesis validator set is invalid: {err}") from None
        report.validators = [pk.hex() for pk in validator_set.public_keys]
        if self.pin_genesis is not None:
            if self.pin_genesis != digest.hex():
                raise AuditFailure(
                    None, f"the run's genesis is {digest.hex()}, you pinned {self.pin_genesis}"
                )
            report.pinned = "--genesis"
        if self.pin_validators is not None:
            if tuple(report.validators) != tuple(self.pin_validators):
                raise AuditFailure(
                    None, "the run's validator set is not the one in the pinned --validators file"
                )
            report.pinned = report.pinned + " and --validators" if report.pinned else "--validators"
        if not verify_qc(validator_set, genesis_vote_message(chain_id, digest), qc):
            raise AuditFailure(None, "the genesis QC does not verify against its validator set")
        if report.key_source == "derived":
            report.notes.append(
                "key source 'derived': every secret key follows from the public config, so "
                "anyone could have signed every QC, fraud proof and worker message above"
            )
        # config.json must be the signed header, byte for byte after parsing.
        raw = _read_json_file(self.run_dir / "config.json", "config.json")
        if raw is None:
            report.notes.append("config.json is absent; the signed header was used")
        else:
            try:
                on_disk = json.loads(raw)
            except ValueError as err:
                raise AuditFailure(None, f"config.json is not JSON: {err}") from None
            if on_disk != header:
                fields = sorted(
                    k
                    for k in set(on_disk) | set(header)
                    if not isinstance(on_disk, dict) or on_disk.get(k) != header.get(k)
                )
                raise AuditFailure(None, f"config.json differs from the signed header in {fields}")
        self.validator_set, self.chain_id, self.genesis_hash = validator_set, chain_id, digest
        metadata = header.get("metadata")
        local = metadata.get("local") if isinstance(metadata, dict) else None
        self.data_dir_hint = local.get("data_dir") if isinstance(local, dict) else None
        return genesis

    def _config(self, genesis: dict) -> ProtocolConfig:
        try:
            raw = dict(genesis["config"])
            plugins = sorted({p for f in COMPONENT_FIELDS for p in import_paths(raw.get(f, ""))})
        except (KeyError, TypeError, ValueError) as err:
            raise AuditFailure(None, f"the signed config is invalid: {err}") from None
        if plugins and not self.allow_plugins:
            # Rebuilding them would import and call code that whoever wrote the
            # transcript chose (an unpinned genesis can name os:system).
            raise AuditUsageError(
                f"the run names plugin code {plugins}; the audit would import and run it. "
                "If you trust that code, audit with --allow-plugins"
            )
        try:
            unsigned = sorted(set(raw) & set(LOCAL_FIELDS))
            if unsigned:
                raise AuditFailure(None, f"the genesis signs local fields {unsigned}")
            # Where the data are is not signed (their digest is): --data-dir, else the
            # writer's unsigned hint.
            raw["data_dir"] = self.data_dir if self.data_dir is not None else self.data_dir_hint
            config = ProtocolConfig(**_config_fields(raw))
        except (ConfigError, KeyError, TypeError, ValueError) as err:
            raise AuditFailure(None, f"the signed config is invalid: {err}") from None
        if self.chain_id != config.chain_id.encode():
            raise AuditFailure(None, "the genesis chain id differs from its config's")
        if len(genesis.get("worker_keys", ())) != config.workers:
            raise AuditFailure(
                None,
                f"the genesis registers {len(genesis.get('worker_keys', ()))} worker keys for "
                f"{config.workers} workers",
            )
        if self.validator_set.n != config.validators:
            raise AuditFailure(
                None,
                f"the genesis registers {self.validator_set.n} validators, its config says "
                f"{config.validators}",
            )
        return config

    def _check_adversary(self, genesis: dict, config: ProtocolConfig) -> None:
        """The genesis's Byzantine workers and attack label are what its signed config makes.

        The audit counts ``honest_workers_slashed`` against the genesis's list,
        so a list the config does not choose could hide an honest worker's
        slashing (name it Byzantine) behind a quorum's signature.
        """
        chosen = list(choose_byzantine(config.workers, config.byzantine_fraction, config.seed))
        if self._byzantine != chosen:
            raise AuditFailure(
                None,
                f"the genesis names Byzantine workers {self._byzantine}; its config "
                f"(byzantine_fraction {config.byzantine_fraction}, seed {config.seed}) "
                f"chooses {chosen}",
            )
        try:
            attack = build_attack(config.attack, aggregation=config.aggregation) if chosen else None
        except ValueError as err:
            raise AuditFailure(None, f"the signed config's attack is invalid: {err}") from None
        label = None if attack is None else attack.label
        if genesis.get("attack") != label:
            raise AuditFailure(
                None,
                f"the genesis says the Byzantine workers ran {genesis.get('attack')!r}; "
                f"its config builds {label!r}",
            )

    # -- the audit ---------------------------------------------------------------------------

    def _audit(self, report: AuditReport) -> None:
        path = self.run_dir / TRANSCRIPT_NAME
        if _regular_file(path, "transcript") is None:
            raise _Unfinished(f"{path} does not exist")
        reader = TranscriptReader(path, allow_torn_tail=True)
        records = _Records(reader)
        genesis = self._header(records, report)
        config = self._config(genesis)
        try:
            worker_keys = tuple(bytes.fromhex(k) for k in genesis["worker_keys"])
            report_keys = tuple(bytes.fromhex(k) for k in genesis["validator_report_keys"])
            genesis_params = bytes.fromhex(genesis["genesis_params_hash"])
            ledger = Ledger.genesis(
                LedgerConfig(**genesis["ledger_config"]),
                n_workers=config.workers,
                n_validators=config.validators,
            )
            signatures = worker_signature_scheme(genesis["worker_signature_scheme"])
            threshold = genesis.get("tolerance_threshold") or None
            self._byzantine = [int(w) for w in genesis["byzantine_workers"]]
        except (KeyError, TypeError, ValueError, LedgerError) as err:
            raise AuditFailure(None, f"the genesis is invalid: {err}") from None
        if len(report_keys) != config.validators:
            raise AuditFailure(
                None,
                f"the genesis registers {len(report_keys)} report keys for "
                f"{config.validators} validators",
            )
        self._check_adversary(genesis, config)

        # Public data and the canonical functions, rebuilt from the signed config.
        try:
            data = load_for(config)
        except (OSError, ValueError) as err:
            raise AuditFailure(
                None, f"the run's data cannot be loaded ({err}); pass --data-dir DIR"
            ) from None
        if dataset_digest(data) != genesis.get("data_digest"):
            raise AuditFailure(None, "the data differ from the digest the genesis signed")
        assigner = BatchAssigner(config.seed, worker_shards(config, data), config.batch_size)
        learner, params0 = build_learner(config, data)
        scheme = self.scheme or make_verification(config, threshold)
        if scheme.label != genesis.get("verification"):
            # A scheme object passed to run_protocol(scheme=...) is in no registry the
            # audit can rebuild it from: without it, selections and proofs cannot be judged.
            raise AuditUsageError(
                f"the run used verification scheme {genesis.get('verification')!r}, which the "
                f"config rebuilds as {scheme.label!r}: pass the scheme object "
                "(audit(..., scheme=...)) or register it (register_scheme) and name it"
            )
        batches = Batches(assigner, data)
        rules = make_rules(
            config,
            genesis=self.genesis_hash,
            validator_set=self.validator_set,
            report_keys=report_keys,
            worker_keys=worker_keys,
            signatures=signatures,
            scheme=scheme,
            learner=learner,
            batches=batches,
        )
        like = {"opt_state": learner.optimizer.init(params0), "params": params0}
        env = _Env(config, learner, rules, batches, like)

        loaded = env.load(self._checkpoint(records, reader, None, "the genesis CHECKPOINT"), None)
        if env.digest(loaded["params"]) != genesis_params:
            raise AuditFailure(None, "the genesis checkpoint is not the genesis model")
        state = genesis_state(loaded["params"], loaded["opt_state"], genesis_params, ledger)
        self.state = state

        if self.recompute > 0 and self.recompute < 1:
            self.seed = secrets.randbits(63) if self.seed is None else self.seed
            report.sample_seed = self.seed
        intervals = -(-config.rounds // config.checkpoint_every)
        rng = _Draw(self.recompute, self.seed, intervals)

        def draw(start: int) -> bool:  # is the interval that starts at round ``start`` replayed?
            picked = rng.draw()
            return picked and (self.replay_from is None or start >= self.replay_from)

        replay = draw(0)
        self.facts = _Facts()
        accuracy_at = {0: state.params}
        r = 0
        while True:
            rec = records.peek()
            if rec is None:
                if reader.torn_tail is not None:
                    raise _Unfinished(
                        f"the transcript ends in a torn record after {r} complete rounds "
                        f"({reader.torn_tail.reason}; a crash mid-write)"
                    )
                raise _Unfinished(f"the transcript ends after {r} complete rounds")
            if rec.kind == RecordKind.CLOSING:
                break
            rnd = self._round_group(records, reader, r, config)
            outcome, qc = self._check_round(rnd, env, state, replay, report)
            state = advance(state, outcome, qc.signer_indices())
            if not replay:
                state = dataclasses.replace(state, params=None, opt_state=None)
            if rnd.checkpoint is not None:
                loaded = env.load(rnd.checkpoint, r)
                if env.digest(loaded["params"]) != outcome.record.new_params_hash:
                    raise AuditFailure(
                        r, "the checkpoint after this round is not the record's output model"
                    )
                report.checkpoints += 1
                state = dataclasses.replace(
                    state, params=loaded["params"], opt_state=loaded["opt_state"]
                )
                accuracy_at[r + 1] = loaded["params"]
                replay = draw(r + 1)
            report.rounds += 1
            r += 1
            self.state = state  # what a restarting validator resumes from (full with recompute 1)
        if not check_conservation(state.ledger):
            raise AuditFailure(None, "the ledger does not conserve value")
        self._closing(records, reader, r, state.params_hash, state.ledger, accuracy_at)
        sampled = self.recompute > 0 and self.replay_from is None
        if sampled and report.reexecuted == 0 and report.rounds:
            raise AssertionError("a sampled audit drew no interval")  # _Draw picks at least one
        self.facts.caught = sorted(state.banned)
        self._side_files(report, config, data, learner, state.ledger, accuracy_at)

    def _checkpoint(self, records, reader, r, what):
        rec = records.take(RecordKind.CHECKPOINT, r, what)
        return reader.checkpoint(rec)

    def _round_group(self, records, reader, r, config) -> _Round:
        round_rec = records.take(RecordKind.ROUND, r, f"round {r}'s ROUND record")
        try:
            record = RoundRecord.decode(round_rec.payload)
        except RecordError as err:
            raise AuditFailure(r, f"the round record is malformed: {err}") from None
        qc = records.take(RecordKind.QC, r, f"round {r}'s QC").payload
        inputs_bytes = records.take(RecordKind.INPUTS, r, f"round {r}'s INPUTS record").payload
        try:
            inputs = RoundInputs.decode(inputs_bytes)
        except MessageError as err:
            raise AuditFailure(r, f"the round's inputs are malformed: {err}") from None
        cited = cited_proofs(inputs)
        input_ckpt, fraud = None, []
        if cited:
            input_ckpt = self._checkpoint(
                records,
                reader,
                r,
                f"the CHECKPOINT of round {r}'s input model (its reports cite {len(cited)} "
                "fraud proofs)",
            )
            for v, digest in cited:
                payload = records.take(
                    RecordKind.FRAUD_PROOF, r, f"the FRAUD_PROOF validator {v} cites"
                ).payload
                try:
                    prover, proof_bytes = decode_fraud_record(payload)
                except ValueError as err:
                    raise AuditFailure(r, f"a fraud proof record is malformed: {err}") from None
                if prover != v or hashlib.sha256(proof_bytes).digest() != digest:
                    raise AuditFailure(
                        r, f"the FRAUD_PROOF record is not the one validator {v} cites"
                    )
                fraud.append((digest, proof_bytes))
        ledger = records.take(RecordKind.LEDGER, r, f"round {r}'s LEDGER record").payload
        checkpoint = None
        due = (r + 1) % config.checkpoint_every == 0
        nxt = records.peek()
        if due:
            checkpoint = self._checkpoint(records, reader, r, f"round {r}'s output CHECKPOINT")
        elif nxt is not None and nxt.kind == RecordKind.CHECKPOINT:
            # Only the final checkpoint may sit off the interval, and a closing record follows it.
            rec = records.take(RecordKind.CHECKPOINT, r, "a CHECKPOINT")
            after = records.peek()
            if after is not None and after.kind != RecordKind.CLOSING:
                raise AuditFailure(
                    r,
                    f"record seq {rec.seq}: a CHECKPOINT off the checkpoint interval that is "
                    "not the final one",
                )
            checkpoint = reader.checkpoint(rec)
        return _Round(
            r,
            round_rec.payload,
            record,
            qc,
            inputs_bytes,
            inputs,
            input_ckpt,
            fraud,
            ledger,
            checkpoint,
        )

    def _check_round(self, rnd, env, state, replay, report):
        """Re-derive the round from its inputs with ``protocol.round``; the record must match."""
        r, record = rnd.number, rnd.record
        if (record.round, record.chain_id, record.genesis) != (r, self.chain_id, self.genesis_hash):
            raise AuditFailure(
                r,
                f"record is for round {record.round} of chain {record.chain_id!r} and genesis "
                f"{record.genesis.hex()[:16]}..., not this run's",
            )
        try:
            view, seq, qc = decode_qc_record(rnd.qc)
        except ValueError as err:
            raise AuditFailure(r, f"the commit QC is malformed: {err}") from None
        value = encode_proposal(rnd.record_bytes, rnd.inputs_bytes)
        message = vote_message(self.chain_id, "commit", view, seq, value_digest(value))
        if seq != r + 1 or not verify_qc(self.validator_set, message, qc):
            raise AuditFailure(r, "the commit QC does not verify against the genesis validator set")
        if record.params_hash != state.params_hash:
            raise AuditFailure(r, "the record's input model hash is not the previous output")
        if record.inputs_digest != rnd.inputs.digest():
            raise AuditFailure(r, "the INPUTS record is not the one the round record commits to")
        if rnd.input_checkpoint is not None:
            loaded = env.load(rnd.input_checkpoint, r)
            if env.digest(loaded["params"]) != state.params_hash:
                raise AuditFailure(r, "the checkpoint before the fraud proofs is not theta_r")
            if state.params is None:
                state = dataclasses.replace(
                    state, params=loaded["params"], opt_state=loaded["opt_state"]
                )
        proofs = dict(rnd.fraud)
        try:
            j = judge(env.rules, state, rnd.inputs, proofs)
            if replay:
                outcome = transition(
                    env.rules,
                    state,
                    rnd.inputs,
                    proofs,
                    env.recompute(r, state, j),
                    judgement=j,
                )
            else:
                outcome = finish(
                    env.rules,
                    state,
                    rnd.inputs,
                    j,
                    None,
                    None,
                    new_params_hash=record.new_params_hash,
                )
        except InputsError as err:
            raise AuditFailure(r, f"the round's inputs are invalid: {err}") from None
        except _WrongGradient as err:
            raise AuditFailure(r, str(err)) from None
        if replay:
            report.reexecuted += 1
            if outcome.record.new_params_hash != record.new_params_hash:
                raise AuditFailure(
                    r, "re-executing the round does not give the record's output model"
                )
        if outcome.record.encode() != rnd.record_bytes:
            self._explain_false_proofs(r, env, state, record, j, proofs)
            raise AuditFailure(
                r, f"the record does not re-derive from its inputs: {_diff(outcome.record, record)}"
            )
        try:
            recorded = decode_entries(rnd.ledger)
        except (LedgerError, ValueError) as err:
            raise AuditFailure(r, f"the ledger entries are malformed: {err}") from None
        if encode_entries(recorded) != encode_entries(outcome.entries):
            raise AuditFailure(r, "the recorded ledger entries differ from the rewards rule")
        facts = self.facts
        facts.max_view = max(facts.max_view, view)
        by_category = Counter(
            x.category for x in record.rejected if x.category != Category.SLASHED.value
        )
        facts.rejected += sum(by_category.values())
        facts.by_category.update(by_category)
        valid = len(j.rewards.fraud_proofs)
        false = sum(1 for s in j.slashed if s.fault == Fault.FALSE_PROOF.value)
        facts.fraud_proofs += valid
        facts.false_proofs += false
        for s in j.slashed:
            facts.slashed.setdefault(str(s.validator), []).append(s.fault)
        report.fraud_proofs += len(j.cited)
        caught = len(set(state.banned) | set(j.proven))
        facts.rounds.append(
            {
                "accepted": len(record.accepted),
                "view": view,
                "fraud_proofs": valid,
                "false_fraud_proofs": false,
                "caught": caught,
                "rejected": sum(by_category.values()),
                "rejected_by_category": dict(sorted(by_category.items())),
                "slashed_validators": [[s.validator, s.fault] for s in j.slashed],
            }
        )
        return outcome, qc

    def _explain_false_proofs(self, r, env, state, record, j, proofs):
        """A record that excludes a worker with a proof that does not hold: say why it fails."""
        for x in record.rejected:
            if not x.fraud_proof_digest or x.fraud_proof_digest in j.proven.values():
                continue
            proof_bytes = proofs.get(x.fraud_proof_digest)
            why = "the transcript does not carry it"
            if proof_bytes is not None:
                try:
                    proof = FraudProof.decode(proof_bytes)
                    _, why = check_fraud_proof(
                        proof,
                        env.rules.context(r, state.params),
                        mode=env.rules.scheme.mode,
                        threshold=env.rules.scheme.threshold,
                    )
                except ValueError as err:
                    why = f"it does not decode ({err})"
            raise AuditFailure(r, f"the fraud proof against worker {x.worker} is false: {why}")

    def _closing(self, records, reader, rounds, final_hash, ledger, accuracy_at):
        rec = records.take(RecordKind.CLOSING, None, "the CLOSING record")
        try:
            closing, qc = decode_closing_record(rec.payload)
        except GenesisError as err:
            raise AuditFailure(None, f"the closing record is malformed: {err}") from None
        expected = (self.chain_id, self.genesis_hash, rounds, final_hash, ledger.ledger_digest())
        got = (
            closing.chain_id,
            closing.genesis,
            closing.rounds,
            closing.final_params_hash,
            closing.ledger_digest,
        )
        if got != expected:
            names = ("chain id", "genesis", "rounds", "final model hash", "ledger digest")
            bad = [n for n, a, b in zip(names, got, expected, strict=True) if a != b]
            raise AuditFailure(None, f"the closing record disagrees with the transcript: {bad}")
        if not verify_qc(self.validator_set, closing.vote_message(), qc):
            raise AuditFailure(None, "the closing record's QC does not verify")
        if rounds not in accuracy_at:
            raise AuditFailure(None, "the final model has no checkpoint before the closing record")
        extra = records.peek()
        if extra is not None:
            raise AuditFailure(None, f"record seq {extra.seq} follows the closing record")
        if reader.torn_tail is not None:
            raise AuditFailure(
                None,
                f"{reader.torn_tail.length} bytes follow the closing record "
                f"({reader.torn_tail.reason})",
            )

    def _side_files(self, report, config, data, learner, ledger, accuracy_at):
        """summary.json and metrics.jsonl: every claim the transcript supports must hold."""
        x_test, y_test = data.x_test, data.y_test
        accuracy_cache: dict[int, float] = {}

        def accuracy(round_: int) -> float:
            if round_ not in accuracy_cache:
                accuracy_cache[round_] = learner.accuracy(accuracy_at[round_], x_test, y_test)
            return accuracy_cache[round_]

        raw = _read_json_file(self.run_dir / "summary.json", "summary.json")
        facts = self.facts
        if raw is None:
            report.notes.append("summary.json is absent: no summary claims to check")
        else:
            try:
                summary = json.loads(raw)
                if not isinstance(summary, dict):
                    raise ValueError("not an object")
            except ValueError as err:
                raise AuditFailure(None, f"summary.json is not a JSON object: {err}") from None
            workers = sum(ledger.balance(f"worker:{i}") for i in range(config.workers))
            validators = sum(ledger.balance(f"validator:{i}") for i in range(config.validators))
            byzantine = set(self._byzantine)
            expected = {
                "rounds_committed": report.rounds,
                "cheaters_caught": sorted(facts.caught),
                "fraud_proofs": facts.fraud_proofs,
                "false_fraud_proofs": facts.false_proofs,
                "rejected_gradients": facts.rejected,
                "rejections_by_category": dict(sorted(facts.by_category.items())),
                "slashed_validators": dict(
                    sorted(facts.slashed.items(), key=lambda kv: int(kv[0]))
                ),
                "honest_workers_slashed": len(set(facts.caught) - byzantine),
                "byzantine_workers": sorted(byzantine),
                "max_view": facts.max_view,
                "ledger_emitted": ledger.total_emitted,
                "ledger_burned": ledger.total_burned,
                "worker_rewards": workers,
                "validator_rewards": validators,
                "seed": config.seed,
                "genesis": report.genesis,
                "key_source": report.key_source,
            }
            for key, value in expected.items():
                if key not in summary:
                    raise AuditFailure(None, f"summary.json lacks {key}")
                if summary[key] != value:
                    raise AuditFailure(
                        None,
                        f"summary.json claims {key} = {summary[key]!r}, the transcript gives "
                        f"{value!r}",
                    )
            claimed = summary.get("pot_accuracy")
            actual = accuracy(report.rounds)
            if not isinstance(claimed, float | int) or not math.isclose(
                claimed, actual, abs_tol=0.5 / len(y_test)
            ):
                raise AuditFailure(
                    None,
                    f"summary.json claims pot_accuracy = {claimed!r}, the final checkpoint "
                    f"scores {actual:.4f} on the signed test data",
                )
            known = {
                *expected,
                "pot_accuracy",
                "units",
                *NOT_CHECKED_SUMMARY,
            }
            unknown = sorted(set(summary) - known)
            report.not_checked.extend(f"summary.{k}" for k in NOT_CHECKED_SUMMARY if k in summary)
            report.not_checked.extend(f"summary.{k} (unknown field)" for k in unknown)
        raw = _read_json_file(self.run_dir / "metrics.jsonl", "metrics.jsonl")
        if raw is None:
            return
        checked = unchecked = 0
        for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                round_ = row["round"]
            except (ValueError, KeyError, TypeError) as err:
                raise AuditFailure(None, f"metrics.jsonl line {n} is malformed: {err}") from None
            if not isinstance(round_, int) or not 0 < round_ <= report.rounds:
                raise AuditFailure(None, f"metrics.jsonl line {n} is about round {round_!r}")
            for key, value in facts.rounds[round_ - 1].items():
                if key in row and row[key] != value:
                    raise AuditFailure(
                        None,
                        f"metrics.jsonl line {n} claims {key} = {row[key]!r} in round {round_}, "
                        f"the transcript gives {value!r}",
                    )
            if "pot_test_accuracy" not in row:
                continue
            acc = row["pot_test_accuracy"]
            if round_ not in accuracy_at:
                unchecked += 1
                continue
            if not isinstance(acc, float | int) or not math.isclose(
                acc, accuracy(round_), abs_tol=0.5 / len(y_test)
            ):
                raise AuditFailure(
                    None,
                    f"metrics.jsonl line {n} claims pot_test_accuracy {acc!r} after round "
                    f"{round_}, the checkpoint scores {accuracy(round_):.4f}",
                )
            checked += 1
        report.notes.append(
            f"metrics.jsonl: accepted, rejections by category, fraud proofs, slashed validators, "
            f"caught and view checked on every row; test "
            f"accuracy re-evaluated on {checked} rows at checkpoints, {unchecked} rows between "
            "checkpoints not re-evaluated"
        )
        if unchecked:
            report.not_checked.append("metrics accuracy between checkpoints")
        report.not_checked.append(
            "metrics: loss, recomputed, messages, centralized accuracy, wall and virtual time"
        )


@dataclass
class _Facts:
    """What the transcript says, accumulated for the summary check."""

    caught: list[int] = field(default_factory=list)
    rejected: int = 0
    by_category: Counter = field(default_factory=Counter)
    fraud_proofs: int = 0
    false_proofs: int = 0
    slashed: dict = field(default_factory=dict)
    max_view: int = 0
    rounds: list[dict] = field(default_factory=list)  # per round: what a metrics row may claim


class _Draw:
    """Which checkpoint intervals are re-executed: each with probability F, at least one."""

    def __init__(self, fraction: float, seed: int | None, intervals: int):
        rng = random.Random(seed)
        self.picks = [fraction >= 1.0 or rng.random() < fraction for _ in range(intervals)]
        if fraction > 0 and intervals and not any(self.picks):
            self.picks[rng.randrange(intervals)] = True  # "sample" never means "none"
        self.picks.reverse()

    def draw(self) -> bool:
        return self.picks.pop() if self.picks else False


class _WrongGradient(Exception):
    pass


@dataclass
class _Env:
    """The run's public inputs and canonical functions, rebuilt from the signed config."""

    config: ProtocolConfig
    learner: object
    rules: object
    batches: Batches
    like: dict

    def digest(self, params) -> bytes:
        return pytree_digest(params, self.learner.spec)

    def load(self, data: bytes, r):
        try:
            return decode_pytree(data, self.like)
        except EncodingError as err:
            raise AuditFailure(r, f"the checkpoint does not decode: {err}") from None

    def recompute(self, r: int, state, j) -> dict:
        """Every accepted worker's gradient, re-run with the honest workers' own program."""
        accepted = [a.worker for a in j.accepted]
        rows = worker_program(
            self.learner,
            state.params,
            self.batches.of_round(r),
            self.config.workers,
            accepted,
            self.config.mode,
        )
        for a in j.accepted:
            if flat_digest(self.learner.header, rows[a.worker]) != a.commitment:
                raise _WrongGradient(
                    f"accepted worker {a.worker}'s signed commitment does not match its "
                    "recomputed gradient: the committee accepted a wrong gradient"
                )
        return {w: rows[w] for w in accepted}


def _diff(derived: RoundRecord, recorded: RoundRecord) -> str:
    a, b = derived.to_json(), recorded.to_json()
    return "fields " + ", ".join(k for k in sorted(a) if a[k] != b.get(k))


def _config_fields(raw: dict) -> dict:
    """Genesis JSON back to ProtocolConfig arguments (lists back to tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def audit(
    run_dir: str | Path,
    *,
    recompute: str = "none",
    seed: int | None = None,
    genesis: str | None = None,
    validators: str | None = None,
    data_dir: str | None = None,
    allow_plugins: bool = False,
    scheme=None,
) -> AuditReport:
    """Audit ``run_dir``; see the module docstring for what is checked.

    Raises ``AuditUsageError`` when the audit cannot start (no such directory,
    a malformed pin or ``--recompute``, plugin code named by the run without
    ``allow_plugins``, a custom verification scheme not passed as ``scheme``);
    otherwise returns the report.
    """
    pins = load_validator_pin(validators) if validators else None
    if genesis is not None:
        try:
            if len(bytes.fromhex(genesis)) != 32:
                raise ValueError
        except ValueError:
            raise AuditUsageError(f"--genesis {genesis!r}: expected 64 hex digits") from None
    return Auditor(
        run_dir,
        recompute=parse_recompute(recompute),
        seed=seed,
        genesis=genesis,
        validators=pins,
        data_dir=data_dir,
        allow_plugins=allow_plugins,
        scheme=scheme,
    ).run()
