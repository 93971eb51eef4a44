"""Safety and liveness checks over a cluster's records.

Honest nodes are those not marked faulty (Byzantine strategy, twin identity,
or restarted with amnesia). The checks:

* agreement: no two honest nodes decide different digests for a sequence;
* integrity: each honest node decides sequences 1, 2, 3, ... in order, once;
* validity: a decided non-null value was proposed on the wire and passes the
  application check;
* QC soundness: every certificate an honest node holds (decisions, prepared
  certificates, its stable checkpoint) has at least a quorum of distinct
  signers and a valid aggregate signature (a certificate of collected votes:
  every vote valid).

The checker verifies with a verifier of its own whose memo only it fills,
never the replicas' (possibly shared) memo: a checker that read a memo
poisoned by an unsound replica check would certify exactly what it should
catch (``test_checker_does_not_trust_a_poisoned_shared_memo``).
"""

from __future__ import annotations

from pot_jax.consensus.messages import CHECKPOINT, COMMIT, PREPARE
from pot_jax.consensus.verifier import Verifier
from pot_jax.crypto.quorum import vote_message

from .cluster import Cluster

__all__ = ["SafetyChecker", "undecided"]


class SafetyChecker:
    """Checks the invariants incrementally (certificates are verified once each)."""

    def __init__(self, cluster: Cluster, memo: dict | None = None) -> None:
        """``memo`` (the replicas' memo, which older callers pass) is deliberately unused."""
        del memo
        self.cluster = cluster
        self.verifier = Verifier(cluster.config.validators)
        self.checked: set = set()

    def violations(self) -> list[str]:
        out: list[str] = []
        cluster = self.cluster
        first: dict[int, tuple[bytes, int]] = {}
        for node in cluster.honest():
            for k, d in enumerate(node.decisions):
                if d.seq != k + 1:
                    out.append(
                        f"integrity: node {node.id} decided seq {d.seq} as its decision #{k + 1}"
                    )
                    break
            for d in node.decisions:
                seen = first.setdefault(d.seq, (d.digest, node.id))
                if seen[0] != d.digest:
                    out.append(
                        f"agreement: seq {d.seq} decided {seen[0].hex()[:12]} by node {seen[1]} "
                        f"and {d.digest.hex()[:12]} by node {node.id}"
                    )
                if d.value is not None:
                    if d.digest not in cluster.proposals:
                        out.append(f"validity: node {node.id} decided a value never proposed")
                    elif not cluster.validate(d.value):
                        out.append(f"validity: node {node.id} decided a value the app rejects")
            out += self._qc_soundness(node)
        return out

    def _cert_ok(self, kind: str, view: int, seq: int, digest: bytes, cert) -> bool:
        c = self.cluster.config
        msg = vote_message(c.chain_id, kind, view, seq, digest)
        if cert.qc is not None:
            key = (msg, cert.qc.signature, cert.qc.signers)
            if key not in self.checked:
                if not self.verifier.verify_qc(msg, cert.qc, c.quorum):
                    return False
                self.checked.add(key)
            return True
        votes = cert.votes or {}
        key = (msg, tuple(sorted(votes.items())))
        if key not in self.checked:
            if len(votes) < c.quorum or not all(self.verifier.verify_votes(msg, votes).values()):
                return False
            self.checked.add(key)
        return True

    def _qc_soundness(self, node) -> list[str]:
        out = []
        st = node.state
        for s, cert in st.ledger.items():
            if not self._cert_ok(COMMIT, cert.view, s, cert.digest, cert):
                out.append(f"qc soundness: node {node.id} holds a bad commit certificate for {s}")
        for s, cert in st.prepared.items():
            if not self._cert_ok(PREPARE, cert.view, s, cert.digest, cert):
                out.append(f"qc soundness: node {node.id} holds a bad prepare certificate for {s}")
        cp = st.stable
        if cp.seq > 0 and not self._cert_ok(CHECKPOINT, 0, cp.seq, cp.digest, cp):
            out.append(f"qc soundness: node {node.id} holds a bad checkpoint certificate")
        return out


def undecided(cluster: Cluster, digests=None) -> dict[int, set[bytes]]:
    """For each honest node that is up, the submitted digests it has not decided."""
    wanted = set(cluster.submitted if digests is None else digests)
    out = {}
    for node in cluster.honest():
        if node.up:
            missing = wanted - cluster.decided_digests(node)
            if missing:
                out[node.id] = missing
    return out
