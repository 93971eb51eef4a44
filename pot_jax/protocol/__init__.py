"""The Proof-of-Training round: records, rewards ledger, transcript.

Depends on learning, crypto, consensus, network and verification.
"""

from pot_jax.protocol.audit import AuditReport, audit
from pot_jax.protocol.ledger import (
    BPS,
    BURN,
    EMISSION,
    REASONS,
    REWARD_RULES,
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
from pot_jax.protocol.records import Accepted, RecordError, Rejected, RoundRecord
from pot_jax.protocol.runner import ProtocolRun, ProtocolSummary, resume_protocol, run_protocol
from pot_jax.protocol.transcript import (
    CheckpointStore,
    Record,
    RecordKind,
    TornTail,
    TranscriptError,
    TranscriptReader,
    TranscriptWriter,
)

__all__ = [
    "BPS",
    "BURN",
    "EMISSION",
    "REASONS",
    "REWARD_RULES",
    "TOKEN",
    "Accepted",
    "AuditReport",
    "ProtocolRun",
    "ProtocolSummary",
    "audit",
    "resume_protocol",
    "run_protocol",
    "CheckpointStore",
    "Contribution",
    "FraudProofRef",
    "Ledger",
    "LedgerConfig",
    "LedgerEntry",
    "LedgerError",
    "Record",
    "RecordError",
    "RecordKind",
    "Rejected",
    "RoundRecord",
    "RoundRewards",
    "TornTail",
    "TranscriptError",
    "TranscriptReader",
    "TranscriptWriter",
    "check_conservation",
    "decode_entries",
    "encode_entries",
    "entries_digest",
    "validator_account",
    "worker_account",
]
