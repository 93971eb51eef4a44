"""Run configurations: frozen dataclasses, overridable from the command line.

Every field carries its help text in ``metadata["help"]``; ``add_config_args``
turns the fields into ``--flag`` options and ``config_from_args`` builds the
validated config back. A config is JSON-serialisable (``to_dict``) and is
written next to every result so a run can be reproduced from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

PARTITIONS = ("shared", "iid", "dirichlet")
# Upper bounds that keep a hostile config (or a forged run header) from making
# a run or an audit allocate for hours before it fails.
LIMITS = {"num_samples": 2_000_000, "workers": 100_000, "batch_size": 1_000_000}
MAX_VALIDATORS = 1 << 16
# Fields that say where things are on this machine (or how to display progress),
# not what is trained: the signed genesis leaves them out, so the same run made in
# another directory, with the data or the keys elsewhere, has the same genesis.
LOCAL_FIELDS = ("run_dir", "progress", "data_dir", "keys")


class ConfigError(ValueError):
    """A config field holds a value outside what it accepts."""


def _help(text: str, default: Any = dataclasses.MISSING, **kw) -> Any:
    return field(default=default, metadata={"help": text}, **kw)


@dataclass(frozen=True)
class _LearningConfig:
    """The learning fields every run shares (not used on its own)."""

    dataset: str = _help("dataset name: mnist1d, teacher, mnist, fashion_mnist, cifar10", "mnist1d")
    data_dir: str | None = _help("directory holding the files of mnist/fashion_mnist/cifar10", None)
    num_samples: int = _help("MNIST-1D examples to generate (train + test, 80/20 split)", 5000)
    model: str = _help("model name: mlp or cnn", "mlp")
    hidden: tuple[int, ...] = _help("MLP hidden widths, comma separated", (256, 256))
    channels: tuple[int, ...] = _help("CNN channels per conv block, comma separated", (16, 32))
    workers: int = _help("number of data-parallel workers W", 16)
    batch_size: int = _help("examples per worker per round B", 8)
    rounds: int = _help("training rounds (one optimizer step each)", 8000)
    optimizer: str = _help("optax optimizer: sgd (the paper's rule), momentum or adam", "sgd")
    learning_rate: float = _help("optimizer learning rate", 0.2)
    aggregation: str = _help("aggregation rule over worker gradients (mean is the paper's)", "mean")
    partition: str = _help(
        "which examples each worker draws from: shared (the whole training set), iid "
        "(disjoint equal shards) or dirichlet (label-skewed shards)",
        "shared",
    )
    dirichlet_alpha: float = _help("Dirichlet concentration for partition=dirichlet", 0.5)
    eval_every: int = _help("rounds between test-accuracy evaluations", 500)
    seed: int = _help(
        "run seed: init, shards, batches, Byzantine choices, attack noise (MNIST-1D keeps "
        "its published data seed 42)",
        0,
    )
    run_dir: str = _help(
        "directory for config.json, metrics.jsonl and summary.json", "runs/baseline"
    )
    progress: bool = _help("show a progress bar (only when stderr is a terminal)", True)

    def _check_learning(self) -> None:
        positive = ("num_samples", "workers", "batch_size", "rounds", "eval_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} = {value!r}: expected a positive integer")
        for name, high in LIMITS.items():
            if getattr(self, name) > high:
                raise ConfigError(f"{name} = {getattr(self, name)}: at most {high} supported")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(
                f"learning_rate = {self.learning_rate!r}: expected a positive finite number"
            )
        if self.partition not in PARTITIONS:
            raise ConfigError(f"partition = {self.partition!r}: expected one of {PARTITIONS}")
        if not self.dirichlet_alpha > 0:
            raise ConfigError(f"dirichlet_alpha = {self.dirichlet_alpha!r}: expected > 0")
        for name in ("hidden", "channels"):
            widths = getattr(self, name)
            if not widths or any(int(w) <= 0 for w in widths):
                raise ConfigError(f"{name} = {widths!r}: expected positive integers")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig(_LearningConfig):
    """Centralized vs. data-parallel training on the embedded MNIST-1D default.

    Reproduces the learning half of the paper's claim 1 ("85% of the
    performance of centralized alternatives"): with every worker honest and the
    paper's mean rule, data-parallel SGD over W workers with per-worker batch
    B takes the same steps as centralized SGD on the union batch of W*B, so
    the two accuracies should agree to within float noise.

    Command: ``pot-jax baseline`` (about 1 minute on a 2-core CPU).
    """

    def __post_init__(self):
        self._check_learning()


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (use true/false)")


def _parser_for(annotation) -> tuple[Any, str]:
    """An argparse ``type`` for a field annotation, and a metavar."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _parser_for(inner[0])
    if origin is tuple:
        elem = args[0]

        def parse_tuple(text: str):
            try:
                return tuple(elem(p) for p in text.split(",") if p.strip())
            except ValueError as err:
                raise argparse.ArgumentTypeError(
                    f"{text!r} is not a comma-separated list of {elem.__name__}"
                ) from err

        return parse_tuple, f"{elem.__name__.upper()},..."
    if annotation is bool:
        return _parse_bool, "BOOL"
    return annotation, annotation.__name__.upper()


def add_config_args(parser: argparse.ArgumentParser, cls) -> None:
    """Add one ``--field`` option per field of the config dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if hints[f.name] is bool:  # --progress / --no-progress
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{f.metadata.get('help', '')} (default: {f.default!r})",
            )
            continue
        kind, metavar = _parser_for(hints[f.name])
        default = f.default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            metavar=metavar,
            default=argparse.SUPPRESS,
            help=f"{f.metadata.get('help', '')} (default: {default!r})",
        )


def config_from_args(cls, namespace: argparse.Namespace, **overrides):
    """Build ``cls`` from parsed flags; unset flags keep the dataclass defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(overrides)
    return cls(**values)


@dataclass(frozen=True)
class ProtocolConfig(_LearningConfig):
    """The full Proof-of-Training round on the embedded MNIST-1D default.

    Workers compute gradients (a fraction of them Byzantine, running
    ``attack``), validators cheap-check every gradient and spot-check a VRF
    sample by bitwise recomputation, the aggregation server beside the PBFT
    primary proposes the round record, the committee commits it with BLS
    quorum certificates (one validator Byzantine: ``validator_strategy``), the
    ledger pays and slashes, and the transcript records everything for
    ``pot-jax audit``. Alongside, a centralized model trains on the union of
    the workers' batches, so the summary compares the two (paper claim 1).

    Command: ``pot-jax train`` (a few minutes on a 2-core CPU).
    """

    rounds: int = _help("training rounds, one committed record each", 1500)
    aggregation: str = _help(
        "aggregation rule for robust_only (spot_check and full_recompute use the mean)", "mean"
    )
    eval_every: int = _help("rounds between test-accuracy evaluations", 250)
    run_dir: str = _help("directory for the transcript, config, metrics and summary", "runs/pot")
    validators: int = _help("consensus validators n (f = (n-1)//3 tolerated)", 4)
    byzantine_validators: str = _help(
        "comma-separated indices of Byzantine validators (index 0 is the first primary)", "0"
    )
    validator_strategy: str = _help(
        "what Byzantine validators do (pot_jax.network.byzantine.STRATEGIES, '+' combines)",
        "silent",
    )
    beyond_f: bool = _help(
        "allow more than f = (validators-1)//3 Byzantine validators, to watch PBFT lose its "
        "quorum: the run stops at the first round that cannot commit, its transcript intact",
        False,
    )
    pattern: str = _help("PBFT message pattern: linear (collector QCs) or all_to_all", "linear")
    byzantine_fraction: float = _help("fraction of workers that are Byzantine", 0.25)
    attack: str = _help("what Byzantine workers do (pot_jax.attacks.ATTACK_NAMES)", "alie")
    verification: str = _help("spot_check, full_recompute or robust_only", "spot_check")
    budget: float = _help("spot_check: fraction of gradients recomputed, all validators", 0.1)
    mode: str = _help(
        "recomputation check: bitwise (workers and validators on one platform) or tolerance "
        "(honest workers run a differently compiled program, as on other hardware)",
        "bitwise",
    )
    tolerance_threshold: float = _help(
        "tolerance mode's normalised-distance threshold; 0 calibrates it from honest gradients",
        0.0,
    )
    checkpoint_every: int = _help("rounds between model checkpoints in the transcript", 100)
    chain_id: str = _help("the run's chain id (signed by workers and validators)", "pot-jax/run")
    keys: str = _help(
        "where every node's secret key comes from: 'random' (the operating system; kept in "
        "memory only), a key directory made by 'pot-jax keygen' (re-runs give identical "
        "results), or 'derived' (SIMULATION ONLY: secrets derived from the public seed, so "
        "anyone can forge signatures and predict samples; for bit-identical sweeps)",
        "random",
    )

    def __post_init__(self):
        self._check_learning()
        for name in ("validators", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} = {value!r}: expected a positive integer")
        if self.validators > MAX_VALIDATORS:
            raise ConfigError(f"validators = {self.validators}: at most {MAX_VALIDATORS}")
        if self.validators < 4:
            raise ConfigError(f"validators = {self.validators}: PBFT needs at least 4")
        if not 0 <= self.byzantine_fraction < 1:
            raise ConfigError(
                f"byzantine_fraction = {self.byzantine_fraction!r}: expected a value in [0, 1)"
            )
        if self.mode not in ("bitwise", "tolerance"):
            raise ConfigError(f"mode = {self.mode!r}: expected 'bitwise' or 'tolerance'")
        if not (self.tolerance_threshold >= 0 and math.isfinite(self.tolerance_threshold)):
            raise ConfigError(
                f"tolerance_threshold = {self.tolerance_threshold!r}: expected a number >= 0"
            )
        if not 0 < self.budget <= 1:
            raise ConfigError(f"budget = {self.budget!r}: expected a value in (0, 1]")
        if self.pattern not in ("linear", "all_to_all"):
            raise ConfigError(f"pattern = {self.pattern!r}: expected 'linear' or 'all_to_all'")
        if self.verification not in ("spot_check", "full_recompute", "robust_only"):
            raise ConfigError(
                f"verification = {self.verification!r}: expected spot_check, full_recompute "
                "or robust_only"
            )
        try:
            ids = self.byzantine_validator_ids
        except ValueError:
            raise ConfigError(
                f"byzantine_validators = {self.byzantine_validators!r}: expected "
                "comma-separated integers"
            ) from None
        if any(not 0 <= i < self.validators for i in ids) or len(set(ids)) != len(ids):
            raise ConfigError(
                f"byzantine_validators = {self.byzantine_validators!r}: expected distinct "
                f"indices in [0, {self.validators})"
            )
        f = (self.validators - 1) // 3
        if len(ids) > f and not self.beyond_f:
            raise ConfigError(
                f"byzantine_validators = {self.byzantine_validators!r}: {len(ids)} Byzantine of "
                f"{self.validators} validators is more than f = {f}; PBFT cannot commit. Add "
                "--beyond-f to run it anyway and watch it stop"
            )
        if not self.chain_id or len(self.chain_id.encode()) > 64:
            raise ConfigError(f"chain_id = {self.chain_id!r}: expected 1 to 64 bytes")
        if not isinstance(self.keys, str) or not self.keys:
            raise ConfigError(
                f"keys = {self.keys!r}: expected 'random', 'derived' or a key directory"
            )
        if self.key_directory is not None:
            run_dir = os.path.abspath(self.run_dir)
            key_dir = os.path.abspath(self.key_directory)
            if os.path.commonpath([run_dir, key_dir]) in (run_dir, key_dir):
                raise ConfigError(
                    f"keys = {self.keys!r} and run_dir = {self.run_dir!r} overlap: secret keys "
                    "never live inside a run directory, nor a run inside a key directory"
                )

    @property
    def key_directory(self) -> str | None:
        """The key directory ``keys`` names, or None for 'random' and 'derived'."""
        return None if self.keys in ("random", "derived") else self.keys

    @property
    def byzantine_validator_ids(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.byzantine_validators.split(",") if p.strip())
