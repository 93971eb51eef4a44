"""``pot-jax node`` (one node process) and ``pot-jax up`` (a local cluster of them).

``pot-jax up`` is a genesis ceremony plus a process supervisor:

1. it generates every node's keys into a key directory of its own (``--keys
   DIR``; secret files mode 0600; never inside the run directory), or loads
   the ones there;
2. it builds and signs the genesis exactly as ``pot-jax train`` does (so the
   same config, seed and keys give the same genesis), writes it to
   ``RUN_DIR/nodes/genesis.json`` with a peers file of 127.0.0.1 addresses;
3. it starts one process per validator and per worker host (``pot-jax node``),
   each with only its own secret key, waits until every one has warmed up,
   then lets them start together;
4. it waits until every honest validator wrote its closing record, stops the
   processes, and assembles ``RUN_DIR`` from an honest validator's own
   transcript (``config.json``, the transcript, its checkpoints and
   metrics), which ``pot-jax audit`` checks as it checks a simulated run.

Ctrl-C (or any failure) stops every process it started: each gets SIGTERM,
then SIGKILL after a grace period, and ``up`` waits for all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pot_jax.config import ConfigError, ProtocolConfig, add_config_args, config_from_args

__all__ = ["UpResult", "node_main", "up", "up_main"]

log = logging.getLogger(__name__)
KEY_FORMAT = "pot-jax/secret-key/v1"


# -- one node ------------------------------------------------------------------------------------


def _node_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pot-jax node", description="run one node (or one host of training nodes)"
    )
    p.add_argument("--role", choices=("validator", "worker"), required=True)
    p.add_argument(
        "--key",
        action="append",
        required=True,
        metavar="KEYFILE",
        help="this node's secret key file (pot-jax keygen); a worker host takes one per node",
    )
    p.add_argument("--genesis", required=True, metavar="FILE", help="the signed run header")
    p.add_argument("--peers", required=True, metavar="FILE", help="every node's address (JSON)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("--data-dir", required=True, metavar="DIR", help="this node's own state")
    p.add_argument("--dataset-dir", default=None, metavar="DIR", help="where MNIST files are")
    p.add_argument(
        "--time-scale",
        type=float,
        default=0.25,
        help="seconds per network delay of the simulator (deadlines and PBFT timers)",
    )
    p.add_argument(
        "--request-timeout",
        type=_positive_delays,
        default=None,
        metavar="DELAYS",
        help="network delays a validator waits for a proposal to commit before it asks for a "
        "view change (PBFT's request and view-change timers; default 8). Longer than a "
        "round's honest work, or every slow round changes the view",
    )
    _add_catch_up_flags(p)
    p.add_argument("--faults", default=None, metavar="FILE", help="fault schedule (JSON)")
    p.add_argument("--fault-start", type=float, default=None, help="unix time faults count from")
    p.add_argument("--start-file", default=None, help="wait for this file before round 0")
    p.add_argument(
        "--linger",
        type=float,
        default=None,
        help="seconds a validator keeps serving its peers after its closing record (default: "
        "until stopped)",
    )
    p.add_argument("--log-level", default="WARNING")
    return p


def _add_catch_up_flags(p) -> None:
    from pot_jax.deploy.node import HISTORY_ROUNDS, TRANSFER_AFTER

    p.add_argument(
        "--history-rounds",
        type=_positive_int,
        default=None,
        metavar="ROUNDS",
        help="rounds of submissions and reports a validator keeps for peers that fall behind "
        f"(default {HISTORY_ROUNDS}); memory against how far a peer can re-derive",
    )
    p.add_argument(
        "--transfer-after",
        type=_positive_int,
        default=None,
        metavar="ROUNDS",
        help="rounds behind from which a validator adopts the certified state of a checkpoint "
        f"round instead of re-deriving each round (state transfer; default {TRANSFER_AFTER})",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of rounds >= 1")
    return value


def _catch_up(history_rounds, transfer_after) -> dict:
    """The node keyword arguments of the catch-up flags that were given."""
    given = {"history_rounds": history_rounds, "transfer_after": transfer_after}
    return {k: v for k, v in given.items() if v is not None}


def _positive_delays(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of delays")
    return value


def read_key_file(path: str | Path) -> tuple[str, int, dict]:
    """``(role, index, fields)`` of one secret key file, checked as ``load_key_dir`` does."""
    from pot_jax.protocol.keys import KeyFileError, _read_secret

    path = Path(path)
    try:
        obj = json.loads(path.read_bytes()[: 1 << 16])
        role, index = obj["role"], obj["index"]
    except OSError as err:
        raise KeyFileError(f"--key {path}: cannot read it ({err.strerror})") from None
    except (ValueError, KeyError, TypeError):
        raise KeyFileError(f"--key {path}: not a {KEY_FORMAT} file") from None
    if role not in ("validator", "worker") or not isinstance(index, int):
        raise KeyFileError(f"--key {path}: not a {KEY_FORMAT} file")
    return role, index, _read_secret(path, role, index)


def build_node(args):
    """The node ``args`` describe, and a factory of its transport."""
    from pot_jax.deploy.context import load_context, read_header
    from pot_jax.deploy.faults import FaultLayer, FaultSchedule
    from pot_jax.deploy.node import Endpoints, NodeError, ValidatorNode, one_compute_thread
    from pot_jax.deploy.transport import Limits, Transport
    from pot_jax.deploy.worker_host import WorkerHost

    one_compute_thread()
    ctx = load_context(read_header(args.genesis), data_dir=args.dataset_dir)
    config = ctx.config
    endpoints = Endpoints.load(args.peers, n_validators=config.validators, n_workers=config.workers)
    keys = [read_key_file(k) for k in args.key]
    if any(role != args.role for role, _, _ in keys):
        raise NodeError(f"--role {args.role} with a key file of another role")
    if args.role == "validator":
        if len(keys) != 1:
            raise NodeError("a validator runs with exactly one --key")
        _, index, obj = keys[0]
        node = ValidatorNode(
            ctx,
            index,
            int(obj["secret_key"], 16),
            endpoints,
            args.data_dir,
            time_scale=args.time_scale,
            linger=args.linger,
            request_timeout=args.request_timeout,
            **_catch_up(args.history_rounds, args.transfer_after),
        )
        sign = lambda m: ctx.rules.report_scheme.sign(node.report_sk, m)  # noqa: E731
    else:
        node_keys = {index: bytes.fromhex(obj["secret_key"]) for _, index, obj in keys}
        hosts = [k for k, (_, ws) in enumerate(endpoints.worker_hosts) if min(ws) == min(node_keys)]
        if not hosts:
            raise NodeError(f"no worker host in --peers runs training node {min(node_keys)}")
        node = WorkerHost(
            ctx, hosts[0], node_keys, endpoints, args.data_dir, time_scale=args.time_scale
        )
        first = min(node.nodes)
        sign = lambda m: ctx.rules.signatures.sign(node.nodes[first].sk, m)  # noqa: E731
    faults = None
    if args.faults:
        schedule = FaultSchedule.from_json(Path(args.faults).read_text())
        faults = FaultLayer(schedule, seed=config.seed, start=args.fault_start)
    from pot_jax.deploy.node import _hello_verifier

    verify = _hello_verifier(ctx, endpoints)

    def transport(on_message, *, me=None, listen=args.listen, peers=None, sign=sign):
        """This node's transport; a worker host also makes its nodes' own (``me``)."""
        return Transport(
            me or node.me,
            listen,
            endpoints.peers_of(node.me) if peers is None else peers,
            chain_id=ctx.chain_id,
            sign=sign,
            verify=verify,
            on_message=on_message,
            faults=faults,
            seed=config.seed,
            limits=limits,
            fault_as=node.me,
        )

    # A NEW-VIEW carries the prepared values of a whole window (each a record and the
    # round's reports: about 0.6 MB at 1000 training nodes): room for PBFT's own bound.
    limits = Limits(max_message_bytes=24 << 20, queue_bytes=256 << 20)
    return node, transport


def node_main(argv: list[str]) -> int:
    args = _node_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        node, transport = build_node(args)
    except (ValueError, OSError, ConfigError) as err:
        print(f"pot-jax node: error: {err}", file=sys.stderr)
        return 2

    async def run():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, node.done.set)
            except (RuntimeError, ValueError):  # not the main thread (a Ray actor)
                pass
        await node.serve(transport, args.start_file)

    asyncio.run(run())
    return 0


# -- a local cluster -----------------------------------------------------------------------------


@dataclass
class Proc:
    """One node process of the cluster, started by an engine."""

    name: str
    argv: list[str]
    data_dir: Path
    log: Path
    handle: object = None  # a subprocess.Popen, or (actor, result ref) under Ray
    kills: int = 0
    placement: object = None  # where a Ray actor runs (its node id), kept across restarts


class ProcessEngine:
    """Node processes on this machine (subprocess)."""

    name = "processes"

    def start(self, p: Proc, env) -> None:
        out = open(p.log, "ab")  # noqa: SIM115  (owned by the child for its life)
        p.handle = subprocess.Popen(p.argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()

    def exit_code(self, p: Proc) -> int | None:
        return None if p.handle is None else p.handle.poll()

    def kill(self, p: Proc) -> None:
        p.handle.send_signal(signal.SIGKILL)
        p.handle.wait()

    def stop(self, procs, grace: float = 5.0) -> None:
        for p in procs:
            if p.handle is not None and p.handle.poll() is None:
                p.handle.send_signal(signal.SIGTERM)
        end = time.time() + grace
        for p in procs:
            if p.handle is None:
                continue
            try:
                p.handle.wait(timeout=max(0.0, end - time.time()))
            except subprocess.TimeoutExpired:
                p.handle.kill()
                p.handle.wait()

    def close(self) -> None:
        pass


class RayEngine:
    """The same node processes as Ray actors (one worker process each), on a Ray cluster.

    Nodes still talk to each other over gRPC: each actor reports its host's
    address and a free port before the peers file is written, and a
    restarted actor is placed on the node its predecessor ran on (so its
    address holds). Worker hosts get a GPU each while the cluster has free
    ones. Files (keys, genesis, node state) are on the paths ``up`` gives:
    across machines they must be on a shared filesystem.
    """

    name = "ray"

    def __init__(self, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--engine ray needs Ray: pip install -e '.[ray]' (or pip install ray)"
            ) from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        self.gpus = int(ray.cluster_resources().get("GPU", 0))
        self.actor_class = ray.remote(num_cpus=0, max_concurrency=2)(_NodeActor)

    def _actor(self, p: Proc, gpu: bool):
        options = {"num_gpus": 1} if gpu else {}
        if p.placement is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(p.placement, soft=False)
        return self.actor_class.options(**options).remote()

    def place(self, procs) -> list[str]:
        """One actor per node; each answers with the ``HOST:PORT`` it will listen on."""
        gpus = self.gpus
        actors = []
        for p in procs:
            gpu = p.name.startswith("workers/") and gpus > 0
            gpus -= int(gpu)
            actors.append(self._actor(p, gpu))
        where = self.ray.get([a.where.remote() for a in actors])
        for p, a, (_, _, node) in zip(procs, actors, where, strict=True):
            p.handle, p.placement = (a, None), node
        return [f"{host}:{port}" for host, port, _ in where]

    def start(self, p: Proc, env) -> None:
        fresh = p.handle is not None and p.handle[1] is None
        actor = p.handle[0] if fresh else self._actor(p, False)
        # Only the settings that shape a node travel; the rest is the actor host's own.
        env = {k: v for k, v in env.items() if k.startswith(("GRPC_", "XLA_", "JAX_", "PYTHON"))}
        p.handle = (actor, actor.run.remote(p.argv, env, str(p.log)))

    def exit_code(self, p: Proc) -> int | None:
        if p.handle is None or p.handle[1] is None:
            return None
        done, _ = self.ray.wait([p.handle[1]], timeout=0)
        if not done:
            return None
        try:
            return int(self.ray.get(done[0]))
        except Exception:  # the actor died or raised: the run cannot count on it
            return 1

    def kill(self, p: Proc) -> None:
        self.ray.kill(p.handle[0], no_restart=True)

    def stop(self, procs, grace: float = 5.0) -> None:
        for p in procs:
            if p.handle is not None:
                self.ray.kill(p.handle[0], no_restart=True)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


class _NodeActor:
    """A Ray actor hosting one ``pot-jax node`` in its own worker process."""

    def where(self):
        import ray

        s = socket.socket()
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
        s.close()
        return ray.util.get_node_ip_address(), port, ray.get_runtime_context().get_node_id()

    def run(self, argv, env, log) -> int:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.update(env)
        return node_main(argv[argv.index("node") + 1 :])


@dataclass
class UpResult:
    run_dir: str
    rounds: int
    final_params_hash: str
    transcript_of: str
    wall_seconds: float
    processes: int
    kills: list = field(default_factory=list)
    node_stats: dict = field(default_factory=dict)


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now (bound together, then released)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _keys_for(config: ProtocolConfig, run_dir: Path, keys_dir: str | None):
    """The key directory the cluster runs with: given, or generated beside the run."""
    from pot_jax.crypto.worker_signatures import DEFAULT_WORKER_SCHEME
    from pot_jax.protocol.keys import generate_keys, write_key_dir

    if config.keys == "derived":
        raise ConfigError(
            "--keys derived is a simulation option (every secret follows from the config); a "
            "node of a real cluster holds its own secret: give --keys DIR"
        )
    directory = Path(keys_dir) if keys_dir else Path(str(run_dir).rstrip("/") + ".keys")
    run_abs = run_dir.resolve()
    if directory.resolve() == run_abs or run_abs in directory.resolve().parents:
        raise ConfigError(f"--keys {directory} is inside the run directory {run_dir}")
    if not directory.exists():
        keys = generate_keys(config.validators, config.workers, worker_scheme=DEFAULT_WORKER_SCHEME)
        write_key_dir(directory, keys)
    return directory


def _split(n: int, parts: int) -> list[list[int]]:
    parts = max(1, min(parts, n))
    return [list(range(n))[k::parts] for k in range(parts)]


def up(
    config: ProtocolConfig,
    *,
    keys_dir: str | None = None,
    worker_hosts: int = 1,
    time_scale: float = 0.25,
    faults: str | None = None,
    timeout: float | None = None,
    kill: str = "",
    restart_after: float = 2.0,
    engine: str = "processes",
    ray_address: str | None = None,
    request_timeout: float | None = None,
    history_rounds: int | None = None,
    transfer_after: int | None = None,
    echo=print,
) -> UpResult:
    """Run ``config`` on a local cluster of node processes; see the module docstring."""
    from pot_jax.protocol.keys import _file_name
    from pot_jax.protocol.runner import RUN_FILES, ProtocolRun
    from pot_jax.protocol.transcript import TRANSCRIPT_NAME, checkpoint_directory
    from pot_jax.runinfo import refuse_existing_run, write_json

    start = time.perf_counter()
    run_dir = Path(config.run_dir)
    refuse_existing_run(run_dir, RUN_FILES)
    nodes_dir = run_dir / "nodes"
    if nodes_dir.exists():
        raise FileExistsError(
            f"{nodes_dir} exists (a cluster ran here); choose another --run-dir or remove it"
        )
    keys_dir = _keys_for(config, run_dir, keys_dir)
    config = ProtocolConfig(**{**config.to_dict(), "keys": str(keys_dir), "progress": False})
    run = ProtocolRun(config)  # the genesis ceremony: the same genesis as pot-jax train
    header = run.header()
    nodes_dir.mkdir(parents=True)
    genesis_file = nodes_dir / "genesis.json"
    write_json(genesis_file, header)

    n, W = config.validators, config.workers
    hosts = _split(W, worker_hosts)
    runner = RayEngine(ray_address) if engine == "ray" else ProcessEngine()
    names = [f"validator/{i}" for i in range(n)] + [f"workers/{k}" for k in range(len(hosts))]
    procs = [
        Proc(
            name,
            [],
            nodes_dir / name.replace("/", "-"),
            nodes_dir / (name.replace("/", "-") + ".log"),
        )
        for name in names
    ]
    if engine == "ray":
        addresses = runner.place(procs)
    else:
        addresses = [f"127.0.0.1:{port}" for port in free_ports(len(procs))]
    peers = {
        "validators": addresses[:n],
        "worker_hosts": [
            {"address": a, "nodes": ws} for a, ws in zip(addresses[n:], hosts, strict=True)
        ],
    }
    peers_file = nodes_dir / "peers.json"
    write_json(peers_file, peers)
    start_file = nodes_dir / "start"

    def node_argv(role, keyfiles, address, data_dir):
        argv = [sys.executable, "-m", "pot_jax.cli", "node", "--role", role]
        for k in keyfiles:
            argv += ["--key", str(k)]
        argv += ["--genesis", str(genesis_file), "--peers", str(peers_file)]
        argv += ["--listen", address, "--data-dir", str(data_dir)]
        argv += ["--time-scale", str(time_scale), "--start-file", str(start_file)]
        if role == "validator":
            if request_timeout is not None:
                argv += ["--request-timeout", str(request_timeout)]
            for flag, value in _catch_up(history_rounds, transfer_after).items():
                argv += ["--" + flag.replace("_", "-"), str(value)]
        if config.data_dir:
            argv += ["--dataset-dir", str(config.data_dir)]
        if faults:
            argv += ["--faults", str(faults), "--fault-start", "FAULT_START"]
        return argv

    for i in range(n):
        key = keys_dir / _file_name("validator", i)
        procs[i].argv = node_argv("validator", [key], addresses[i], procs[i].data_dir)
    for k, ws in enumerate(hosts):
        keyfiles = [keys_dir / _file_name("worker", w) for w in ws]
        p = procs[n + k]
        p.argv = node_argv("worker", keyfiles, addresses[n + k], p.data_dir)

    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    silent = {i for i in config.byzantine_validator_ids if config.validator_strategy == "silent"}
    honest = [i for i in range(n) if i not in config.byzantine_validator_ids]
    schedule = _parse_kills(kill, n, len(hosts))
    kills_done: list = []
    previous_term = _interrupt_on_sigterm()
    try:
        echo(
            f"pot-jax up: {n} validators, {len(hosts)} worker host(s) for {W} training nodes "
            f"({runner.name})"
        )
        ready_by = time.time() + 600
        # Faults count from the moment the nodes start together.
        fault_start = time.time() + 3600
        for p in procs:
            p.argv = [str(fault_start) if a == "FAULT_START" else a for a in p.argv]
            runner.start(p, env)
        while not all((p.data_dir / "ready").exists() for p in procs):
            _check_alive(runner, procs)
            if time.time() > ready_by:
                raise RuntimeError("pot-jax up: the nodes did not warm up within 600 s")
            time.sleep(0.1)
        start_file.write_text(str(time.time()))
        echo("pot-jax up: every node is ready; training")
        deadline = None if timeout is None else time.perf_counter() + timeout
        pending_restarts: list[tuple[float, Proc]] = []
        while True:
            committed = _committed_rounds(nodes_dir, honest)
            for when, target in list(schedule):
                if committed >= when:
                    schedule.remove((when, target))
                    proc = next(
                        p for p in procs if p.name == _resolve(target, nodes_dir, honest, n)
                    )
                    if proc.handle is not None and runner.exit_code(proc) is None:
                        runner.kill(proc)
                        proc.kills += 1
                        kills_done.append({"round": committed, "node": proc.name})
                        echo(f"pot-jax up: SIGKILL {proc.name} after round {committed}")
                        pending_restarts.append((time.perf_counter() + restart_after, proc))
            for item in list(pending_restarts):
                if time.perf_counter() >= item[0]:
                    pending_restarts.remove(item)
                    (item[1].data_dir / "ready").unlink(missing_ok=True)
                    runner.start(item[1], env)
                    echo(f"pot-jax up: restarted {item[1].name}")
            if all(
                (nodes_dir / f"validator-{i}" / "closed.json").exists()
                for i in honest
                if i not in silent
            ):
                break
            _check_alive(runner, [p for p in procs if p not in [x for _, x in pending_restarts]])
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError(f"pot-jax up: the run did not finish within {timeout:g} s")
            time.sleep(0.05)
    finally:
        # A second Ctrl-C (or a SIGINT relayed by a wrapper such as timeout) must not cut
        # the stopping short and leave nodes running.
        previous = _ignore_sigint()
        try:
            runner.stop(procs)
            runner.close()
        finally:
            _restore_sigint(previous)
            _restore_sigterm(previous_term)

    chosen = next(i for i in honest if (nodes_dir / f"validator-{i}" / "closed.json").exists())
    src = nodes_dir / f"validator-{chosen}"
    shutil.copyfile(src / "config.json", run_dir / "config.json")
    shutil.copyfile(src / TRANSCRIPT_NAME, run_dir / TRANSCRIPT_NAME)
    ck = checkpoint_directory(src / TRANSCRIPT_NAME)
    shutil.copytree(ck, checkpoint_directory(run_dir / TRANSCRIPT_NAME))
    shutil.copyfile(src / "metrics.jsonl", run_dir / "metrics.jsonl")
    closed = json.loads((src / "closed.json").read_text())
    stats = {}
    for p in procs:
        f = p.data_dir / "node-stats.json"
        if f.exists():
            stats[p.name] = json.loads(f.read_text())
    result = UpResult(
        run_dir=str(run_dir),
        rounds=closed["rounds_committed"],
        final_params_hash=closed["final_params_hash"],
        transcript_of=f"validator/{chosen}",
        wall_seconds=time.perf_counter() - start,
        processes=len(procs),
        kills=kills_done,
        node_stats=stats,
    )
    from pot_jax.runinfo import run_metadata

    summary = {
        **closed,
        "wall_seconds": result.wall_seconds,
        "run_dir": str(run_dir),
        "cluster": {
            "engine": runner.name,
            "transcript_of": result.transcript_of,
            "processes": len(procs),
            "worker_hosts": len(hosts),
            "time_scale": time_scale,
            "request_timeout": request_timeout,
            **_catch_up(history_rounds, transfer_after),
            "faults": faults,
            "kills": kills_done,
            "node_stats": stats,
        },
        "metadata": run_metadata(),
    }
    write_json(run_dir / "summary.json", summary)
    return result


def _parse_kills(text: str, n: int, hosts: int) -> list[tuple[int, str]]:
    """``validator/1@3,primary@5,workers/0@2``: after round k commits, SIGKILL that node."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        target, _, when = part.partition("@")
        if not when.isdigit():
            raise ConfigError(f"--kill {part!r}: expected NODE@ROUND, e.g. validator/1@3")
        role, _, index = target.partition("/")
        ok = target == "primary" or (
            index.isdigit()
            and (
                (role == "validator" and int(index) < n)
                or (role == "workers" and int(index) < hosts)
            )
        )
        if not ok:
            raise ConfigError(
                f"--kill {part!r}: NODE is validator/I (I < {n}), workers/K (K < {hosts}) or primary"
            )
        out.append((int(when), target))
    return out


def _resolve(target: str, nodes_dir: Path, honest, n) -> str:
    if target != "primary":
        return target
    view = 0
    for i in honest:
        rows = _rows(nodes_dir / f"validator-{i}" / "metrics.jsonl")
        if rows:
            view = max(view, rows[-1].get("view", 0))
    return f"validator/{view % n}"


def _rows(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _committed_rounds(nodes_dir: Path, honest) -> int:
    return max(
        (len(_rows(nodes_dir / f"validator-{i}" / "metrics.jsonl")) for i in honest), default=0
    )


def _interrupt_on_sigterm():
    """SIGTERM and SIGINT stop the run, every node process with it.

    A scheduler, timeout or kill ends the supervisor with SIGTERM (it left every node
    running). A process started in the background by a non-interactive shell inherits an
    ignored SIGINT, and Python then installs no KeyboardInterrupt handler: a Ctrl-C or
    ``kill -INT`` meant for it did nothing. Both are handled here, and restored after.
    """

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        return (
            signal.signal(signal.SIGTERM, interrupt),
            signal.signal(signal.SIGINT, signal.default_int_handler),
        )
    except ValueError:  # not the main thread: the caller handles its own signals
        return None


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _ignore_sigint():
    try:
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to protect
        return None


def _restore_sigint(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


def _check_alive(runner, procs) -> None:
    """Raise for a node process that ended before the run did.

    A worker host ends with code 0 once f + 1 validators announced the end of the run (at
    least one honest one did): that is its finish, not a failure, though the validators
    may still be exchanging their closing votes (a 1000-node run's hosts all finished so,
    and `up` used to fail the run for it).
    """
    for p in procs:
        code = runner.exit_code(p)
        if code == 0 and p.name.startswith("workers/"):
            continue
        if code is not None:
            tail = p.log.read_text(errors="replace").splitlines()[-15:] if p.log.exists() else []
            raise RuntimeError(
                f"pot-jax up: {p.name} exited with code {code}; the end of {p.log}:\n"
                + "\n".join(tail)
            )


def _up_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pot-jax up",
        description="run the protocol on a local cluster of node processes (every train flag works)",
    )
    add_config_args(p, ProtocolConfig)
    p.add_argument("--worker-hosts", type=int, default=1, help="processes hosting training nodes")
    p.add_argument("--time-scale", type=float, default=0.25, help="seconds per network delay")
    p.add_argument(
        "--request-timeout",
        type=_positive_delays,
        default=None,
        metavar="DELAYS",
        help="PBFT's request and view-change timers of every validator (default 8 delays)",
    )
    _add_catch_up_flags(p)
    p.add_argument("--faults", default=None, metavar="FILE", help="fault schedule (JSON)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument(
        "--kill",
        default="",
        metavar="SCHEDULE",
        help="NODE@ROUND,...: SIGKILL NODE (validator/I, workers/K or primary) once ROUND "
        "rounds committed, and restart it --restart-after seconds later",
    )
    p.add_argument("--restart-after", type=float, default=2.0)
    p.add_argument(
        "--engine",
        choices=("processes", "ray"),
        default="processes",
        help="where the node processes run: subprocesses here, or Ray actors (extra: ray)",
    )
    p.add_argument("--address", default=None, help="the Ray cluster to join (default: a local one)")
    return p


def up_main(argv: list[str]) -> int:
    args = _up_parser().parse_args(argv)
    keys_dir = getattr(args, "keys", None)
    keys_dir = None if keys_dir in (None, "random") else keys_dir
    config = config_from_args(ProtocolConfig, args)
    if keys_dir is None:
        config = ProtocolConfig(**{**config.to_dict(), "keys": "random"})
    try:
        result = up(
            config,
            keys_dir=keys_dir,
            worker_hosts=args.worker_hosts,
            time_scale=args.time_scale,
            faults=args.faults,
            timeout=args.timeout,
            kill=args.kill,
            restart_after=args.restart_after,
            engine=args.engine,
            ray_address=args.address,
            request_timeout=args.request_timeout,
            history_rounds=args.history_rounds,
            transfer_after=args.transfer_after,
        )
    except KeyboardInterrupt:
        print("pot-jax up: interrupted; every node process was stopped", file=sys.stderr)
        return 130
    except (ConfigError, ValueError, RuntimeError, TimeoutError, FileExistsError) as err:
        print(f"pot-jax up: error: {err}", file=sys.stderr)
        return 1
    print(
        f"rounds committed: {result.rounds}\nfinal model: {result.final_params_hash}\n"
        f"transcript: {result.transcript_of}'s\nwall time: {result.wall_seconds:.1f} s\n"
        f"run directory: {result.run_dir} (check it with: pot-jax audit {result.run_dir})"
    )
    return 0
