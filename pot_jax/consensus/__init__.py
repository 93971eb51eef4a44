"""PBFT consensus as a sans-IO state machine with BLS quorum certificates.

See ``pot_jax.consensus.pbft`` for the protocol and its guarantees.
"""

from .evidence import EquivocationEvidence, verify_evidence
from .keys import simulation_keys
from .messages import (
    Cert,
    Decided,
    Fetch,
    MalformedMessage,
    NewView,
    PreparedProof,
    PrePrepare,
    ViewChange,
    Vote,
    decode_message,
    encode_message,
    value_digest,
)
from .pbft import (
    ALL_TO_ALL,
    LINEAR,
    Decision,
    Deliver,
    Dropped,
    DurableState,
    Replica,
    ReplicaConfig,
    ReplicaState,
    Send,
    SetTimer,
    StepResult,
    Submit,
    TimerExpired,
    durable_state,
    initial_state,
    recover,
    step,
)
from .verifier import Verifier

__all__ = [
    "ALL_TO_ALL",
    "LINEAR",
    "Cert",
    "Decided",
    "Decision",
    "Deliver",
    "Dropped",
    "DurableState",
    "EquivocationEvidence",
    "Fetch",
    "MalformedMessage",
    "NewView",
    "PrePrepare",
    "PreparedProof",
    "Replica",
    "ReplicaConfig",
    "ReplicaState",
    "Send",
    "SetTimer",
    "StepResult",
    "Submit",
    "TimerExpired",
    "Verifier",
    "ViewChange",
    "Vote",
    "decode_message",
    "durable_state",
    "encode_message",
    "initial_state",
    "recover",
    "simulation_keys",
    "step",
    "value_digest",
    "verify_evidence",
]
