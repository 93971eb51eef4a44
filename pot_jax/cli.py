"""The ``pot-jax`` command line: flags become a config, the config one call."""

from __future__ import annotations

import argparse
import json
import sys

from pot_jax.config import ConfigError, TrainConfig, add_config_args, config_from_args


def _cmd_train(args: argparse.Namespace) -> int:
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

    hidden = tuple(int(w) for w in args.hidden.split(","))
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

    sizes = tuple(int(n) for n in args.sizes.split(","))
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


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(json.dumps(result, indent=2, sort_keys=True))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from err
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pot-jax",
        description="Proof of Training in JAX: verifiable data-parallel training.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="centralized vs. data-parallel training on the embedded MNIST-1D default",
        description=TrainConfig.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(train, TrainConfig)
    train.set_defaults(func=_cmd_train)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"pot-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
