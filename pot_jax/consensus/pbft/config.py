"""What the replicas of one run agree on (``ReplicaConfig``) and one replica's
identity (``Replica``), with the two message patterns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pot_jax.crypto.quorum import ValidatorSet, fault_tolerance, quorum_size

from ..verifier import Verifier

__all__ = ["ALL_TO_ALL", "LINEAR", "PATTERNS", "Replica", "ReplicaConfig"]

ALL_TO_ALL = "all_to_all"
LINEAR = "linear"
PATTERNS = (ALL_TO_ALL, LINEAR)


def _accept_all(value: bytes) -> bool:
    return True


@dataclass(frozen=True)
class ReplicaConfig:
    """Everything the replicas of one run agree on.

    Times are in the driver's (virtual) time units. ``window`` is the log
    size L (high watermark = low watermark + L), a multiple of
    ``checkpoint_interval`` K; PBFT's usual choice is L = 2K.
    ``validate(value) -> bool`` is the application check a backup runs on a
    proposal before it prepares it. ``supersedes(decided, pending) -> bool``
    (optional) tells the replica that once ``decided`` is executed the pending
    client request ``pending`` can never be decided usefully (a value for a
    round that already committed): it is dropped, so that it neither keeps
    the request timer running into a view change nor is proposed only to
    be refused. ``quorum_fn`` is for canary tests only.
    ``piggyback_delay`` (linear pattern only; None turns it off) bounds how
    long a held QC or checkpoint vote waits for a carrier.
    """

    chain_id: bytes
    validators: ValidatorSet
    pattern: str = ALL_TO_ALL
    checkpoint_interval: int = 8
    window: int = 16
    request_timeout: float = 8.0
    view_change_timeout: float = 8.0
    max_backoff_exponent: int = 6
    max_message_bytes: int = 16 << 20
    max_value_bytes: int = 1 << 16
    fetch_batch: int = 16
    future_buffer: int = 256
    piggyback_delay: float | None = 1.0
    validate: Callable[[bytes], bool] = _accept_all
    supersedes: Callable[[bytes, bytes], bool] | None = None
    quorum_fn: Callable[[int], int] = quorum_size

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {PATTERNS}, got {self.pattern!r}")
        if self.n < 4:
            raise ValueError(f"PBFT needs n >= 4 validators to tolerate a fault, got {self.n}")
        if self.checkpoint_interval < 1 or self.window < self.checkpoint_interval:
            raise ValueError(
                f"need 1 <= checkpoint_interval <= window, got K={self.checkpoint_interval}, "
                f"L={self.window}"
            )
        if self.window % self.checkpoint_interval:
            raise ValueError(
                f"window {self.window} must be a multiple of checkpoint_interval "
                f"{self.checkpoint_interval}"
            )
        if self.piggyback_delay is not None and not self.piggyback_delay > 0:
            raise ValueError(f"piggyback_delay must be > 0 or None, got {self.piggyback_delay}")
        q = self.quorum_fn(self.n)
        if not 1 <= q <= self.n:
            raise ValueError(f"quorum_fn({self.n}) = {q}, expected 1..{self.n}")

    @property
    def n(self) -> int:
        return self.validators.n

    @property
    def f(self) -> int:
        return fault_tolerance(self.n)

    @property
    def quorum(self) -> int:
        return self.quorum_fn(self.n)

    def primary(self, view: int) -> int:
        return view % self.n


@dataclass(frozen=True)
class Replica:
    """One validator's identity: configuration, index, secret key and signature checker."""

    config: ReplicaConfig
    index: int
    secret_key: int = field(repr=False)
    verifier: Verifier = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.config.n:
            raise ValueError(f"replica index {self.index} outside 0..{self.config.n - 1}")
        if self.verifier is None:
            object.__setattr__(self, "verifier", Verifier(self.config.validators))
