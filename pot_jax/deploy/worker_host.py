"""A worker host: the process that runs training nodes (``pot-jax node --role worker``).

It hosts the training nodes it has keys for. It trains on a model only when
f + 1 validators announced its hash, signed with their report keys (so at
least one honest validator vouches for it), and only on bytes that hash to
it, fetched from one announcer at a time. Each node computes its gradient
(or its attack, with only what it may know: its own gradient and public
data, or, for a colluding attack, everyone's honest gradients, which are
public functions of public data), signs its commitment with its own key and
sends the submission to every validator. A host that fell behind drops its
queued submissions of past rounds first (``Transport.discard``).
"""

from __future__ import annotations

import collections

import numpy as np

from pot_jax.attacks import AttackContext, build_attack
from pot_jax.deploy import wire
from pot_jax.deploy.node import STALE_ROUNDS, NodeError, _Base
from pot_jax.learning.encoding import decode_pytree, pytree_digest
from pot_jax.protocol.messages import encode_submission
from pot_jax.protocol.roles import (
    RoundTask,
    TrainingNode,
    attack_knowledge,
    own_knowledge_context,
    worker_program,
)

__all__ = ["WorkerHost"]

MODEL_RETRY = 4.0  # network delays before a worker host asks another announcer for the model


class WorkerHost(_Base):
    """A process hosting training nodes: each has its own key and signs its own submissions."""

    def __init__(self, ctx, host_index, node_keys, endpoints, data_dir, *, time_scale=0.25):
        super().__init__(ctx, f"workers/{host_index}", endpoints, data_dir, time_scale)
        config = ctx.config
        self.host_index = host_index
        hosted = endpoints.worker_hosts[host_index][1]
        if sorted(node_keys) != sorted(hosted):
            raise NodeError(
                f"worker host {host_index} runs nodes {list(hosted)} (peers file) but has keys for "
                f"{sorted(node_keys)}"
            )
        signatures = ctx.rules.signatures
        attack = None
        if ctx.byzantine_workers:
            attack = build_attack(config.attack, aggregation=config.aggregation)
        self.nodes = {}
        for w, seed in sorted(node_keys.items()):
            sk, pk = signatures.keygen(seed)
            if pk != ctx.worker_keys[w]:
                raise NodeError(
                    f"the key given for training node {w} is not the one the genesis registers"
                )
            self.nodes[w] = TrainingNode(
                w, sk, pk, signatures, attack if w in ctx.byzantine_workers else None
            )
        self.announced: dict[tuple[int, bytes], set[int]] = collections.defaultdict(set)
        self.trained_round = -1
        self.wanted: tuple[int, bytes] | None = None
        self.asked: list[int] = []
        self.models: dict[bytes, object] = {ctx.state0.params_hash: ctx.state0.params}
        self.stale = collections.deque(maxlen=STALE_ROUNDS)
        self.f = (config.validators - 1) // 3
        # Each hosted node's own streams to the validators, opened with its own key: its
        # submissions travel on them, as they would from a machine of its own.
        self.links: dict = {}

    async def open_links(self, transport_factory) -> None:
        validators = {
            peer: address
            for peer, address in self.endpoints.peers_of(self.me).items()
            if peer.startswith("validator/")
        }
        signatures = self.ctx.rules.signatures
        for w, node in sorted(self.nodes.items()):
            link = transport_factory(
                _ignore,
                me=f"worker/{w}",
                listen=None,
                peers=validators,
                sign=lambda m, sk=node.sk: signatures.sign(sk, m),
            )
            await link.start()
            self.links[w] = link

    async def close_links(self) -> None:
        for link in self.links.values():
            await link.stop()

    def write_stats(self) -> None:
        totals: collections.Counter = collections.Counter()
        for link in self.links.values():
            st = link.stats
            totals.update(
                sent=st.sent, bytes_sent=st.bytes_sent, reconnects=st.reconnects, **st.dropped
            )
        self.stats["node links"] = len(self.links)
        for k, v in totals.items():
            self.stats[f"node links: {k}"] = v
        super().write_stats()

    def warm_up(self) -> None:
        ctx = self.ctx
        w = next(iter(self.nodes))
        x, y = ctx.batches(0, w)
        ctx.learner.worker_gradient(ctx.state0.params, x, y)

    def begin(self) -> None:
        pass  # a worker host waits for the validators' announcements

    def handle(self, sender: str, kind: int, body: bytes) -> None:
        if kind == wire.ANNOUNCE:
            self._announce(sender, body)
        elif kind == wire.MODEL:
            self._model(sender, body)
        else:
            self.drop(f"{wire.KIND_NAMES[kind]} is not for a worker host")

    def _announce(self, sender: str, body: bytes) -> None:
        a = wire.decode_announce(body)
        if sender != f"validator/{a.validator}" or a.validator >= len(self.ctx.report_keys):
            self.drop("announce from another validator than its signer")
            return
        message = a.signing_message(self.ctx.chain_id, self.ctx.genesis_hash)
        if not self.ctx.rules.report_scheme.verify(
            self.ctx.report_keys[a.validator], message, a.signature
        ):
            self.drop("announce with a bad signature")
            return
        if a.round <= self.trained_round:
            return
        key = (a.round, a.params_hash)
        self.announced[key].add(a.validator)
        if len(self.announced[key]) < self.f + 1:
            return
        if a.round >= self.ctx.config.rounds:
            self.done.set()  # f + 1 validators say the run is over
            return
        if a.params_hash in self.models:
            self.train(a.round, self.models[a.params_hash])
        elif self.wanted != key:
            self.wanted, self.asked = key, []
            self._ask()

    def _ask(self) -> None:
        """Ask the next announcer of the wanted model for its bytes."""
        if self.wanted is None:
            return
        r, params_hash = self.wanted
        if r <= self.trained_round:
            return
        candidates = [v for v in sorted(self.announced[self.wanted]) if v not in self.asked]
        if not candidates:
            self.asked = []
            candidates = sorted(self.announced[self.wanted])
        v = candidates[0]
        self.asked.append(v)
        request = wire.encode(wire.MODEL_REQUEST, wire.round_body(r, params_hash))
        self.transport.send(f"validator/{v}", request)
        self.later(MODEL_RETRY, self._ask)

    def _model(self, sender: str, body: bytes) -> None:
        r, params_hash, data = wire.decode_model(body)
        if self.wanted != (r, params_hash):
            self.drop("model nobody asked for")
            return
        like = self.ctx.state0.params
        try:
            params = decode_pytree(data, like)
        except (ValueError, TypeError) as err:
            self.drop(f"model bytes that do not decode ({err})")
            return
        if pytree_digest(params, self.ctx.learner.spec) != params_hash:
            self.drop("model bytes that do not hash to the announced hash")
            return
        self.models = {params_hash: params}
        self.train(r, params)

    def train(self, r: int, params) -> None:
        """Every hosted node's signed submission for round r, sent to every validator."""
        ctx, config = self.ctx, self.ctx.config
        self.trained_round, self.wanted = r, None
        W = config.workers
        batch_of = ctx.batches.of_round(r)
        ids = sorted(self.nodes)
        colluding = any(
            n.attack is not None and attack_knowledge(n.attack) == "colluding"
            for n in self.nodes.values()
        )
        # Honest gradients are public functions of public data: a colluding attacker
        # computes everyone's (the genesis names that channel); others need only their own.
        active = list(range(W)) if colluding else ids
        honest = worker_program(ctx.learner, params, batch_of, W, active, config.mode)
        task = RoundTask(r, params, ctx.chain_id)
        shared = AttackContext(
            learner=ctx.learner,
            params=params,
            batch_of=batch_of,
            grads_WxP=honest,
            round=r,
            byzantine=ctx.byzantine_workers,
            stale_params=self.stale[0] if len(self.stale) == STALE_ROUNDS else None,
            num_classes=ctx.data.num_classes,
            n_validators=config.validators,
            chain_id=ctx.chain_id,
        )
        # A host that fell behind must not send this round's submissions behind the last
        # round's, which no validator wants any more (they would miss every deadline).
        for link in self.links.values():
            for v in range(config.validators):
                link.discard(f"validator/{v}", lambda d, r=r: _submission_before(d, r))
        nan_rows = None
        for w in ids:
            node, actx = self.nodes[w], None
            if node.attack is not None:
                actx = shared
                if ctx.collusion == "none":
                    nan_rows = np.full_like(honest, np.nan) if nan_rows is None else nan_rows
                    actx = own_knowledge_context(shared, w, honest, nan_rows)
            rng = np.random.default_rng([config.seed, r, w])
            sub = node.step(task, ctx.learner.header, honest[w], actx, rng)
            if nan_rows is not None:
                nan_rows[w] = np.nan
            data = wire.encode(wire.SUBMISSION, wire.round_body(r, encode_submission(sub)))
            for v in range(config.validators):
                self.links[w].send(f"validator/{v}", data)
        self.stats["rounds trained"] += 1
        self.stale.append(params)


def _ignore(sender: str, data: bytes) -> None:
    """A node's own streams only send: nothing arrives on them."""


def _submission_before(data: bytes, r: int) -> bool:
    """Whether ``data`` is a submission for a round before ``r``."""
    return len(data) > 9 and data[0] == wire.SUBMISSION and wire.split_round(data[1:], "")[0] < r
