"""The ``pot-jax`` command line: flags become a config, the config one call."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import sys

from pot_jax.config import (
    ConfigError,
    ProtocolConfig,
    TrainConfig,
    add_config_args,
    config_from_args,
)


def _cmd_train(args: argparse.Namespace) -> int:
    from pot_jax.protocol.runner import NoQuorum

    try:
        return _train(args)
    except NoQuorum as stop:
        print(f"pot-jax train: {stop}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    from pot_jax.protocol.runner import resume_protocol, run_protocol

    if args.resume:
        given = sorted(
            "--" + k.replace("_", "-")
            for k in vars(args)
            if k in {f.name for f in dataclasses.fields(ProtocolConfig)}
            and k not in ("keys", "progress")
        )
        if given:
            raise ValueError(
                f"--resume continues the run with its own signed config; drop {', '.join(given)}"
            )
        s = resume_protocol(
            args.resume, keys=getattr(args, "keys", None), progress=getattr(args, "progress", None)
        )
    else:
        s = run_protocol(config_from_args(ProtocolConfig, args), tensorboard=args.tensorboard)
    reasons = ", ".join(f"{k}: {v}" for k, v in s.rejections_by_category.items()) or "none"
    slashed = (
        "; ".join(
            f"validator {v}: "
            + ", ".join(f"{fault} x{k}" for fault, k in collections.Counter(faults).items())
            for v, faults in s.slashed_validators.items()
        )
        or "none"
    )
    print(
        "\n".join(
            [
                f"rounds committed            {s.rounds_committed} (max PBFT view {s.max_view})",
                f"PoT test accuracy           {s.pot_accuracy:.4f}",
                f"centralized test accuracy   {s.centralized_accuracy:.4f}",
                f"accuracy ratio (PoT/central) {s.accuracy_ratio:.4f}",
                f"Byzantine workers           {list(s.byzantine_workers)}",
                f"cheaters caught             {list(s.cheaters_caught)}",
                f"wrong gradients checked     {s.wrong_gradients_checked}, caught "
                f"{s.wrong_gradients_caught}, accepted unchecked "
                f"{s.wrong_gradients_accepted_unchecked} (wrong gradients no validator sampled, "
                "so the committee accepted them; the simulation's ground truth)",
                f"honest workers slashed      {s.honest_workers_slashed}",
                f"fraud proofs                {s.fraud_proofs} valid, {s.false_fraud_proofs} false",
                f"validators slashed          {slashed}",
                f"rejected gradients          {s.rejected_gradients} ({reasons})",
                f"verification compute        {s.verification_compute_ratio:.4f} "
                f"({s.recomputed_gradients} recomputed / {s.worker_gradients} computed)",
                f"rewards (base units, 10^6 = 1 token) workers {s.worker_rewards}, validators "
                f"{s.validator_rewards}, emitted {s.ledger_emitted}, burned {s.ledger_burned}",
                f"consensus messages          {s.messages}, virtual time {s.virtual_time:.1f} "
                "network delays",
                f"wall time                   {s.wall_seconds:.1f} s",
                f"genesis                     {s.genesis} (keys: {s.key_source})",
                f"run directory               {s.run_dir} (check: pot-jax audit {s.run_dir} "
                f"--genesis {s.genesis})",
            ]
        )
    )
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from pot_jax.protocol.audit import audit

    report = audit(
        args.run_dir,
        recompute=args.recompute,
        seed=args.seed,
        genesis=args.genesis,
        validators=args.validators,
        data_dir=args.data_dir,
        allow_plugins=args.allow_plugins,
    )
    print(report)
    return report.exit_code


def _cmd_keygen(args: argparse.Namespace) -> int:
    from pot_jax.protocol.keys import generate_keys, write_key_dir

    keys = generate_keys(args.validators, args.workers, worker_scheme=args.worker_scheme)
    out = write_key_dir(args.out, keys)
    print(
        f"wrote {args.validators} validator and {args.workers} worker secret keys (mode 600) "
        f"to {out}; publish {out / 'public.json'}; use them with pot-jax train --keys {out}"
    )
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pot_jax.network.scenario import ScenarioConfig, run_scenario
    from pot_jax.network.simulator import NetworkConfig

    byzantine = _parse_byzantine(args.byzantine, args.n)
    twins = _parse_indices("--twins", args.twins, args.n)
    config = ScenarioConfig(
        n=args.n,
        pattern=args.pattern,
        values=args.values,
        submit_interval=args.submit_interval,
        piggyback_delay=args.piggyback_delay if args.piggyback_delay > 0 else None,
        seed=args.seed,
        network=NetworkConfig(drop_rate=args.drop, duplicate_rate=args.duplicate, gst=args.gst),
        byzantine=byzantine,
        twins=twins,
    )
    _emit(run_scenario(config), args.json)
    return 0


def _cmd_bench_consensus(args: argparse.Namespace) -> int:
    import jax

    from pot_jax.network.scenario import bench_consensus
    from pot_jax.runinfo import device_description

    ns = _positive_ints("--ns", args.ns)
    result = bench_consensus(
        ns,
        values=args.values,
        submit_interval=args.submit_interval,
        all_to_all_max_n=args.all_to_all_max_n,
    )
    result = {"results": result, "jax_version": jax.__version__, "device": device_description()}
    _emit(result, args.json)
    return 0


def _cmd_bench_detection(args: argparse.Namespace) -> int:
    from pot_jax.bench.detection import measure_detection, measure_prediction

    common = dict(
        budget=args.budget,
        n_validators=args.validators,
        byzantine_validators=args.byzantine_validators,
        n_workers=args.workers,
        rounds=args.rounds,
        seeds=args.seeds,
    )
    if args.predict:
        result = measure_prediction(keys=args.predict, **common)
    else:
        result = measure_detection(cheat_rate=args.cheat_rate, **common)
    _emit(result, args.json)
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from pathlib import Path

    run_figures = _experiments().run_figures

    if args.summary_only:
        from experiments.summary import write_summary

        print(write_summary(Path(args.out or "paper_figures")))
        return 0
    names = args.only.split(",") if args.only else None
    out = Path(args.out) if args.out else Path("runs") / "figures" / args.scale
    result = run_figures(names, args.scale, out)
    _emit(result, True)
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from pot_jax.learning.trainer import train

    config = config_from_args(TrainConfig, args)
    summary = train(config)
    print(
        "\n".join(
            [
                f"rounds                      {summary.rounds}",
                f"model parameters            {summary.params}",
                f"centralized test accuracy   {summary.centralized_accuracy:.4f}",
                f"data-parallel test accuracy {summary.data_parallel_accuracy:.4f}",
                f"accuracy ratio (dp/central) {summary.accuracy_ratio:.4f}",
                f"centralized compute         {summary.centralized_seconds:.1f} s",
                f"data-parallel compute       {summary.data_parallel_seconds:.1f} s",
                f"wall time                   {summary.wall_seconds:.1f} s",
                f"run directory               {summary.run_dir}",
            ]
        )
    )
    return 0


def _cmd_bench_throughput(args: argparse.Namespace) -> int:
    from pot_jax.bench.throughput import measure_throughput

    hidden = _positive_ints("--hidden", args.hidden)
    result = measure_throughput(
        model=args.model,
        batch=args.batch,
        workers=args.workers,
        hidden=hidden,
        aggregation=args.aggregation,
        commitment_hash=args.commitment_hash,
        rounds=args.rounds,
        repeats=args.repeats,
    )
    _emit(result, args.json)
    return 0


def _cmd_bench_crypto(args: argparse.Namespace) -> int:
    import jax

    from pot_jax.crypto import bls
    from pot_jax.crypto.bench import bench_bls
    from pot_jax.crypto.worker_signatures import bench_worker_signatures
    from pot_jax.runinfo import device_description

    sizes = _positive_ints("--sizes", args.sizes)
    backends = args.backends.split(",") if args.backends else list(bls.BACKENDS)
    unknown = sorted(set(backends) - set(bls.BACKENDS))
    if unknown:
        raise ValueError(f"--backends {unknown}: expected names from {list(bls.BACKENDS)}")
    result = {
        "bls": {name: bench_bls(name, sizes) for name in backends},
        "worker_signatures": bench_worker_signatures(args.workers),
        "sizes": list(sizes),
        "jax_version": jax.__version__,
        "device": device_description(),
    }
    _emit(result, args.json)
    return 0


def _json_default(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _emit(result: dict, as_json: bool) -> None:
    indent = None if as_json else 2
    print(json.dumps(result, indent=indent, sort_keys=True, default=_json_default))


def _positive_ints(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated positive integers") from None
    if not values or min(values) <= 0:
        raise ValueError(f"{flag} {text!r}: expected comma-separated positive integers")
    return values


def _parse_indices(flag: str, text: str, n: int) -> tuple[int, ...]:
    """Comma-separated node indices in [0, n), or a one-line error naming ``flag``."""
    out = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        try:
            index = int(item)
        except ValueError:
            raise ValueError(f"{flag} {text!r}: {item!r} is not an integer") from None
        if not 0 <= index < n:
            raise ValueError(f"{flag} {text!r}: node {index} is outside 0..{n - 1} (--n {n})")
        out.append(index)
    return tuple(out)


def _parse_byzantine(text: str, n: int) -> tuple[tuple[int, str], ...]:
    """``NODE:STRATEGY[+STRATEGY],...`` checked against n and the registered strategies."""
    from pot_jax.network.byzantine import STRATEGIES

    out = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        node, sep, name = item.partition(":")
        if not sep or not name:
            raise ValueError(
                f"--byzantine {item!r}: expected NODE:STRATEGY with a strategy from "
                f"{', '.join(sorted(STRATEGIES))}"
            )
        (index,) = _parse_indices("--byzantine", node, n)
        unknown = [x for x in name.split("+") if x not in STRATEGIES]
        if unknown:
            raise ValueError(
                f"--byzantine {item!r}: unknown strategy {', '.join(unknown)}; expected names "
                f"from {', '.join(sorted(STRATEGIES))} joined by '+'"
            )
        out.append((index, name))
    return tuple(out)


def _number(low: float, high: float = math.inf, *, low_open: bool = False):
    """An argparse type for a finite float in [low, high] ((low, high] when ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{text!r} is not in {bracket}{low}, {high}]")
        return value

    return parse


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from err
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from err
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _experiments():
    """The repository's experiments/ package (never installed; found beside pot_jax/)."""
    import importlib
    from pathlib import Path

    import pot_jax

    root = Path(pot_jax.__file__).resolve().parent.parent
    if not (root / "experiments" / "__init__.py").is_file():
        raise ValueError(
            "pot-jax figures needs the repository's experiments/ folder: run it from a clone "
            "installed with pip install -e '.[figures]'"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module("experiments")
    except ImportError as err:  # matplotlib missing
        raise ValueError(f"pot-jax figures needs the figures extra: {err}") from err


def _version() -> str:
    import pot_jax

    return pot_jax.__version__


def _flag_message(err: ConfigError) -> str:
    """A config error in the command line's words: ``budget = 0`` -> ``--budget 0``."""
    text = str(err)
    name, sep, rest = text.partition(" = ")
    if sep and name.isidentifier():
        return f"--{name.replace('_', '-')} {rest}"
    return _flag_words(text)


def _flag_words(text: str) -> str:
    """``data_dir /x does not exist`` -> ``--data-dir /x does not exist`` for config fields."""
    name, sep, rest = text.partition(" ")
    fields = {f.name for cls in (ProtocolConfig, TrainConfig) for f in dataclasses.fields(cls)}
    if sep and name in fields:
        return f"--{name.replace('_', '-')} {rest}"
    return text


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; figure names (which import matplotlib) only when ``figures`` is asked for."""
    parser = argparse.ArgumentParser(
        prog="pot-jax",
        description="Proof of Training in JAX: verifiable data-parallel training.",
    )
    parser.add_argument(
        "--version", action="version", version=f"pot-jax {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="the full Proof-of-Training protocol on the embedded MNIST-1D default",
        description=ProtocolConfig.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(train, ProtocolConfig)
    train.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="config fields from a JSON or TOML file (or a run's config.json); flags override",
    )
    train.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files to RUN_DIR/tensorboard (extra: tensorboard)",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue an interrupted run (made with --keys DIR or derived keys) from its "
        "transcript; the result equals the uninterrupted run",
    )
    train.set_defaults(func=_cmd_train)

    baseline = sub.add_parser(
        "baseline",
        help="centralized vs. plain data-parallel training (no verification, no consensus)",
        description=TrainConfig.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(baseline, TrainConfig)
    baseline.add_argument(
        "--config", metavar="FILE", default=None, help="config fields from a JSON or TOML file"
    )
    baseline.set_defaults(func=_cmd_baseline)

    au = sub.add_parser(
        "audit",
        help="verify a run directory's transcript offline",
        epilog="exit codes: 0 passed, 1 invalid or tampered, 2 usage error, 3 unfinished "
        "(no signed closing record)",
    )
    au.add_argument("run_dir")
    au.add_argument(
        "--recompute",
        default="none",
        help="re-execute rounds from checkpoints: none, all or sample:FRACTION",
    )
    au.add_argument(
        "--seed",
        type=int,
        default=None,
        help="repeat a sample: draw (default: a fresh seed from the OS, printed)",
    )
    au.add_argument(
        "--genesis", default=None, help="pin the genesis digest (64 hex digits) you trust"
    )
    au.add_argument(
        "--validators",
        default=None,
        help="pin the validator set: a public.json from pot-jax keygen, or a JSON list of keys",
    )
    au.add_argument(
        "--data-dir", default=None, help="where the run's dataset files are now, if they moved"
    )
    au.add_argument(
        "--allow-plugins",
        action="store_true",
        help="let the audit import and run plugin code (package.module:factory) the run names",
    )
    au.set_defaults(func=_cmd_audit)

    kg = sub.add_parser(
        "keygen", help="generate every node's secret key from the OS into a new key directory"
    )
    kg.add_argument("out", help="a new directory (mode 700; never inside a run directory)")
    kg.add_argument("--validators", type=_positive_int, default=4)
    kg.add_argument("--workers", type=_positive_int, default=16)
    kg.add_argument("--worker-scheme", default="ed25519", help="ed25519 or bls")
    kg.set_defaults(func=_cmd_keygen)

    sim = sub.add_parser("simulate", help="run one consensus scenario in the simulator")
    sim.add_argument("--n", type=_positive_int, default=4, help="validators")
    sim.add_argument("--pattern", choices=("all_to_all", "linear"), default="linear")
    sim.add_argument("--values", type=_positive_int, default=4, help="values to decide")
    sim.add_argument(
        "--submit-interval", type=_number(0), default=0.0, help="virtual time between submissions"
    )
    sim.add_argument(
        "--piggyback-delay",
        type=_number(0),
        default=1.0,
        help="linear pattern: longest wait of a held QC for a carrier (0: no piggybacking)",
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--drop", type=_number(0, 1), default=0.0, help="message drop rate before GST")
    sim.add_argument("--duplicate", type=_number(0, 1), default=0.0, help="duplication rate")
    sim.add_argument("--gst", type=_number(0), default=0.0, help="global stabilisation time")
    sim.add_argument(
        "--byzantine", default="", help="NODE:STRATEGY,... (strategies combine with '+')"
    )
    sim.add_argument("--twins", default="", help="identities that get a twin node")
    sim.add_argument("--json", action="store_true", help="print one JSON object on one line")
    sim.set_defaults(func=_cmd_simulate)

    figure_names = "see pot-jax figures --help"
    if argv is None or "figures" in argv:
        try:
            figure_names = ", ".join(_experiments().FIGURES)
        except ValueError:  # installed without the repository's experiments/
            figure_names = "see experiments/ in the repository"
    fig = sub.add_parser("figures", help="regenerate the paper figures from their experiments")
    fig.add_argument(
        "--only", default="", help=f"comma-separated figure names (default: all): {figure_names}"
    )
    fig.add_argument("--scale", choices=("smoke", "paper"), default="smoke")
    fig.add_argument(
        "--out",
        default=None,
        help="output root (default: runs/figures/SCALE); the committed figures are "
        "regenerated only with --scale paper --out paper_figures",
    )
    fig.add_argument(
        "--summary-only",
        action="store_true",
        help="only rewrite OUT/MEASURED.md from the data files already there",
    )
    fig.set_defaults(func=_cmd_figures)

    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    tp = bench_sub.add_parser("throughput", help="PoT compute core vs. centralized SGD")
    tp.add_argument("--json", action="store_true", help="print one JSON object on one line")
    tp.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    tp.add_argument("--batch", type=_positive_int, default=32, help="examples per worker")
    tp.add_argument("--workers", type=_positive_int, default=16)
    tp.add_argument("--hidden", default="256", help="MLP hidden widths (784-256-10 by default)")
    tp.add_argument("--aggregation", default="mean")
    tp.add_argument("--commitment-hash", choices=("sha256", "blake3"), default="sha256")
    tp.add_argument("--rounds", type=_positive_int, default=20, help="rounds per timed loop")
    tp.add_argument("--repeats", type=_positive_int, default=5, help="timed loops (median)")
    tp.set_defaults(func=_cmd_bench_throughput)

    cr = bench_sub.add_parser("crypto", help="BLS operations, QC verification, worker signatures")
    cr.add_argument("--json", action="store_true", help="print one JSON object on one line")
    cr.add_argument("--sizes", default="4,16,64,256,1024", help="committee sizes for qc_verify_ms")
    cr.add_argument("--backends", default="", help="comma-separated BLS backends (default: all)")
    cr.add_argument("--workers", type=_positive_int, default=1000, help="workers per round")
    cr.set_defaults(func=_cmd_bench_crypto)

    co = bench_sub.add_parser("consensus", help="messages and time per decision, both patterns")
    co.add_argument("--json", action="store_true", help="print one JSON object on one line")
    co.add_argument("--ns", default="4,16,64,256,1024", help="committee sizes")
    co.add_argument(
        "--all-to-all-max-n",
        type=_positive_int,
        default=256,
        help="larger all-to-all runs are reported as skipped (O(n^2) messages)",
    )
    co.add_argument(
        "--values", type=_positive_int, default=16, help="values in the stream (1: a lone one)"
    )
    co.add_argument(
        "--submit-interval", type=_number(0), default=1.0, help="virtual time between submissions"
    )
    co.set_defaults(func=_cmd_bench_consensus)

    de = bench_sub.add_parser("detection", help="spot-check detection vs. the closed form")
    de.add_argument("--json", action="store_true", help="print one JSON object on one line")
    de.add_argument("--budget", type=_number(0, 1, low_open=True), default=0.1)
    de.add_argument("--validators", type=_positive_int, default=4)
    de.add_argument("--byzantine-validators", type=_nonnegative_int, default=1)
    de.add_argument("--workers", type=_positive_int, default=16)
    de.add_argument("--cheat-rate", type=_number(0, 1, low_open=True), default=0.1)
    de.add_argument("--rounds", type=_positive_int, default=1000)
    de.add_argument("--seeds", type=_positive_int, default=100)
    de.add_argument(
        "--predict",
        choices=("derived", "secret"),
        default=None,
        help="a cheater that cheats only where it predicts no sample, against derived keys "
        "or secret ones from the OS (measure_prediction)",
    )
    de.set_defaults(func=_cmd_bench_detection)

    # Benchmarks with many flags of their own: their module parses the rest of the line
    # (imported only when run; `pot-jax bench NAME --help` shows their flags). main()
    # hands the line over before argparse sees it; these entries put them in the help.
    for name, (_, text) in FORWARDED_BENCHES.items():
        bench_sub.add_parser(name, help=text, add_help=False)
    for name, (_, text) in FORWARDED_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


FORWARDED_BENCHES = {
    "robustness": (
        "pot_jax.bench.robustness",
        "ByzFL's sweep: rules x pre-aggregators x attacks x heterogeneity, worst case",
    ),
    "aggregation": ("pot_jax.bench.aggregation", "ms per aggregation of every rule vs NumPy"),
    "uptime": (
        "pot_jax.bench.uptime",
        "claim 2 with real node processes: uptime under churn, crashes and loss; memory",
    ),
    "cluster": ("pot_jax.bench.cluster", "goodput vs plain SGD, PBFT commit latency vs n"),
}


# Commands with flags of their own, parsed by their module (the deployment runtime).
FORWARDED_COMMANDS = {
    "node": ("pot_jax.deploy.cluster:node_main", "run one node process of a real cluster"),
    "up": (
        "pot_jax.deploy.cluster:up_main",
        "a local cluster of node processes over gRPC: train, stop, leave an auditable run",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in FORWARDED_COMMANDS:
        import importlib

        module, function = FORWARDED_COMMANDS[argv[0]][0].split(":")
        return getattr(importlib.import_module(module), function)(list(argv[1:]))
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in FORWARDED_BENCHES:
        import importlib

        return importlib.import_module(FORWARDED_BENCHES[argv[1]][0]).main(list(argv[2:]))
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"pot-jax {args.command}: error: {_flag_message(err)}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as err:
        print(f"pot-jax {args.command}: error: {_flag_words(str(err))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
