"""What one node rebuilds from the signed genesis file: the run's rules and round-0 state.

A node of a real cluster holds only public data and its own secret key. It
reads the run header that ``pot-jax up`` (or a genesis ceremony) wrote, checks
it as an auditor does (the genesis hashes to its digest, the genesis QC
verifies against the registered validator set, the embedded data hash to
what the genesis signed, the initial model hashes to the signed genesis
hash) and builds the same ``RoundRules`` the simulator and the auditor
build (``protocol.setup``). A header that fails a check is refused with the
reason (``ContextError``); a node never starts on a genesis it cannot verify.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pot_jax.config import COMPONENT_FIELDS, LOCAL_FIELDS, ConfigError, ProtocolConfig
from pot_jax.crypto.quorum import QuorumCertificate, ValidatorSet, verify_qc
from pot_jax.crypto.worker_signatures import worker_signature_scheme
from pot_jax.learning.assignment import BatchAssigner
from pot_jax.learning.encoding import pytree_digest
from pot_jax.learning.trainer import build_learner, load_for, worker_shards
from pot_jax.protocol.genesis import (
    GENESIS_FORMAT,
    canonical_json,
    dataset_digest,
    genesis_digest,
    genesis_vote_message,
)
from pot_jax.protocol.ledger import Ledger, LedgerConfig
from pot_jax.protocol.round import RoundRules, RoundState, genesis_state
from pot_jax.protocol.setup import Batches, make_rules, make_verification
from pot_jax.registry import import_paths

__all__ = ["ContextError", "RunContext", "load_context", "read_header"]


class ContextError(ValueError):
    """A genesis file a node cannot run on, with what is wrong."""


@dataclass(frozen=True)
class RunContext:
    """Everything public a node needs: the header, its config, the rules, round 0's state."""

    header: dict
    genesis: dict
    genesis_hash: bytes
    config: ProtocolConfig
    data: Any
    learner: Any
    batches: Batches
    rules: RoundRules
    state0: RoundState
    validator_set: ValidatorSet
    report_keys: tuple[bytes, ...]
    worker_keys: tuple[bytes, ...]
    byzantine_workers: tuple[int, ...]
    collusion: str

    @property
    def chain_id(self) -> bytes:
        return self.rules.chain_id


def read_header(path: str | Path) -> dict:
    """The run header (``config.json`` of a run, or the genesis file ``up`` writes)."""
    path = Path(path)
    try:
        header = json.loads(path.read_bytes())
    except OSError as err:
        raise ContextError(f"--genesis {path}: cannot read it ({err.strerror})") from None
    except ValueError as err:
        raise ContextError(f"--genesis {path}: not JSON ({err})") from None
    if not isinstance(header, dict) or not isinstance(header.get("genesis"), dict):
        raise ContextError(f"--genesis {path}: not a pot-jax run header (no 'genesis' object)")
    return header


def load_context(
    header: dict, *, data_dir: str | None = None, allow_plugins: bool = False
) -> RunContext:
    """Check ``header`` as an auditor would and build the run's rules and round-0 state."""
    genesis = header["genesis"]
    if genesis.get("format") != GENESIS_FORMAT:
        raise ContextError(f"the genesis is not a {GENESIS_FORMAT} object")
    digest = genesis_digest(genesis)
    try:
        claimed = bytes.fromhex(header["genesis_digest"])
        qc = QuorumCertificate.decode(bytes.fromhex(header["genesis_qc"]))
        validator_set = ValidatorSet.from_registrations(
            [(bytes.fromhex(pk), bytes.fromhex(pop)) for pk, pop in genesis["validators"]]
        )
        chain_id = bytes.fromhex(genesis["chain_id"])
        report_keys = tuple(bytes.fromhex(k) for k in genesis["validator_report_keys"])
        worker_keys = tuple(bytes.fromhex(k) for k in genesis["worker_keys"])
        signatures = worker_signature_scheme(genesis["worker_signature_scheme"])
        ledger_config = LedgerConfig(**genesis["ledger_config"])
        raw = dict(genesis["config"])
        byzantine = tuple(int(w) for w in genesis["byzantine_workers"])
        params_hash = bytes.fromhex(genesis["genesis_params_hash"])
    except (KeyError, TypeError, ValueError) as err:
        raise ContextError(f"the genesis is malformed: {err}") from None
    if digest != claimed:
        raise ContextError("the genesis does not hash to the header's genesis digest")
    if not verify_qc(validator_set, genesis_vote_message(chain_id, digest), qc):
        raise ContextError("the genesis QC does not verify against its validator set")
    plugins = sorted({p for f in COMPONENT_FIELDS for p in import_paths(raw.get(f, ""))})
    if plugins and not allow_plugins:
        raise ContextError(
            f"the genesis names plugin code {plugins}; a node would import and run it "
            "(pass --allow-plugins if you trust it)"
        )
    if set(raw) & set(LOCAL_FIELDS):
        raise ContextError(f"the genesis signs local fields {sorted(set(raw) & set(LOCAL_FIELDS))}")
    raw["data_dir"] = data_dir
    raw["progress"] = False
    try:
        config = ProtocolConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        )
    except (ConfigError, TypeError, ValueError) as err:
        raise ContextError(f"the signed config is invalid: {err}") from None
    if config.chain_id.encode() != chain_id:
        raise ContextError("the genesis chain id differs from its config's")
    if validator_set.n != config.validators or len(report_keys) != config.validators:
        raise ContextError(
            f"the genesis registers keys for other than {config.validators} validators"
        )
    if len(worker_keys) != config.workers:
        raise ContextError(
            f"the genesis registers {len(worker_keys)} worker keys, not {config.workers}"
        )

    data = load_for(config)
    if dataset_digest(data) != genesis.get("data_digest"):
        raise ContextError("the data differ from the digest the genesis signed (--data-dir?)")
    assigner = BatchAssigner(config.seed, worker_shards(config, data), config.batch_size)
    batches = Batches(assigner, data)
    learner, params = build_learner(config, data)
    if pytree_digest(params, learner.spec) != params_hash:
        raise ContextError("the initial model does not hash to the genesis params hash")
    scheme = make_verification(config, genesis.get("tolerance_threshold") or None)
    if scheme.label != genesis.get("verification"):
        raise ContextError(
            f"the genesis names verification {genesis.get('verification')!r}; this code builds "
            f"{scheme.label!r}"
        )
    rules = make_rules(
        config,
        genesis=digest,
        validator_set=validator_set,
        report_keys=report_keys,
        worker_keys=worker_keys,
        signatures=signatures,
        scheme=scheme,
        learner=learner,
        batches=batches,
    )
    ledger = Ledger.genesis(ledger_config, n_workers=config.workers, n_validators=config.validators)
    state0 = genesis_state(params, learner.optimizer.init(params), params_hash, ledger)
    return RunContext(
        header=header,
        genesis=genesis,
        genesis_hash=digest,
        config=config,
        data=data,
        learner=learner,
        batches=batches,
        rules=rules,
        state0=state0,
        validator_set=validator_set,
        report_keys=report_keys,
        worker_keys=worker_keys,
        byzantine_workers=byzantine,
        collusion=str(genesis.get("collusion", "none")),
    )


def header_bytes(header: dict) -> bytes:
    """The HEADER record's payload: the header in canonical JSON."""
    return canonical_json(header)
