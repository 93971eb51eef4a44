"""Plain, unverified data-parallel SGD over the deployment transport: the goodput baseline.

Issue 14 measures the Proof-of-Training cluster against "the same processes
doing plain data-parallel SGD through the same transport". This is that
runtime, with nothing of the protocol: no signatures on gradients, no
checks, no validators, no consensus, no transcript.

* **PlainServer** (endpoint ``server``): holds the model and optimizer state.
  Round r: it sends the model's bytes to every worker host, waits for a
  gradient from each of the W training nodes (no deadline: plain synchronous
  SGD waits for everyone), averages them, takes one optimizer step
  (``mean_step``) and starts round r + 1. After the last round it writes
  ``summary.json`` and tells the hosts to stop.
* **PlainWorkerHost** (endpoint ``workers/k``): for each model it receives,
  computes each hosted node's gradient and sends it to the server.

The work per round is the PoT cluster's: the same config builds the same
data, model, optimizer and per-(round, worker) batches as a PoT node
(``deploy.context.load_context``), and a host computes its nodes' gradients
with the PoT worker host's own function (``protocol.roles.worker_program``).

Authentication: the transport's hellos are HMAC-SHA256 with one secret that
every process of the run holds (``--secret FILE``), so any of them could
pose as another; the baseline trusts its processes, which is what "plain,
unverified" means.

Run: ``run_plain(config, run_dir)`` launches one server and ``worker_hosts``
host processes (``python -m pot_jax.deploy.plain server|worker ...``) on
127.0.0.1, waits until every one has warmed up (jit compiled), starts them
together and returns the server's summary; any failure or Ctrl-C stops every
process it started.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pot_jax.config import ProtocolConfig
from pot_jax.deploy.cluster import free_ports
from pot_jax.runinfo import JsonLines, write_json

__all__ = [
    "PlainServer",
    "PlainWireError",
    "PlainWorkerHost",
    "decode",
    "encode_done",
    "encode_gradient",
    "encode_model",
    "mean_step",
    "run_plain",
]

log = logging.getLogger(__name__)

MODEL, GRADIENT, DONE = 1, 2, 3
_ROUND = struct.Struct(">Q")
_GRADIENT_HEAD = struct.Struct(">QI")
CHAIN_ID = b"pot-jax/plain-sgd"


class PlainWireError(ValueError):
    """Bytes that are not a plain-runtime message, with what is wrong."""


def encode_model(round_: int, params_bytes: bytes) -> bytes:
    return bytes((MODEL,)) + _ROUND.pack(round_) + params_bytes


def encode_gradient(round_: int, worker: int, grad_P: np.ndarray) -> bytes:
    return bytes((GRADIENT,)) + _GRADIENT_HEAD.pack(round_, worker) + grad_P.tobytes()


def encode_done() -> bytes:
    return bytes((DONE,))


def decode(data: bytes) -> tuple[int, int, int, bytes]:
    """``(kind, round, worker, payload)``; raises ``PlainWireError``."""
    if not data:
        raise PlainWireError("empty message")
    kind, body = data[0], data[1:]
    if kind == MODEL:
        if len(body) < _ROUND.size:
            raise PlainWireError(f"model message of {len(data)} bytes is truncated")
        return kind, _ROUND.unpack_from(body)[0], -1, body[_ROUND.size :]
    if kind == GRADIENT:
        if len(body) < _GRADIENT_HEAD.size:
            raise PlainWireError(f"gradient message of {len(data)} bytes is truncated")
        round_, worker = _GRADIENT_HEAD.unpack_from(body)
        return kind, round_, worker, body[_GRADIENT_HEAD.size :]
    if kind == DONE and not body:
        return kind, -1, -1, b""
    raise PlainWireError(f"unknown message kind {kind} ({len(data)} bytes)")


def mean_step(learner):
    """``(params, opt_state, grads_WxP) -> (params, opt_state)``: one optimizer step on the
    mean gradient (the paper's aggregation, without any check), jitted once here."""

    def step(params, opt_state, grads_WxP):
        return learner.apply_update(params, opt_state, jnp.mean(grads_WxP, axis=0))

    return jax.jit(step)


# -- what a process rebuilds from the config -------------------------------------------------------


@dataclass(frozen=True)
class PlainContext:
    """The public pieces a PoT node builds too: data, learner, batches, round-0 model."""

    config: ProtocolConfig
    data: object
    learner: object
    batches: object
    params0: object


def load_config(path: str | os.PathLike) -> ProtocolConfig:
    raw = json.loads(Path(path).read_text())
    return ProtocolConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def build_context(config: ProtocolConfig) -> PlainContext:
    """The same data, batch assignment, model and optimizer as ``deploy.context.load_context``."""
    from pot_jax.learning.assignment import BatchAssigner
    from pot_jax.learning.trainer import build_learner, load_for, worker_shards
    from pot_jax.protocol.setup import Batches

    data = load_for(config)
    assigner = BatchAssigner(config.seed, worker_shards(config, data), config.batch_size)
    learner, params = build_learner(config, data)
    return PlainContext(config, data, learner, Batches(assigner, data), params)


def split_workers(n_workers: int, hosts: int) -> list[list[int]]:
    """Training nodes per host, as ``pot-jax up`` splits them."""
    hosts = max(1, min(hosts, n_workers))
    return [list(range(n_workers))[k::hosts] for k in range(hosts)]


def _hmac_auth(secret: bytes, endpoints):
    known = frozenset(endpoints)

    def sign(message: bytes) -> bytes:
        return hmac.new(secret, message, hashlib.sha256).digest()

    def verify(peer: str, message: bytes, signature: bytes) -> bool:
        return peer in known and hmac.compare_digest(sign(message), signature)

    return sign, verify


# -- the two processes ---------------------------------------------------------------------------


class _Node:
    def __init__(self, ctx: PlainContext, me: str, data_dir):
        self.ctx, self.me = ctx, me
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stats: collections.Counter = collections.Counter()
        self.transport = None
        self.done = asyncio.Event()

    def drop(self, reason: str) -> None:
        self.stats[f"dropped: {reason}"] += 1

    def on_message(self, sender: str, data: bytes) -> None:
        try:
            kind, round_, worker, payload = decode(data)
        except PlainWireError as err:
            self.drop(f"malformed ({err})")
            return
        self.handle(sender, kind, round_, worker, payload)

    def write_stats(self) -> None:
        stats = dict(self.stats)
        if self.transport is not None:
            stats["transport"] = {
                k: (dict(v) if isinstance(v, collections.Counter) else v)
                for k, v in dataclasses.asdict(self.transport.stats).items()
            }
        write_json(self.data_dir / "node-stats.json", stats)

    async def serve(self, transport_factory, start_file: str | None) -> None:
        """Start the transport, warm up, wait for ``start_file`` (if any), run until done."""
        self.transport = transport_factory(self.on_message)
        await self.transport.start()
        self.warm_up()
        (self.data_dir / "ready").write_text(str(os.getpid()))
        while start_file is not None and not Path(start_file).exists():
            await asyncio.sleep(0.02)
        self.begin()
        try:
            await self.done.wait()
        finally:
            self.write_stats()
            await self.transport.stop()


class PlainServer(_Node):
    """Averages the W gradients of a round, steps the model and broadcasts it; see the module."""

    def __init__(self, ctx: PlainContext, hosts: int, data_dir, *, linger: float = 0.5):
        super().__init__(ctx, "server", data_dir)
        config = ctx.config
        self.hosts = hosts
        self.W = config.workers
        self.params = ctx.params0
        self.opt_state = ctx.learner.optimizer.init(ctx.params0)
        self.step = mean_step(ctx.learner)
        self.grads_WxP = np.zeros((self.W, ctx.learner.num_params), np.float32)
        self.held: set[int] = set()
        self.round = 0
        self.linger = linger
        self.metrics: JsonLines | None = None
        self.run_started = self.round_started = 0.0

    def warm_up(self) -> None:
        # Compile the step on a copy: the model must stay the round-0 one.
        params, _ = self.step(self.params, self.opt_state, self.grads_WxP)
        jax.block_until_ready(params)

    def begin(self) -> None:
        self.metrics = JsonLines(self.data_dir / "metrics.jsonl")
        self.run_started = time.perf_counter()
        self.start_round()

    def start_round(self) -> None:
        from pot_jax.learning.encoding import encode_pytree

        self.round_started = time.perf_counter()
        self.held.clear()
        data = encode_model(self.round, encode_pytree(self.params, self.ctx.learner.spec))
        for k in range(self.hosts):
            self.transport.send(f"workers/{k}", data)

    def handle(self, sender: str, kind: int, round_: int, worker: int, payload: bytes) -> None:
        if kind != GRADIENT:
            self.drop("not a gradient")
            return
        if round_ != self.round:
            self.drop("gradient for another round")
            return
        P = self.grads_WxP.shape[1]
        if not 0 <= worker < self.W or worker in self.held or len(payload) != 4 * P:
            self.drop("gradient of an unknown or repeated worker, or of the wrong length")
            return
        self.grads_WxP[worker] = np.frombuffer(payload, np.float32)
        self.held.add(worker)
        log.debug(
            "round %d: gradient %d after %.4f s",
            round_,
            worker,
            time.perf_counter() - self.round_started,
        )
        if len(self.held) == self.W:
            self.finish_round()

    def finish_round(self) -> None:
        ctx, config = self.ctx, self.ctx.config
        self.params, self.opt_state = self.step(self.params, self.opt_state, self.grads_WxP)
        self.round += 1
        row = {
            "round": self.round,
            "accepted": self.W,
            "round_wall_seconds": time.perf_counter() - self.round_started,
            "wall_seconds": time.perf_counter() - self.run_started,
        }
        if self.round % config.eval_every == 0 or self.round == config.rounds:
            row["test_accuracy"] = float(
                ctx.learner.accuracy(self.params, ctx.data.x_test, ctx.data.y_test)
            )
        self.metrics.write(row)
        if self.round < config.rounds:
            self.start_round()
        else:
            self.close()

    def close(self) -> None:
        from pot_jax.learning.encoding import encode_pytree, pytree_digest

        self.metrics.close()
        ctx = self.ctx
        (self.data_dir / "model.bin").write_bytes(encode_pytree(self.params, ctx.learner.spec))
        for k in range(self.hosts):
            self.transport.send(f"workers/{k}", encode_done())
        summary = {
            "rounds": self.round,
            "final_params_hash": pytree_digest(self.params, ctx.learner.spec).hex(),
            "test_accuracy": float(
                ctx.learner.accuracy(self.params, ctx.data.x_test, ctx.data.y_test)
            ),
            "wall_seconds": time.perf_counter() - self.run_started,
        }
        write_json(self.data_dir / "summary.json", summary)
        asyncio.get_running_loop().call_later(self.linger, self.done.set)


class PlainWorkerHost(_Node):
    """Computes each hosted training node's gradient on every model the server sends."""

    def __init__(self, ctx: PlainContext, host_index: int, nodes, data_dir):
        super().__init__(ctx, f"workers/{host_index}", data_dir)
        self.nodes = sorted(nodes)
        self.trained_round = -1

    def warm_up(self) -> None:
        x, y = self.ctx.batches(0, self.nodes[0])
        jax.block_until_ready(self.ctx.learner.worker_gradient(self.ctx.params0, x, y))

    def begin(self) -> None:
        pass  # a host waits for the server's model

    def handle(self, sender: str, kind: int, round_: int, worker: int, payload: bytes) -> None:
        from pot_jax.learning.encoding import EncodingError, decode_pytree
        from pot_jax.protocol.roles import worker_program

        if sender != "server":
            self.drop(f"message from {sender}, not the server")
            return
        if kind == DONE:
            self.done.set()
            return
        if kind != MODEL or round_ <= self.trained_round:
            self.drop("not a new model")
            return
        ctx = self.ctx
        try:
            params = decode_pytree(payload, ctx.params0)
        except EncodingError as err:
            self.drop(f"model bytes that do not decode ({err})")
            return
        self.trained_round = round_
        W = ctx.config.workers
        grads_WxP = worker_program(
            ctx.learner, params, ctx.batches.of_round(round_), W, self.nodes, "bitwise"
        )
        for w in self.nodes:
            self.transport.send("server", encode_gradient(round_, w, grads_WxP[w]))
        self.stats["rounds trained"] += 1


# -- process entry point -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pot_jax.deploy.plain",
        description="one process of the plain data-parallel SGD baseline",
    )
    p.add_argument("role", choices=("server", "worker"))
    p.add_argument("--config", required=True, help="ProtocolConfig as JSON (config.to_dict())")
    p.add_argument("--peers", required=True, help='JSON: {"server": ADDR, "worker_hosts": [...]}')
    p.add_argument("--host-index", type=int, default=0, help="which worker host this is")
    p.add_argument("--secret", required=True, help="file holding the run's shared HMAC secret")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--start-file", default=None)
    p.add_argument("--log-level", default="WARNING")
    return p


def process_main(argv: list[str] | None = None) -> int:
    from pot_jax.deploy.node import one_compute_thread
    from pot_jax.deploy.transport import Transport

    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    one_compute_thread()  # as a PoT node process does: the comparison stays fair
    ctx = build_context(load_config(args.config))
    peers = json.loads(Path(args.peers).read_text())
    hosts = peers["worker_hosts"]
    endpoints = {"server": peers["server"]} | {
        f"workers/{k}": h["address"] for k, h in enumerate(hosts)
    }
    sign, verify = _hmac_auth(Path(args.secret).read_bytes(), endpoints)
    if args.role == "server":
        node = PlainServer(ctx, len(hosts), args.data_dir)
        listen = peers["server"]
        targets = {f"workers/{k}": h["address"] for k, h in enumerate(hosts)}
    else:
        k = args.host_index
        node = PlainWorkerHost(ctx, k, hosts[k]["nodes"], args.data_dir)
        listen = hosts[k]["address"]
        targets = {"server": peers["server"]}

    def transport(on_message):
        return Transport(
            node.me,
            listen,
            targets,
            chain_id=CHAIN_ID,
            sign=sign,
            verify=verify,
            on_message=on_message,
            seed=ctx.config.seed,
        )

    async def run():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, node.done.set)
        await node.serve(transport, args.start_file)

    asyncio.run(run())
    return 0


# -- a local run ---------------------------------------------------------------------------------


def _stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    end = time.time() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass
class PlainResult:
    run_dir: str
    rounds: int
    final_params_hash: str
    test_accuracy: float
    wall_seconds: float
    processes: int
    node_stats: dict


def run_plain(
    config: ProtocolConfig,
    run_dir: str | os.PathLike,
    *,
    worker_hosts: int = 1,
    timeout: float | None = None,
    echo=print,
) -> PlainResult:
    """Run ``config.rounds`` rounds of plain SGD on local processes; see the module docstring."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        raise FileExistsError(f"{run_dir} exists; choose another directory for the plain run")
    run_dir.mkdir(parents=True)
    config_file = run_dir / "config.json"
    write_json(config_file, config.to_dict())
    secret = run_dir / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    hosts = split_workers(config.workers, worker_hosts)
    ports = free_ports(1 + len(hosts))
    peers = {
        "server": f"127.0.0.1:{ports[0]}",
        "worker_hosts": [
            {"address": f"127.0.0.1:{p}", "nodes": ws}
            for p, ws in zip(ports[1:], hosts, strict=True)
        ],
    }
    peers_file = run_dir / "peers.json"
    write_json(peers_file, peers)
    start_file = run_dir / "start"
    base = [sys.executable, "-m", "pot_jax.deploy.plain"]
    common = ["--config", str(config_file), "--peers", str(peers_file), "--secret", str(secret)]
    common += ["--start-file", str(start_file)]
    specs = [("server", base + ["server", *common, "--data-dir", str(run_dir / "server")])]
    for k in range(len(hosts)):
        d = run_dir / f"workers-{k}"
        argv = base + ["worker", *common, "--host-index", str(k), "--data-dir", str(d)]
        specs.append((f"workers-{k}", argv))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen] = []
    started = time.perf_counter()
    try:
        for name, argv in specs:
            with open(run_dir / f"{name}.log", "ab") as out:
                procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env))
        echo(f"plain: 1 server, {len(hosts)} worker host(s) for {config.workers} training nodes")
        ready_by = time.time() + 600
        while not all((run_dir / name / "ready").exists() for name, _ in specs):
            _check_alive(procs, specs, run_dir)
            if time.time() > ready_by:
                raise RuntimeError("plain: the processes did not warm up within 600 s")
            time.sleep(0.05)
        start_file.write_text(str(time.time()))
        deadline = None if timeout is None else time.perf_counter() + timeout
        summary_file = run_dir / "server" / "summary.json"
        while not summary_file.exists():
            _check_alive(procs, specs, run_dir, done=summary_file)
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError(f"plain: the run did not finish within {timeout:g} s")
            time.sleep(0.05)
        # The server exits by itself once it told the hosts; the hosts on its word.
        for p in procs:
            p.wait(timeout=30)
        bad = [
            (name, p.returncode) for (name, _), p in zip(specs, procs, strict=True) if p.returncode
        ]
        if bad:
            raise RuntimeError(f"plain: processes exited with errors: {bad}")
    finally:
        _stop(procs)
    summary = json.loads(summary_file.read_text())
    stats = {}
    for name, _ in specs:
        f = run_dir / name / "node-stats.json"
        if f.exists():
            stats[name] = json.loads(f.read_text())
    return PlainResult(
        run_dir=str(run_dir),
        rounds=summary["rounds"],
        final_params_hash=summary["final_params_hash"],
        test_accuracy=summary["test_accuracy"],
        wall_seconds=time.perf_counter() - started,
        processes=len(procs),
        node_stats=stats,
    )


def _check_alive(procs, specs, run_dir: Path, done: Path | None = None) -> None:
    """Raise with the end of its log if a process failed, or exited before ``done`` exists."""
    for (name, _), p in zip(specs, procs, strict=True):
        if p.poll() is not None and (p.returncode or done is None or not done.exists()):
            log_file = run_dir / f"{name}.log"
            tail = log_file.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"plain: {name} exited with code {p.returncode}; the end of {log_file}:\n"
                + "\n".join(tail)
            )


if __name__ == "__main__":
    sys.exit(process_main())
