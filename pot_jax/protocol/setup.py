"""What a run's signed config determines, built one way for the runner and the auditor.

``make_verification`` builds the configured scheme and rule from the
registries; ``Batches`` serves each worker's public batch of a round;
``make_rules`` assembles the ``RoundRules`` that ``protocol.round`` runs on.
"""

from __future__ import annotations

from pot_jax.crypto.quorum import ValidatorSet
from pot_jax.learning.assignment import BatchAssigner
from pot_jax.protocol.round import RoundRules

__all__ = ["Batches", "make_rules", "make_verification"]


def make_verification(config, threshold: float | None = None):
    """The configured scheme and rule (registries; ``threshold``: tolerance mode's)."""
    from pot_jax.learning.aggregation import RULES
    from pot_jax.verification.schemes import SCHEMES

    rule = RULES.build(config.aggregation, flag="--aggregation")
    extra = {"budget": config.budget, "mode": config.mode, "aggregation": rule}
    if config.mode == "tolerance":
        extra["threshold"] = threshold
    return SCHEMES.build(config.verification, flag="--verification", **extra)


class Batches:
    """``(round, worker) -> (x_B, y_B)``, each worker's public batch; the last round cached."""

    def __init__(self, assigner: BatchAssigner, data):
        self.assigner, self.data = assigner, data
        self._round, self._cache = None, {}

    def __call__(self, round_: int, worker: int):
        if round_ != self._round:
            self._round, self._cache = round_, {}
        if worker not in self._cache:
            idx = self.assigner.indices(round_, worker)
            self._cache[worker] = (self.data.x_train[idx], self.data.y_train[idx])
        return self._cache[worker]

    def of_round(self, round_: int):
        return lambda worker: self(round_, worker)


def make_rules(
    config,
    *,
    genesis: bytes,
    validator_set: ValidatorSet,
    report_keys,
    worker_keys,
    signatures,
    scheme,
    learner,
    batches: Batches,
) -> RoundRules:
    return RoundRules(
        chain_id=config.chain_id.encode(),
        genesis=genesis,
        n_workers=config.workers,
        batch_size=config.batch_size,
        validator_set=validator_set,
        report_keys=tuple(report_keys),
        worker_keys=tuple(worker_keys),
        scheme=scheme,
        learner=learner,
        batch_of=batches,
        signatures=signatures,
    )
