"""The run's trust anchors: a genesis the validators sign, and a closing record.

A transcript is only as trustworthy as the validator set that signs it, and
that set is named in the transcript itself. So the genesis (validator keys
with proofs of possession, worker keys, every config field, the ledger rules,
the genesis model hash, the data digest, the key source) is one canonical
JSON object whose digest the genesis validators sign: a quorum certificate
over ``vote_message(chain_id, "genesis", 0, 0, genesis_digest)``. Every round
record carries that digest, so no record can be moved to another genesis. An
auditor pins the genesis it trusts (``--genesis HASH`` or ``--validators
FILE``); without a pin it can only say which genesis it had to trust, as a
Certificate Transparency client trusts a log only through a key it pinned.

A finished run ends with a closing statement (rounds, final model hash,
ledger state digest, genesis digest) and a quorum certificate over it, so a
transcript cut after any round is visibly unfinished, never a shorter run
that passed.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from pot_jax.crypto.quorum import (
    QuorumCertificate,
    ValidatorSet,
    aggregate_votes,
    sign_vote,
    verify_qc,
    vote_message,
)

__all__ = [
    "CLOSING_FORMAT",
    "GENESIS_FORMAT",
    "Closing",
    "GenesisError",
    "canonical_json",
    "data_digest",
    "dataset_digest",
    "decode_closing_record",
    "encode_closing_record",
    "genesis_digest",
    "genesis_vote_message",
    "sign_statement",
]

GENESIS_FORMAT = "pot-jax/genesis/v1"
CLOSING_FORMAT = "pot-jax/closing/v1"
_GENESIS_DOMAIN = b"pot-jax/genesis/v1\x00"
_CLOSING_DOMAIN = b"pot-jax/closing/v1\x00"
_MAX_CLOSING_BYTES = 1 << 12


class GenesisError(ValueError):
    """A genesis or closing statement that is malformed or not canonical."""


def canonical_json(obj) -> bytes:
    """Sorted keys, no whitespace, ASCII: one object, one encoding."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def genesis_digest(genesis: Mapping) -> bytes:
    """SHA-256 of the canonical genesis under its domain tag; what the validators sign."""
    return hashlib.sha256(_GENESIS_DOMAIN + canonical_json(genesis)).digest()


def genesis_vote_message(chain_id: bytes, digest: bytes) -> bytes:
    return vote_message(chain_id, "genesis", 0, 0, digest)


def data_digest(arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """SHA-256 hex over named arrays (name, dtype, shape, little-endian C-order bytes)."""
    h = hashlib.sha256(b"pot-jax/data/v1\x00")
    for name, array in arrays:
        a = np.ascontiguousarray(array)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        head = canonical_json([name, a.dtype.str, list(a.shape)])
        h.update(struct.pack(">I", len(head)) + head)
        h.update(a.tobytes())
    return h.hexdigest()


def dataset_digest(data) -> str:
    """``data_digest`` of a ``Dataset``'s four arrays: what the genesis binds."""
    return data_digest(
        [
            ("x_train", data.x_train),
            ("y_train", data.y_train),
            ("x_test", data.x_test),
            ("y_test", data.y_test),
        ]
    )


def sign_statement(
    validator_set: ValidatorSet, signers: Mapping[int, int], message: bytes
) -> QuorumCertificate:
    """Each validator in ``signers`` ({index: its own secret key}) signs; one QC of them all.

    Raises ValueError when fewer than a quorum sign: more than f validators
    are faulty and nothing can be certified.
    """
    if len(signers) < validator_set.quorum:
        raise ValueError(
            f"only {len(signers)} of {validator_set.n} validators sign, a quorum is "
            f"{validator_set.quorum}: more than f validators are faulty"
        )
    votes = {i: sign_vote(sk, message) for i, sk in signers.items()}
    qc = aggregate_votes(validator_set, votes)
    if not verify_qc(validator_set, message, qc):
        raise ValueError("a validator's signature does not verify against its registered key")
    return qc


@dataclass(frozen=True)
class Closing:
    """What the committee signs when a run ends."""

    chain_id: bytes
    genesis: bytes
    rounds: int
    final_params_hash: bytes
    ledger_digest: bytes

    def encode(self) -> bytes:
        return canonical_json(
            {
                "format": CLOSING_FORMAT,
                "chain_id": self.chain_id.hex(),
                "genesis": self.genesis.hex(),
                "rounds": self.rounds,
                "final_params_hash": self.final_params_hash.hex(),
                "ledger_digest": self.ledger_digest.hex(),
            }
        )

    def digest(self) -> bytes:
        return hashlib.sha256(_CLOSING_DOMAIN + self.encode()).digest()

    def vote_message(self) -> bytes:
        return vote_message(self.chain_id, "closing", 0, self.rounds, self.digest())

    @classmethod
    def decode(cls, data: bytes) -> Closing:
        if len(data) > _MAX_CLOSING_BYTES:
            raise GenesisError(f"closing statement is {len(data)} bytes, at most 4096 allowed")
        try:
            obj = json.loads(data.decode("ascii"))
            if obj.get("format") != CLOSING_FORMAT:
                raise GenesisError(f"closing statement format {obj.get('format')!r}")
            rounds = obj["rounds"]
            if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
                raise GenesisError(f"closing statement rounds = {rounds!r}")
            closing = cls(
                chain_id=bytes.fromhex(obj["chain_id"]),
                genesis=bytes.fromhex(obj["genesis"]),
                rounds=rounds,
                final_params_hash=bytes.fromhex(obj["final_params_hash"]),
                ledger_digest=bytes.fromhex(obj["ledger_digest"]),
            )
        except GenesisError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
            raise GenesisError(f"closing statement is malformed: {err}") from None
        if closing.encode() != data:
            raise GenesisError("closing statement is not in canonical form")
        return closing


def encode_closing_record(closing: Closing, qc: QuorumCertificate) -> bytes:
    """CLOSING record payload: u32 length | statement | QC encoding."""
    statement = closing.encode()
    return struct.pack(">I", len(statement)) + statement + qc.encode()


def decode_closing_record(payload: bytes) -> tuple[Closing, QuorumCertificate]:
    if len(payload) < 4:
        raise GenesisError(f"closing record is {len(payload)} bytes, needs at least 4")
    (n,) = struct.unpack(">I", payload[:4])
    if n > len(payload) - 4:
        raise GenesisError(f"closing record claims a {n}-byte statement in {len(payload)} bytes")
    closing = Closing.decode(payload[4 : 4 + n])
    try:
        qc = QuorumCertificate.decode(payload[4 + n :])
    except ValueError as err:
        raise GenesisError(f"closing record's QC is malformed: {err}") from None
    return closing, qc
