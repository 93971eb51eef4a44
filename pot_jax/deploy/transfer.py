"""State transfer: a validator too far behind adopts its peers' certified state.

A validator that was down re-derives each round it missed from the round's
gradients (``deploy.node``), which its peers keep for ``history_rounds``
rounds only, and which take it about as long to fetch and check as the
cluster takes to commit them. A validator further behind than that
(``transfer_after`` rounds, or its peers' history) adopts instead, from a
checkpoint round ``target`` at most as far as the committed values it holds
reach:

* **The records** of every round it missed come from the committed values its
  PBFT replica already holds, each certified by its commit QC (2f + 1 BLS
  votes of the genesis validator set). It re-derives every field of each
  record, the ledger entries and the slashes from the certified inputs, as
  the auditor does for a round it does not re-execute (``protocol.round.judge``
  and ``finish``); only each round's output model hash is taken from the
  record, and the chain of model hashes must hold.
* **The models** at every checkpoint round in between (the transcript stores
  one every ``checkpoint_every`` rounds) and the input model of every round
  whose reports cite fraud proofs come from the peers as checkpoint bytes
  (``wire.STATE``). A checkpoint is kept only if its parameters hash to the
  model hash the certified records give for that round *and* f + 1
  validators sent the same bytes: the QCs certify the parameters but not the
  optimizer state, and f + 1 identical copies include an honest validator's.
* **The fraud proofs** the certified inputs cite come from the peers too, each
  kept only if its SHA-256 is the cited digest and its prover the citing
  validator.

What a Byzantine peer can do: withhold (the request goes to every peer on the
next retry), send a model that is not the committed one, proofs nobody cited
or a state for a round nobody asked for (each dropped with its reason), or an
optimizer state of its own (never f + 1 times). The transcript the validator
writes holds the same records as its peers'; ``pot-jax audit --recompute all``
re-executes them from the data.
"""

from __future__ import annotations

import dataclasses
import hashlib

from pot_jax.learning.encoding import EncodingError, decode_pytree, pytree_digest
from pot_jax.protocol.messages import RoundInputs, decode_proposal
from pot_jax.protocol.records import RoundRecord
from pot_jax.protocol.round import InputsError, cited_proofs, finish, judge
from pot_jax.protocol.transcript import decode_fraud_record

__all__ = ["Round", "StateTransfer", "TransferError"]


class TransferError(ValueError):
    """Certified rounds that do not follow from this validator's state (say which and why)."""


@dataclasses.dataclass(frozen=True)
class Round:
    """One committed round to adopt: its decision and what its certified value holds."""

    decision: object  # pbft Decision (seq, view, digest, value)
    record: RoundRecord
    record_bytes: bytes
    inputs: RoundInputs
    cited: dict  # proof digest -> the validators that cite it


class StateTransfer:
    """What a validator behind by rounds ``start .. target - 1`` must fetch, and what it got.

    ``decisions``: the committed decisions of those rounds, in order (one per
    round). ``f``: the validators that may be Byzantine. ``like``: the
    checkpoint pytree's shape (``{"opt_state": ..., "params": ...}``);
    ``spec``: the learner's parameter spec (for the model hash).
    """

    def __init__(self, start, target, decisions, *, checkpoint_every, f, like, spec):
        if not start < target:
            raise TransferError(f"nothing to adopt between round {start} and round {target}")
        decisions = [d for d in decisions if d.value is not None]
        if len(decisions) < target - start:
            raise TransferError(
                f"{len(decisions)} committed values for rounds {start}..{target - 1}"
            )
        self.start, self.target, self.f = start, target, f
        self.like, self.spec = like, spec
        self.rounds: dict[int, Round] = {}
        for r, d in zip(range(start, target), decisions, strict=False):
            record_bytes, inputs_bytes = decode_proposal(d.value)
            record = RoundRecord.decode(record_bytes)
            if record.round != r or d.seq != r + 1:
                raise TransferError(
                    f"the committed value of sequence {d.seq} is round {record.round}, "
                    f"expected round {r}"
                )
            inputs = RoundInputs.decode(inputs_bytes)
            cited: dict[bytes, set[int]] = {}
            for v, digest in cited_proofs(inputs):
                cited.setdefault(digest, set()).add(v)
            self.rounds[r] = Round(d, record, record_bytes, inputs, cited)
        # The state of each of these rounds must come as checkpoint bytes: the checkpoint
        # rounds the transcript stores, the input model of rounds citing proofs, the target.
        self.needed = {
            k for k in range(start + 1, target + 1) if k % checkpoint_every == 0 or k == target
        } | {r for r, rnd in self.rounds.items() if rnd.cited}
        # round -> validator -> the SHA-256 of the bytes it sent; the bytes once per digest
        # (honest copies are identical: n peers answering cost one copy, not n).
        self.offers: dict[int, dict[int, bytes]] = {}
        self.copies: dict[int, dict[bytes, bytes]] = {}
        self.checkpoints: dict[int, bytes] = {}  # round -> bytes f + 1 validators sent
        self.proofs: dict[int, dict[bytes, bytes]] = {r: {} for r in self.rounds}
        self.asked: set[int] = set()
        self.attempt = 0

    def expected_hash(self, k: int) -> bytes:
        """The model hash of round ``k``'s state, as the certified records say."""
        if k in self.rounds:
            return self.rounds[k].record.params_hash
        return self.rounds[k - 1].record.new_params_hash

    def wanted(self) -> list[int]:
        """Rounds whose checkpoint or cited proofs are still missing, in order."""
        return sorted(
            k
            for k in self.needed
            if k not in self.checkpoints
            or (k in self.rounds and len(self.proofs[k]) < len(self.rounds[k].cited))
        )

    def complete(self) -> bool:
        return not self.wanted()

    def offer(self, validator: int, k: int, checkpoint: bytes, proofs: list[bytes]) -> list[str]:
        """Take validator ``validator``'s answer for round ``k``; the reasons for what was not
        kept (empty: all of it was)."""
        if k not in self.needed:
            return [f"state for round {k}, which this transfer does not need"]
        dropped = []
        if checkpoint and k not in self.checkpoints:
            why = self._check(k, checkpoint)
            if why is not None:
                dropped.append(why)
            else:
                digest = hashlib.sha256(checkpoint).digest()
                self.offers.setdefault(k, {})[validator] = digest
                self.copies.setdefault(k, {}).setdefault(digest, checkpoint)
                # Identical bytes from f + 1 validators: the optimizer state agrees too.
                if sum(1 for d in self.offers[k].values() if d == digest) >= self.f + 1:
                    self.checkpoints[k] = checkpoint
                    del self.copies[k]
        rnd = self.rounds.get(k)
        for payload in proofs:
            try:
                prover, proof = decode_fraud_record(payload)
            except ValueError as err:
                dropped.append(f"state: a fraud proof record that does not decode ({err})")
                continue
            digest = hashlib.sha256(proof).digest()
            if rnd is None or prover not in rnd.cited.get(digest, ()):
                dropped.append("state: a fraud proof the round's certified inputs do not cite")
                continue
            self.proofs[k][digest] = proof
        return dropped

    def _check(self, k: int, data: bytes) -> str | None:
        try:
            loaded = decode_pytree(data, self.like)
        except EncodingError as err:
            return f"state: a checkpoint that does not decode ({err})"
        if pytree_digest(loaded["params"], self.spec) != self.expected_hash(k):
            return "state: a checkpoint whose model is not the committed one of its round"
        return None

    def load(self, k: int) -> dict:
        return decode_pytree(self.checkpoints[k], self.like)

    def derive(self, rules, state, qc_of):
        """Each round's ``(round, outcome, proofs, judged state, qc)`` from ``state`` (of
        round ``start``), without gradients; ``qc_of(decision)`` is a decision's commit QC.
        Raises ``TransferError`` if a certified record does not re-derive. Nothing is
        written here: a failure leaves the validator as it was."""
        from pot_jax.protocol.round import advance

        if not self.start <= state.round < self.target:
            raise TransferError(
                f"the transfer covers rounds {self.start}..{self.target - 1}, not {state.round}"
            )
        out = []
        for r in range(state.round, self.target):  # (it may have re-derived some meanwhile)
            rnd = self.rounds[r]
            if rnd.record.params_hash != state.params_hash:
                raise TransferError(f"round {r}: its input model is not round {r - 1}'s output")
            if rnd.cited:  # the proofs are checked against the input model
                loaded = self.load(r)
                state = dataclasses.replace(
                    state, params=loaded["params"], opt_state=loaded["opt_state"]
                )
            proofs = dict(self.proofs[r])
            try:
                j = judge(rules, state, rnd.inputs, proofs)
                outcome = finish(
                    rules,
                    state,
                    rnd.inputs,
                    j,
                    None,
                    None,
                    new_params_hash=rnd.record.new_params_hash,
                )
            except InputsError as err:
                raise TransferError(f"round {r}: its certified inputs are invalid: {err}") from None
            if outcome.record.encode() != rnd.record_bytes:
                raise TransferError(f"round {r}: the certified record does not re-derive")
            qc = qc_of(rnd.decision)
            out.append((r, outcome, proofs, state, qc))
            state = advance(state, outcome, qc.signer_indices())
            state = dataclasses.replace(state, params=None, opt_state=None)
        return out
