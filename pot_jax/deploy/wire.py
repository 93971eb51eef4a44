"""The messages nodes of a real cluster exchange, in one envelope.

Every message on a stream is one kind byte followed by its body:

* ``PBFT``: a consensus message (``consensus.messages``), validator to validator.
* ``SUBMISSION``: the round (u64) and a worker's signed submission
  (``protocol.messages.encode_submission``), worker host to validator.
* ``REPORT``: a validator's signed ``ReportMessage``, validator to validator.
* ``ANNOUNCE``: "round r starts from the model with hash h", signed with the
  validator's Ed25519 report key, validator to worker host. A worker host
  trains only on a model that f + 1 validators announced (at least one of
  them honest), so no single validator can feed it a model of its own.
* ``MODEL_REQUEST`` / ``MODEL``: a worker host asks one announcer for the
  model's bytes; it keeps them only if they hash to the announced hash.
* ``GRADIENT_REQUEST`` / ``GRADIENT``: a validator that lacks the gradient of
  a worker its peers accepted (the submission reached it after its deadline)
  asks its peers for it; the answer is the worker's signed submission, kept
  only if it hashes to a commitment some validator's signed report saw.
* ``REPORTS_REQUEST``: a validator committing a round it missed asks for the
  round's signed reports (with the fraud proofs they cite); peers answer
  with ``REPORT`` messages from the rounds they keep.
* ``STATE_REQUEST`` / ``STATE``: a validator too far behind to re-derive the
  rounds it missed (state transfer, ``deploy.node``) asks for a peer's
  checkpoint of round r's state and the fraud proofs round r's records
  carry; the answer is kept only if the checkpoint's model hashes to what
  the committed records say and f + 1 validators sent the same bytes, and
  each proof only if its digest is one the committed inputs cite.
* ``CLOSING_VOTE``: a validator's BLS signature over the run's closing
  statement (``protocol.genesis.Closing``); any quorum of them is the
  closing record's QC.

Decoding never trusts a length it has not checked: malformed bytes raise
``WireError`` with what was wrong; the node drops the message, counts the
reason and keeps running.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "ANNOUNCE",
    "CLOSING_VOTE",
    "MODEL",
    "MODEL_REQUEST",
    "PBFT",
    "REPORT",
    "SUBMISSION",
    "Announce",
    "WireError",
    "decode",
    "encode",
]

PBFT, SUBMISSION, REPORT, ANNOUNCE, MODEL_REQUEST, MODEL, CLOSING_VOTE = range(1, 8)
GRADIENT_REQUEST, GRADIENT, REPORTS_REQUEST = 8, 9, 10
STATE_REQUEST, STATE = 11, 12
KIND_NAMES = {
    PBFT: "pbft",
    SUBMISSION: "submission",
    REPORT: "report",
    ANNOUNCE: "announce",
    MODEL_REQUEST: "model_request",
    MODEL: "model",
    CLOSING_VOTE: "closing_vote",
    GRADIENT_REQUEST: "gradient_request",
    GRADIENT: "gradient",
    REPORTS_REQUEST: "reports_request",
    STATE_REQUEST: "state_request",
    STATE: "state",
}
_ANNOUNCE_TAG = b"pot-jax/announce/v1\n"


class WireError(ValueError):
    """Bytes that are not a well-formed envelope, with what is wrong."""


@dataclass(frozen=True)
class Announce:
    """Validator ``validator`` says round ``round`` starts from the model hashing to ``params_hash``.

    ``round == rounds`` (the run's length) announces the end of the run.
    """

    round: int
    params_hash: bytes
    validator: int
    signature: bytes = b""

    def signing_message(self, chain_id: bytes, genesis: bytes) -> bytes:
        return b"".join(
            (
                _ANNOUNCE_TAG,
                struct.pack(">H", len(chain_id)),
                chain_id,
                genesis,
                struct.pack(">QI", self.round, self.validator),
                self.params_hash,
            )
        )


def encode(kind: int, body: bytes) -> bytes:
    return bytes((kind,)) + body


def decode(data: bytes) -> tuple[int, bytes]:
    if not data:
        raise WireError("empty message")
    kind = data[0]
    if kind not in KIND_NAMES:
        raise WireError(f"unknown message kind {kind}")
    return kind, data[1:]


def _take(body: bytes, pos: int, n: int, what: str) -> tuple[bytes, int]:
    if pos + n > len(body):
        raise WireError(f"{what} is truncated")
    return body[pos : pos + n], pos + n


def round_body(round_: int, payload: bytes) -> bytes:
    """A round number (u64) in front of ``payload`` (submissions, model requests)."""
    return struct.pack(">Q", round_) + payload


def split_round(body: bytes, what: str) -> tuple[int, bytes]:
    head, _ = _take(body, 0, 8, what)
    return struct.unpack(">Q", head)[0], body[8:]


def encode_announce(a: Announce) -> bytes:
    if len(a.params_hash) != 32 or len(a.signature) > 255:
        raise WireError("an announce carries a 32-byte hash and a signature of at most 255 bytes")
    return encode(
        ANNOUNCE,
        struct.pack(">QI", a.round, a.validator)
        + a.params_hash
        + bytes((len(a.signature),))
        + a.signature,
    )


def decode_announce(body: bytes) -> Announce:
    head, pos = _take(body, 0, 12, "announce")
    round_, validator = struct.unpack(">QI", head)
    params_hash, pos = _take(body, pos, 32, "announce")
    n, pos = _take(body, pos, 1, "announce")
    signature, pos = _take(body, pos, n[0], "announce")
    if pos != len(body):
        raise WireError(f"announce has {len(body) - pos} trailing bytes")
    return Announce(round_, params_hash, validator, signature)


def encode_model(round_: int, params_hash: bytes, params: bytes) -> bytes:
    return encode(MODEL, struct.pack(">Q", round_) + params_hash + params)


def decode_model(body: bytes) -> tuple[int, bytes, bytes]:
    head, pos = _take(body, 0, 40, "model")
    return struct.unpack(">Q", head[:8])[0], head[8:], body[pos:]


def encode_closing_vote(validator: int, signature: bytes) -> bytes:
    return encode(CLOSING_VOTE, struct.pack(">I", validator) + signature)


def decode_closing_vote(body: bytes) -> tuple[int, bytes]:
    head, pos = _take(body, 0, 4, "closing vote")
    signature = body[pos:]
    if len(signature) != 96:
        raise WireError(f"closing vote signature of {len(signature)} bytes, expected 96")
    return struct.unpack(">I", head)[0], signature


def encode_state(round_: int, checkpoint: bytes, proofs: list[bytes]) -> bytes:
    """A peer's checkpoint of round ``round_``'s state (b"" if it holds none) and the
    FRAUD_PROOF record payloads of round ``round_``."""
    parts = [struct.pack(">QI", round_, len(proofs))]
    for p in proofs:
        parts += [struct.pack(">I", len(p)), p]
    return encode(STATE, b"".join(parts) + checkpoint)


def decode_state(body: bytes) -> tuple[int, bytes, list[bytes]]:
    head, pos = _take(body, 0, 12, "state")
    round_, count = struct.unpack(">QI", head)
    proofs = []
    for _ in range(count):
        size, pos = _take(body, pos, 4, "state proof length")
        proof, pos = _take(body, pos, struct.unpack(">I", size)[0], "state proof")
        proofs.append(proof)
    return round_, body[pos:], proofs
