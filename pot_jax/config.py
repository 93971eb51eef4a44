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
# Fields holding a component spec, which may name code by import path (pot_jax.registry).
COMPONENT_FIELDS = (
    "dataset",
    "model",
    "aggregation",
    "attack",
    "verification",
    "validator_strategy",
)


class ConfigError(ValueError):
    """A config field holds a value outside what it accepts."""


def _help(text: str, default: Any = dataclasses.MISSING, *, registry: str = "", **kw) -> Any:
    return field(default=default, metadata={"help": text, "registry": registry}, **kw)


def registry(kind: str):
    """The registry of one component kind (imported late: config imports no component)."""
    if kind == "attack":
        from pot_jax.attacks.workers import ATTACKS

        return ATTACKS
    if kind == "aggregation":
        from pot_jax.learning.aggregation import RULES

        return RULES
    if kind == "verification":
        from pot_jax.verification.schemes import SCHEMES

        return SCHEMES
    if kind == "model":
        from pot_jax.learning.models import MODELS

        return MODELS
    if kind == "dataset":
        from pot_jax.learning.datasets import DATASETS

        return DATASETS
    if kind == "validator_strategy":
        import pot_jax.protocol.behaviours  # noqa: F401  (registers the role behaviours)
        from pot_jax.network.byzantine import BEHAVIOURS

        return BEHAVIOURS
    raise KeyError(kind)


_MODEL_ARGS = ("input_shape", "num_classes", "hidden", "channels", "dense")


def _canonical_component(config, name: str, *, extra=None) -> None:
    """Check a component spec field and store its canonical text (what the genesis signs)."""
    flag = "--" + name.replace("_", "-")
    text = getattr(config, name)
    parts = text.split("+") if name == "validator_strategy" else [text]
    try:
        canonical = "+".join(registry(name).check(p, flag=flag, extra=extra) for p in parts)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    object.__setattr__(config, name, canonical)


@dataclass(frozen=True)
class _LearningConfig:
    """The learning fields every run shares (not used on its own)."""

    dataset: str = _help(
        "dataset, NAME[:key=value,...] or package.module:factory (mnist, fashion_mnist and "
        "cifar10 read --data-dir)",
        "mnist1d",
        registry="dataset",
    )
    data_dir: str | None = _help("directory holding the files of mnist/fashion_mnist/cifar10", None)
    num_samples: int = _help("MNIST-1D examples to generate (train + test, 80/20 split)", 5000)
    model: str = _help(
        "model, NAME[:key=value,...] or package.module:factory (sizes: --hidden, --channels)",
        "mlp",
        registry="model",
    )
    hidden: tuple[int, ...] = _help("MLP hidden widths, comma separated", (256, 256))
    channels: tuple[int, ...] = _help("CNN channels per conv block, comma separated", (16, 32))
    workers: int = _help("number of data-parallel workers W", 16)
    batch_size: int = _help("examples per worker per round B", 8)
    rounds: int = _help("training rounds (one optimizer step each)", 8000)
    optimizer: str = _help("optax optimizer: sgd (the paper's rule), momentum or adam", "sgd")
    learning_rate: float = _help("optimizer learning rate", 0.2)
    aggregation: str = _help(
        "aggregation rule over worker gradients, NAME[:key=value,...] or package.module:factory "
        "(mean is the paper's)",
        "mean",
        registry="aggregation",
    )
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
        _canonical_component(self, "aggregation")
        _canonical_component(self, "model", extra=dict.fromkeys(_MODEL_ARGS))
        _canonical_component(self, "dataset", extra={"data_dir": None, "seed": None})
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
        names = ""
        if f.metadata.get("registry"):
            names = "; names: " + ", ".join(registry(f.metadata["registry"]).names())
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            metavar=metavar,
            default=argparse.SUPPRESS,
            help=f"{f.metadata.get('help', '')} (default: {default!r}{names})",
        )


def load_config_file(path: str, cls) -> dict[str, Any]:
    """Config fields from a JSON or TOML file.

    The file holds the fields themselves, or is a run's ``config.json`` (its
    signed ``genesis.config`` plus the local fields it ran with, or a
    baseline's ``config`` section), so ``--config runs/pot/config.json``
    repeats that run.
    """
    import json
    import tomllib

    try:
        raw = open(path, "rb").read()
        obj = tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"config {path}: cannot read it as {'TOML' if path.endswith('.toml') else 'JSON'} ({err})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("genesis"), dict):
        local = obj.get("metadata", {}).get("local", {})
        obj = {
            **obj["genesis"].get("config", {}),
            **{k: v for k, v in local.items() if k != "run_dir"},
        }
    elif isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        obj = {k: v for k, v in obj["config"].items() if k != "run_dir"}
    if not isinstance(obj, dict):
        raise ConfigError(f"config {path}: expected a table of config fields")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj) - names)
    if unknown:
        raise ConfigError(
            f"config {path}: unknown fields {unknown}; the fields are the flags' names"
        )
    return {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()}


def config_from_args(cls, namespace: argparse.Namespace, **overrides):
    """Build ``cls`` from ``--config FILE`` (if given) and parsed flags, flags winning.

    Unset flags keep the file's values, then the dataclass defaults.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    if getattr(namespace, "config", None):
        values.update(load_config_file(namespace.config, cls))
    values.update({k: v for k, v in vars(namespace).items() if k in names})
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
        "aggregation rule of the accepted gradients, [PRE+]RULE[:key=value,...] or "
        "package.module:factory (e.g. krum:f=3, nnm+krum:f=3 with a pre-aggregator nnm, "
        "bucketing, clipping or arc; mean is the paper's)",
        "mean",
        registry="aggregation",
    )
    eval_every: int = _help("rounds between test-accuracy evaluations", 250)
    run_dir: str = _help("directory for the transcript, config, metrics and summary", "runs/pot")
    validators: int = _help("consensus validators n (f = (n-1)//3 tolerated)", 4)
    byzantine_validators: str = _help(
        "comma-separated indices of Byzantine validators (index 0 is the first primary)", "0"
    )
    validator_strategy: str = _help(
        "what Byzantine validators do, NAME[:key=value,...] or package.module:factory; '+' "
        "combines",
        "silent",
        registry="validator_strategy",
    )
    beyond_f: bool = _help(
        "allow more than f = (validators-1)//3 Byzantine validators, to watch PBFT lose its "
        "quorum: the run stops at the first round that cannot commit, its transcript intact",
        False,
    )
    pattern: str = _help("PBFT message pattern: linear (collector QCs) or all_to_all", "linear")
    byzantine_fraction: float = _help("fraction of workers that are Byzantine", 0.25)
    attack: str = _help(
        "what Byzantine workers do, NAME[:key=value,...] or package.module:factory "
        "(e.g. scaled:factor=-4); an attack that searches against a rule (optimal_alie, "
        "optimal_ipm) targets --aggregation unless given rule=RULE (';' between its parameters)",
        "alie",
        registry="attack",
    )
    verification: str = _help(
        "verification scheme, NAME[:key=value,...] or package.module:factory",
        "spot_check",
        registry="verification",
    )
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
    worker_churn: float = _help(
        "probability that a training node is down in a round (crashed or churned away): it "
        "sends nothing and is rejected as no_submission, never slashed",
        0.0,
    )
    submission_deadline: float = _help(
        "network delays after a round starts by which a submission must reach a validator "
        "(one delay = the mean message latency); later ones are rejected as no_submission",
        2.0,
    )
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
        if not 0 <= self.worker_churn < 1:
            raise ConfigError(
                f"worker_churn = {self.worker_churn!r}: expected a probability in [0, 1)"
            )
        if not (self.submission_deadline > 0 and math.isfinite(self.submission_deadline)):
            raise ConfigError(
                f"submission_deadline = {self.submission_deadline!r}: expected a positive "
                "number of network delays"
            )
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
        self._check_attack()
        _canonical_component(self, "validator_strategy")
        run_level = {
            "budget": self.budget,
            "mode": self.mode,
            "threshold": None,
            "aggregation": None,
        }
        _canonical_component(self, "verification", extra=run_level)
        self._check_ignored_flags()
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

    def _check_attack(self) -> None:
        """Canonical attack spec, built once so a bad parameter fails here, not in round 0.

        An attack that searches against an aggregation rule and names none
        gets the run's ``aggregation`` (``pot_jax.attacks.attack_defaults``).
        """
        from pot_jax.attacks.workers import attack_defaults, build_attack

        try:
            defaults = attack_defaults(self.attack, aggregation=self.aggregation)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        _canonical_component(self, "attack", extra=defaults)
        try:
            build_attack(self.attack, aggregation=self.aggregation)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def _check_ignored_flags(self) -> None:
        """A run-level flag the chosen scheme does not read is an error, not a silent no-op."""
        schemes = registry("verification")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in ("budget", "mode", "tolerance_threshold"):
            reads = "threshold" if name == "tolerance_threshold" else name
            if getattr(self, name) != defaults[name] and not schemes.accepts(
                self.verification, reads, flag="--verification"
            ):
                raise ConfigError(
                    f"{name} = {getattr(self, name)!r}: --verification {self.verification} "
                    f"does not use --{name.replace('_', '-')}; drop it"
                )

    @property
    def key_directory(self) -> str | None:
        """The key directory ``keys`` names, or None for 'random' and 'derived'."""
        return None if self.keys in ("random", "derived") else self.keys

    @property
    def byzantine_validator_ids(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.byzantine_validators.split(",") if p.strip())
