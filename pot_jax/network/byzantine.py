"""Byzantine validator behaviours as small composable strategies.

A ``Strategy`` is a record of three functions (the optax shape):
``outgoing(node, sends, cluster) -> sends`` rewrites what the node's honest
replica logic wants to send, ``incoming(node, src, data, cluster) -> bool``
decides whether the honest logic sees a message (and may record it), and
``act(node, cluster) -> sends`` does something unprompted when the driver
lets the node act. ``compose`` chains strategies. A Byzantine node holds its
validator's secret key, so it can sign anything; it cannot sign for others.
``role`` holds behaviours of the validator's Proof-of-Training role (what it
reports, what its aggregation server proposes; ``pot_jax.protocol.behaviours``
registers them here); a strategy with only a role runs honest PBFT.

*Twins* (two nodes sharing one identity and key) is not a strategy but a
node layout: see ``twins``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pot_jax.consensus.messages import (
    COMMIT,
    PREPARE,
    VIEW_CHANGE,
    Bundle,
    Cert,
    Decided,
    MalformedMessage,
    PrePrepare,
    ViewChange,
    Vote,
    bundle_parts,
    decode_message,
    encode_message,
    view_change_digest,
)
from pot_jax.consensus.pbft import Replica, Send
from pot_jax.crypto import bls
from pot_jax.crypto.quorum import QuorumCertificate, sign_vote, vote_message
from pot_jax.registry import Registry

from .cluster import Cluster, Node

__all__ = [
    "Strategy",
    "cancelling_votes",
    "compose",
    "double_voting",
    "equivocating_primary",
    "forged_bitmaps",
    "garbage",
    "invalid_signatures",
    "replay_old_qcs",
    "silent",
    "twins",
    "view_change_spam",
    "STRATEGIES",
]


def _pass_out(node: Node, sends: list[Send], cluster: Cluster) -> list[Send]:
    return sends


def _pass_in(node: Node, src: int, data: bytes, cluster: Cluster) -> bool:
    return True


def _no_act(node: Node, cluster: Cluster) -> list[Send]:
    return []


@dataclass(frozen=True)
class Strategy:
    name: str = "honest"
    outgoing: Callable[[Node, list[Send], Cluster], list[Send]] = _pass_out
    incoming: Callable[[Node, int, bytes, Cluster], bool] = _pass_in
    act: Callable[[Node, Cluster], list[Send]] = _no_act
    runs_timers: bool = True
    role: tuple = ()  # protocol-role behaviours (pot_jax.protocol.behaviours)

    @property
    def acts(self) -> bool:
        """Whether ``act`` does anything: a driver then lets the node act now and then."""
        return self.act is not _no_act


def compose(*strategies: Strategy) -> Strategy:
    """Apply ``outgoing`` rewrites in order; a message passes ``incoming`` if all pass it."""

    def outgoing(node, sends, cluster):
        for s in strategies:
            sends = s.outgoing(node, sends, cluster)
        return sends

    def incoming(node, src, data, cluster):
        return all(s.incoming(node, src, data, cluster) for s in strategies)

    def act(node, cluster):
        return [x for s in strategies for x in s.act(node, cluster)]

    return Strategy(
        "+".join(s.name for s in strategies),
        outgoing,
        incoming,
        act if any(s.acts for s in strategies) else _no_act,
        all(s.runs_timers for s in strategies),
        tuple(r for s in strategies for r in s.role),
    )


def _decode(data: bytes):
    try:
        return decode_message(data)
    except MalformedMessage:
        return None


def _sign(node: Node, kind: str, view: int, seq: int, digest: bytes) -> bytes:
    c = node.replica.config
    return sign_vote(node.replica.secret_key, vote_message(c.chain_id, kind, view, seq, digest))


def _halves(node: Node, cluster: Cluster) -> tuple[list[int], list[int]]:
    others = sorted({x.identity for x in cluster.nodes if x.identity != node.identity})
    return others[: len(others) // 2], others[len(others) // 2 :]


def silent() -> Strategy:
    """Crash-like: sends nothing and ignores everything."""
    return Strategy(
        "silent",
        outgoing=lambda node, sends, cluster: [],
        incoming=lambda node, src, data, cluster: False,
        runs_timers=False,
    )


def equivocating_primary(suffix: bytes = b"'") -> Strategy:
    """As primary, send one value to half the replicas and another (value + suffix) to the rest."""

    def outgoing(node, sends, cluster):
        out = []
        for s in sends:
            m = _decode(s.data) if s.data[:1] == b"\x01" else None
            if not isinstance(m, PrePrepare) or s.dest is not None:
                out.append(s)
                continue
            fork = (m.value or b"") + suffix
            forked = PrePrepare(m.view, m.seq, fork, b"")
            forked = dataclasses.replace(
                forked, signature=_sign(node, PREPARE, m.view, m.seq, forked.digest)
            )
            first, second = _halves(node, cluster)
            out += [Send(i, s.data) for i in first]
            out += [Send(i, encode_message(forked)) for i in second]
        return out

    return Strategy("equivocating-primary", outgoing=outgoing)


def double_voting(*, split: bool = False) -> Strategy:
    """Sign a second, different digest for every prepare/commit vote it casts.

    Each recipient gets both votes (so it can prove the equivocation), or with
    ``split`` half the recipients get one and half the other.
    """

    def outgoing(node, sends, cluster):
        out = []
        for s in sends:
            m = _decode(s.data) if s.data[:1] == b"\x02" else None
            if not isinstance(m, Vote) or m.kind not in (PREPARE, COMMIT):
                out.append(s)
                continue
            other = hashlib.sha256(b"double-vote" + m.digest).digest()
            twin = Vote(
                m.kind, m.view, m.seq, other, m.signer, _sign(node, m.kind, m.view, m.seq, other)
            )
            if s.dest is None and split:
                first, second = _halves(node, cluster)
                out += [Send(i, s.data) for i in first]
                out += [Send(i, encode_message(twin)) for i in second]
            else:
                out += [s, Send(s.dest, encode_message(twin))]  # dest None: to everyone
        return out

    return Strategy("double-voting", outgoing=outgoing)


def invalid_signatures() -> Strategy:
    """Replace signatures on its messages: random bytes, a bit flip, or a signature on another message."""

    def corrupt(node, m, rng):
        choice = rng.randrange(3)
        if choice == 0:
            sig = bytes(rng.randrange(256) for _ in range(96))
        elif choice == 1:
            sig = bytearray(m.signature)
            sig[rng.randrange(1, 96)] ^= 1 << rng.randrange(8)
            sig = bytes(sig)
        else:
            sig = _sign(node, PREPARE, 10**6, 10**6, b"\x00" * 32)
        return dataclasses.replace(m, signature=sig)

    def outgoing(node, sends, cluster):
        out = []
        for s in sends:
            m = _decode(s.data)
            if isinstance(m, PrePrepare | Vote | ViewChange):
                out.append(Send(s.dest, encode_message(corrupt(node, m, cluster.rng))))
            else:
                out.append(s)
        return out

    return Strategy("invalid-signatures", outgoing=outgoing)


def cancelling_votes() -> Strategy:
    """Collude so that invalid votes cancel in a plain sum: sig + X and sig' - X.

    The nodes running this strategy, sorted by identity, take turns: the
    first, third, ... add a fixed G2 point X to the signature of every vote
    they cast (bundled ones too), the second, fourth, ... subtract it. Every
    such vote is invalid, but a pair's sum equals the sum of two valid votes,
    so only a sound batch check (random linear combination) rejects the pair
    (tests/consensus/test_verifier.py, proofs/qc-unforgeability.md).
    """
    offsets: dict[bool, bytes] = {}

    def offset(node, cluster) -> bytes:
        colluders = sorted(
            {
                x.identity
                for x in cluster.nodes
                if x.strategy is not None and "cancelling-votes" in x.strategy.name.split("+")
            }
        )
        plus = colluders.index(node.identity) % 2 == 0
        if plus not in offsets:  # X = H(label) as a "signature" under key 1; -X under r - 1
            key = 1 if plus else bls.CURVE_ORDER - 1
            offsets[plus] = bls.sign_with_dst(key, b"offset X", b"pot-jax/cancelling-votes")
        return offsets[plus]

    def rewrite(data: bytes, x: bytes) -> bytes:
        parts = bundle_parts(data)
        if parts != (data,):
            return encode_message(Bundle(tuple(rewrite(p, x) for p in parts)))
        m = _decode(data) if data[:1] == b"\x02" else None
        if not isinstance(m, Vote):
            return data
        return encode_message(dataclasses.replace(m, signature=bls.Aggregate([m.signature, x])))

    def outgoing(node, sends, cluster):
        x = offset(node, cluster)
        return [Send(s.dest, rewrite(s.data, x)) for s in sends]

    return Strategy("cancelling-votes", outgoing=outgoing)


def _cert_store() -> tuple[Callable, list[bytes]]:
    seen: list[bytes] = []

    def incoming(node, src, data, cluster):
        if data[:1] in (b"\x03", b"\x07"):
            seen.append(data)
            del seen[:-32]
        return True

    return incoming, seen


def replay_old_qcs() -> Strategy:
    """Replay certificates and decision proofs it has seen, as is or relabelled to other slots."""
    incoming, seen = _cert_store()

    def act(node, cluster):
        if not seen:
            return []
        rng = cluster.rng
        data = seen[rng.randrange(len(seen))]
        m = _decode(data)
        if m is not None and rng.random() < 0.5:
            bump = rng.randrange(1, 4)
            if isinstance(m, Cert):
                m = dataclasses.replace(m, view=m.view + bump, seq=m.seq + bump)
            elif isinstance(m, Decided):
                m = dataclasses.replace(m, seq=m.seq + bump)
            data = encode_message(m)
        return [Send(None, data)]

    return Strategy("replay-old-qcs", incoming=incoming, act=act)


def forged_bitmaps() -> Strategy:
    """Send seen certificates with doctored signer bitmaps (extra, missing or padding bits)."""
    incoming, seen = _cert_store()

    def forge(qc: QuorumCertificate, n: int, rng) -> QuorumCertificate:
        bits = bytearray(qc.signers)
        choice = rng.randrange(3)
        if choice == 0:  # claim one more signer
            missing = [i for i in range(n) if not bits[i // 8] >> (i % 8) & 1]
            if missing:
                i = rng.choice(missing)
                bits[i // 8] |= 1 << (i % 8)
        elif choice == 1:  # drop a signer
            present = qc.signer_indices()
            i = rng.choice(present)
            bits[i // 8] &= ~(1 << (i % 8)) & 0xFF
        else:  # a bit beyond the last validator, or a wrong-length bitmap
            if n % 8:
                bits[-1] |= 0x80
            else:
                bits.append(1)
        return QuorumCertificate(qc.signature, bytes(bits))

    def act(node, cluster):
        if not seen:
            return []
        rng = cluster.rng
        m = _decode(seen[rng.randrange(len(seen))])
        if not isinstance(m, Cert | Decided):
            return []
        m = dataclasses.replace(m, qc=forge(m.qc, node.replica.config.n, rng))
        return [Send(None, encode_message(m))]

    return Strategy("forged-bitmaps", incoming=incoming, act=act)


def view_change_spam(max_jump: int = 1000) -> Strategy:
    """Broadcast validly signed view changes to far-future views (and one malformed proof)."""

    def act(node, cluster):
        rng = cluster.rng
        target = node.state.view + rng.randrange(1, max_jump)
        vc = ViewChange(target, None, (), node.identity, b"")
        vc = dataclasses.replace(
            vc, signature=_sign(node, VIEW_CHANGE, target, 0, view_change_digest(vc))
        )
        return [Send(None, encode_message(vc))]

    return Strategy("view-change-spam", act=act)


def garbage(max_bytes: int = 64) -> Strategy:
    """Broadcast random bytes, truncated real messages, oversized blobs and bundles that
    mix real messages with junk or nest a bundle inside a bundle."""
    incoming, seen = _cert_store()

    def act(node, cluster):
        rng = cluster.rng
        choice = rng.randrange(4)
        junk = bytes(rng.randrange(256) for _ in range(1 + rng.randrange(max_bytes)))
        if choice == 0 or not seen:
            data = junk
        elif choice == 1:
            msg = seen[rng.randrange(len(seen))]
            data = msg[: rng.randrange(len(msg))]
        elif choice == 2:
            data = b"\x05" + b"\xff" * (node.replica.config.max_message_bytes + 1)
        else:
            parts = (seen[rng.randrange(len(seen))], b"\x09" + junk)  # 9: no message tag
            data = encode_message(Bundle(parts))
            if rng.random() < 0.5:  # a nested bundle: malformed as a whole
                data = b"\x08\x00\x00\x00\x01" + len(data).to_bytes(4, "big") + data
        return [Send(None, data)]

    return Strategy("garbage", incoming=incoming, act=act)


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "silent": silent,
    "equivocating_primary": equivocating_primary,
    "double_voting": double_voting,
    "invalid_signatures": invalid_signatures,
    "replay_old_qcs": replay_old_qcs,
    "forged_bitmaps": forged_bitmaps,
    "view_change_spam": view_change_spam,
    "garbage": garbage,
    "cancelling_votes": cancelling_votes,
}


BEHAVIOURS = Registry("validator behaviour", STRATEGIES)


def register_strategy(name: str, factory: Callable[..., Strategy]) -> None:
    """Make a Byzantine validator behaviour selectable as ``--validator-strategy NAME``."""
    BEHAVIOURS.register(name, factory)


def build_strategy(text: str, *, flag: str = "--validator-strategy") -> Strategy:
    """``a+b:k=v`` -> the composition of each registered (or imported) behaviour."""
    return compose(*(BEHAVIOURS.build(part, flag=flag) for part in text.split("+")))


def twins(replicas: Sequence[Replica], identities: Sequence[int]) -> list[Replica]:
    """The replicas plus a second node for each identity in ``identities`` (same index and key).

    Node ids are the positions in the returned list: the twins come last.
    """
    return list(replicas) + [replicas[i] for i in identities]
