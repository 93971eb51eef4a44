"""Datasets for Proof-of-Training runs, as in-memory numpy arrays.

The default, MNIST-1D (Greydanus & Kobak, 2020), is generated locally by the
``mnist1d`` package, so nothing is downloaded. A random-teacher task gives a
tiny, exactly reproducible problem for fast tests. MNIST, Fashion-MNIST (IDX
files) and CIFAR-10 (python pickles) are read from local directories only.

Every dataset comes back as a frozen :class:`Dataset` of read-only arrays:
inputs float32 in NHWC (or ``(length, channels)`` for sequences), labels int32.
Worker shards are index arrays from :func:`iid_partition`,
:func:`dirichlet_partition` (label-skewed, non-IID) or
:func:`gamma_similarity_partition` (ByzFL's heterogeneity levels).
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import gzip
import hashlib
import importlib.metadata
import json
import math
import os
import pickle
import random
import struct
import tempfile
import threading
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pot_jax.registry import Registry, parse_spec

__all__ = [
    "CACHE_ENV_VAR",
    "DATASET_NAMES",
    "DEFAULT_DATASET",
    "Dataset",
    "DatasetFormatError",
    "cache_dir",
    "dirichlet_partition",
    "gamma_similarity_partition",
    "iid_partition",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_mnist1d",
    "make_teacher_dataset",
    "read_idx",
]

DATASET_NAMES: tuple[str, ...] = ("mnist1d", "teacher", "mnist", "fashion_mnist", "cifar10")
DEFAULT_DATASET = "mnist1d"
CACHE_ENV_VAR = "POT_JAX_CACHE"
_DEFAULT_CACHE_DIR = Path("~/.cache/pot_jax")
_CACHE_FORMAT_VERSION = 1


class DatasetFormatError(ValueError):
    """A dataset file exists but its contents are not in the expected format."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held in memory.

    ``x_*`` are float32 with per-example shape ``input_shape`` (images NHWC,
    standardised with training-set statistics); ``y_*`` are int32 class indices
    in ``[0, num_classes)``. Equality is identity: the arrays are not compared.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        shape = tuple(self.input_shape)
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                raise ValueError(
                    f"dataset {self.name!r}: x_{split} must be a float32 numpy array, "
                    f"got {type(x).__name__} of dtype {getattr(x, 'dtype', None)}"
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int32:
                raise ValueError(
                    f"dataset {self.name!r}: y_{split} must be an int32 numpy array, "
                    f"got {type(y).__name__} of dtype {getattr(y, 'dtype', None)}"
                )
            if x.shape[1:] != shape:
                raise ValueError(
                    f"dataset {self.name!r}: x_{split} has per-example shape {x.shape[1:]}, "
                    f"input_shape says {shape}"
                )
            if y.shape != (x.shape[0],):
                raise ValueError(
                    f"dataset {self.name!r}: y_{split} has shape {y.shape}, expected "
                    f"({x.shape[0]},) to match x_{split}"
                )
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"dataset {self.name!r}: y_{split} has labels in [{y.min()}, {y.max()}], "
                    f"expected [0, {self.num_classes})"
                )
        object.__setattr__(self, "input_shape", shape)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n_train={self.n_train}, n_test={self.n_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def load_dataset(
    name: str = DEFAULT_DATASET,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """Load a dataset by name.

    Args:
      name: one of :data:`DATASET_NAMES`.
      data_dir: directory holding the files of ``mnist``, ``fashion_mnist`` and
        ``cifar10`` (or a parent of their conventional sub-directory); ignored
        by the generated datasets.
      seed: seeds the ``teacher`` task. MNIST-1D is a fixed benchmark: its
        generator seed is the option ``data_seed`` (default 42, the published
        one), so ``seed`` does not change it; file datasets ignore ``seed``.
      **options: ``mnist1d``: ``num_samples`` (5000), ``data_seed`` (42),
        ``train_split`` (0.8), ``cache`` (True: also cache on disk).
        ``teacher``: ``n_train`` (4000), ``n_test`` (1000), ``dim`` (20),
        ``num_classes`` (10), ``hidden`` (0 = linear teacher).
        File datasets take no options.

    Returns:
      The :class:`Dataset`.
    """
    spec = parse_spec(name, flag="--dataset")
    if spec.name not in DATASET_NAMES:  # a registered or imported dataset factory
        return DATASETS.build(name, flag="--dataset", data_dir=data_dir, seed=seed, **options)
    options = {**options, **spec.kwargs}
    name = spec.name
    if name == "mnist1d":
        return load_mnist1d(**_check_options(name, options, _MNIST1D_OPTIONS))
    if name == "teacher":
        return make_teacher_dataset(seed=seed, **_check_options(name, options, _TEACHER_OPTIONS))
    _check_options(name, options, ())
    if data_dir is None:
        raise ValueError(
            f"dataset {name!r} is read from local files and needs data_dir: the directory "
            f"holding {_describe_expected_files(name)} (or a parent of it); nothing is downloaded"
        )
    if name == "mnist":
        return load_mnist(data_dir)
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    return load_cifar10(data_dir)


def _builtin(name: str) -> Callable[..., Dataset]:
    def load(*, data_dir=None, seed: int = 0, **options) -> Dataset:
        return load_dataset(name, data_dir=data_dir, seed=seed, **options)

    load.__name__ = name
    return load


# A dataset factory takes data_dir and seed as keywords (plus its own parameters) and
# returns a Dataset; register yours with register_dataset.
DATASETS = Registry("dataset", {name: _builtin(name) for name in DATASET_NAMES})


def register_dataset(name: str, factory: Callable[..., Dataset]) -> None:
    """Make a dataset factory selectable as ``--dataset NAME[:params]`` (and in audits)."""
    DATASETS.register(name, factory)


_MNIST1D_OPTIONS = ("num_samples", "data_seed", "train_split", "cache")
_TEACHER_OPTIONS = ("n_train", "n_test", "dim", "num_classes", "hidden")


def _check_options(name: str, options: Mapping[str, Any], valid: tuple[str, ...]) -> dict:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        accepted = ", ".join(valid) if valid else "none"
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; accepted options: "
            f"{accepted}"
        )
    return dict(options)


# ---------------------------------------------------------------------------
# MNIST-1D, generated locally.


def cache_dir() -> Path:
    """The on-disk cache root: ``$POT_JAX_CACHE``, else ``~/.cache/pot_jax``."""
    configured = os.environ.get(CACHE_ENV_VAR)
    return Path(configured).expanduser() if configured else _DEFAULT_CACHE_DIR.expanduser()


def load_mnist1d(
    *,
    num_samples: int = 5000,
    data_seed: int = 42,
    train_split: float = 0.8,
    cache: bool = True,
) -> Dataset:
    """MNIST-1D from the ``mnist1d`` generator (no download).

    The defaults reproduce the published benchmark: 5000 sequences of length
    40, 4000 for training and 1000 for testing, generator seed 42. The
    generator already centres and scales the whole set to unit variance; that
    normalisation is kept so results compare with the benchmark's.
    Arrays are cached in-process and, when ``cache`` is true, on disk under
    :func:`cache_dir`.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise ValueError(f"mnist1d num_samples must be an int, got {num_samples!r}")
    if num_samples < 10 or num_samples % 10:
        raise ValueError(
            f"mnist1d num_samples must be a positive multiple of 10 (the generator makes "
            f"num_samples // 10 examples of each digit); got {num_samples}"
        )
    if isinstance(data_seed, bool) or not isinstance(data_seed, int) or not 0 <= data_seed < 2**32:
        raise ValueError(f"mnist1d data_seed must be an int in [0, 2**32), got {data_seed!r}")
    train_split = float(train_split)
    n_train = int(num_samples * train_split)
    if not 0 < n_train < num_samples:
        raise ValueError(
            f"mnist1d train_split={train_split} leaves {n_train} of {num_samples} examples for "
            f"training; expected a fraction in (0, 1) leaving both splits non-empty"
        )
    directory = str(cache_dir() / "datasets") if cache else None
    arrays = _mnist1d_arrays(num_samples, data_seed, train_split, directory)
    return Dataset(
        name="mnist1d",
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        num_classes=10,
        input_shape=arrays["x_train"].shape[1:],
    )


_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
# make_dataset reseeds numpy's and python's global RNGs; this lock keeps two of
# our own generations from interleaving their save/restore of that state.
_GLOBAL_RNG_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(
    num_samples: int, data_seed: int, train_split: float, directory: str | None
) -> dict[str, np.ndarray]:
    """Generated (or disk-cached) MNIST-1D arrays, read-only, cached in-process."""
    args = _mnist1d_args(num_samples, data_seed, train_split)
    path = None
    arrays = None
    if directory is not None:
        path = Path(directory) / _mnist1d_cache_name(args)
        arrays = _read_cached_arrays(path, num_samples, args["final_seq_length"])
    if arrays is None:
        arrays = _generate_mnist1d(args)
        if path is not None:
            _write_cached_arrays(path, arrays)
    for array in arrays.values():
        array.setflags(write=False)
    return arrays


def _mnist1d_args(num_samples: int, data_seed: int, train_split: float) -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # only get_dataset (the downloader) uses it
    args.update(num_samples=num_samples, seed=data_seed, train_split=train_split)
    return args


def _mnist1d_cache_name(args: Mapping[str, Any]) -> str:
    key = {
        "format": _CACHE_FORMAT_VERSION,
        "generator": f"mnist1d=={importlib.metadata.version('mnist1d')}",
        "args": dict(args),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"mnist1d-n{args['num_samples']}-seed{args['seed']}-{digest}.npz"


def _generate_mnist1d(args: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset`` without leaking its global reseeding."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    with _GLOBAL_RNG_LOCK:
        # The legacy global RNG is exactly what must be saved and restored here.
        numpy_state = np.random.get_state()  # noqa: NPY002
        python_state = random.getstate()
        try:
            raw = make_dataset(ObjectView(dict(args)))
        finally:
            np.random.set_state(numpy_state)  # noqa: NPY002
            random.setstate(python_state)
    return {
        "x_train": np.ascontiguousarray(raw["x"], dtype=np.float32)[..., None],
        "y_train": np.asarray(raw["y"], dtype=np.int32),
        "x_test": np.ascontiguousarray(raw["x_test"], dtype=np.float32)[..., None],
        "y_test": np.asarray(raw["y_test"], dtype=np.int32),
    }


def _read_cached_arrays(path: Path, num_samples: int, length: int) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: np.array(archive[key]) for key in _ARRAY_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(
            f"ignoring unreadable MNIST-1D cache file {path} ({error}); regenerating",
            stacklevel=4,
        )
        return None
    n_train, n_test = arrays["y_train"].shape[0], arrays["y_test"].shape[0]
    consistent = (
        arrays["x_train"].dtype == np.float32
        and arrays["x_test"].dtype == np.float32
        and arrays["y_train"].dtype == np.int32
        and arrays["y_test"].dtype == np.int32
        and arrays["x_train"].shape == (n_train, length, 1)
        and arrays["x_test"].shape == (n_test, length, 1)
        and n_train + n_test == num_samples
    )
    if not consistent:
        warnings.warn(
            f"ignoring MNIST-1D cache file {path}: its arrays do not have the shapes and dtypes "
            f"of {num_samples} float32 sequences of length {length}; regenerating",
            stacklevel=4,
        )
        return None
    return arrays


def _write_cached_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write atomically (temporary file, then rename); a failure only warns."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as handle:
            temporary = Path(handle.name)
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        warnings.warn(f"could not write MNIST-1D cache file {path}: {error}", stacklevel=4)
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# Random-teacher task.


def make_teacher_dataset(
    *,
    seed: int = 0,
    n_train: int = 4000,
    n_test: int = 1000,
    dim: int = 20,
    num_classes: int = 10,
    hidden: int = 0,
) -> Dataset:
    """Gaussian inputs labelled by a fixed random teacher network.

    The label is the argmax of the teacher's logits: a linear map (``hidden=0``;
    the task is then linearly separable) or a one-hidden-layer tanh network
    with ``hidden`` units. The teacher's columns are orthonormal where the
    dimensions allow, so with isotropic inputs the linear teacher's classes are
    exactly equiprobable; the two-layer teacher's logits are centred and scaled
    per class on a calibration sample so its classes are roughly balanced.
    Teacher, training inputs and test inputs come from independent streams of
    ``seed``, so changing ``n_train`` changes neither the teacher nor the test set.
    """
    for option, value, low in (
        ("n_train", n_train, 1),
        ("n_test", n_test, 1),
        ("dim", dim, 1),
        ("num_classes", num_classes, 2),
        ("hidden", hidden, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"teacher option {option} must be an int >= {low}, got {value!r}")
    teacher_seed, train_seed, test_seed = np.random.SeedSequence(seed).spawn(3)
    teacher = _random_teacher(np.random.default_rng(teacher_seed), dim, num_classes, hidden)

    def draw(stream: np.random.SeedSequence, n: int) -> tuple[np.ndarray, np.ndarray]:
        x_NxD = np.random.default_rng(stream).standard_normal((n, dim), dtype=np.float32)
        y_N = np.argmax(teacher(x_NxD.astype(np.float64)), axis=1).astype(np.int32)
        return x_NxD, y_N

    x_train, y_train = draw(train_seed, n_train)
    x_test, y_test = draw(test_seed, n_test)
    for array in (x_train, y_train, x_test, y_test):
        array.setflags(write=False)
    return Dataset(
        name="teacher",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        input_shape=(dim,),
    )


def _unit_columns(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Orthonormal columns if rows >= cols, else independent unit-norm columns."""
    gaussian = rng.standard_normal((rows, cols))
    if rows >= cols:
        q, r = np.linalg.qr(gaussian)
        return q * np.where(np.diag(r) < 0, -1.0, 1.0)  # sign fix: Haar-distributed
    return gaussian / np.linalg.norm(gaussian, axis=0, keepdims=True)


def _random_teacher(rng: np.random.Generator, dim: int, num_classes: int, hidden: int):
    if hidden == 0:
        readout_DxC = _unit_columns(rng, dim, num_classes)
        return lambda x_NxD: x_NxD @ readout_DxC
    layer_DxH = _unit_columns(rng, dim, hidden)
    readout_HxC = _unit_columns(rng, hidden, num_classes)

    def raw_logits(x_NxD: np.ndarray) -> np.ndarray:
        return np.tanh(x_NxD @ layer_DxH) @ readout_HxC

    calibration_C = raw_logits(rng.standard_normal((4096, dim)))
    mean_C = calibration_C.mean(axis=0)
    scale_C = np.maximum(calibration_C.std(axis=0), 1e-12)
    return lambda x_NxD: (raw_logits(x_NxD) - mean_C) / scale_C


# ---------------------------------------------------------------------------
# Local image datasets: MNIST and Fashion-MNIST (IDX), CIFAR-10 (pickles).

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (count, rows, columns)
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (count)
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Sub-directories tried before data_dir itself (torchvision's layout included).
_IDX_SUBDIRS = {
    "mnist": ("mnist", "MNIST/raw"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"),
}
_CIFAR_SUBDIR = "cifar-10-batches-py"
_CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_FILE = "test_batch"
_GZIP_MAGIC = b"\x1f\x8b"


def _describe_expected_files(name: str) -> str:
    if name == "cifar10":
        files = ", ".join((*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE))
        return f"{files} (in a {_CIFAR_SUBDIR} folder)"
    return ", ".join(f"{stem}[.gz]" for stem in _IDX_FILES.values())


def _regular_file(path: Path) -> None:
    """A FIFO would block a reader and a device never end: data files must be regular files."""
    if path.exists() and not path.is_file():
        raise DatasetFormatError(f"{path} is not a regular file (a FIFO, device or directory)")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic."""
    _regular_file(path)
    data = path.read_bytes()
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetFormatError(f"{path}: corrupt or truncated gzip data ({error})") from error


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array of native byte order.

    Raises:
      DatasetFormatError: bad magic number, unknown element type, zero
        dimensions, or a size that does not match the header.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), str(path))


def _parse_idx(data: bytes, source: str) -> np.ndarray:
    if len(data) < 4:
        raise DatasetFormatError(
            f"{source}: IDX file is truncated: {len(data)} bytes, shorter than the 4-byte magic "
            f"number"
        )
    magic = data[:4].hex()
    type_code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise DatasetFormatError(
            f"{source}: bad IDX magic number 0x{magic}; expected 0x0000TTNN with element type "
            f"TT in {{{known}}} and NN dimensions"
        )
    if ndim == 0:
        raise DatasetFormatError(f"{source}: IDX magic number 0x{magic} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(
            f"{source}: IDX file is truncated: {len(data)} bytes, but the header of a "
            f"{ndim}-dimensional array needs {header}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[type_code]
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "longer than its header says"
        raise DatasetFormatError(
            f"{source}: IDX file is {problem}: header declares shape {dims} of {dtype.name} "
            f"({expected} bytes in all), file has {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _read_idx_expecting(path: Path, magic: int, what: str) -> np.ndarray:
    data = _read_bytes(path)
    if len(data) >= 4 and int.from_bytes(data[:4], "big") != magic:
        raise DatasetFormatError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()}, expected 0x{magic:08x} ({what})"
        )
    return _parse_idx(data, str(path))


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte
    for candidate in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def _search_dirs(data_dir: str | os.PathLike[str], subdirs: tuple[str, ...]) -> list[Path]:
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} does not exist or is not a directory")
    return [root / sub for sub in subdirs] + [root]


def _missing_files_error(name: str, searched: list[Path], missing: dict[Path, list[str]]):
    lines = [
        f"dataset {name!r}: expected files {_describe_expected_files(name)} together in one "
        f"directory; searched:"
    ]
    for directory in searched:
        if directory.is_dir():
            lines.append(f"  {directory}: missing {', '.join(missing[directory])}")
        else:
            lines.append(f"  {directory}: no such directory")
    lines.append("pot-jax does not download datasets; place the files in one of these directories.")
    return FileNotFoundError("\n".join(lines))


def _load_idx_dataset(name: str, data_dir: str | os.PathLike[str]) -> Dataset:
    searched = _search_dirs(data_dir, _IDX_SUBDIRS[name])
    missing: dict[Path, list[str]] = {}
    found: dict[str, Path] | None = None
    for directory in searched:
        if not directory.is_dir():
            continue
        paths = {key: _find_idx_file(directory, stem) for key, stem in _IDX_FILES.items()}
        missing[directory] = [
            f"{_IDX_FILES[key]}[.gz]" for key, path in paths.items() if path is None
        ]
        if not missing[directory]:
            found = {key: path for key, path in paths.items() if path is not None}
            break
    if found is None:
        raise _missing_files_error(name, searched, missing)

    images = {}
    labels = {}
    for split in ("train", "test"):
        images_path, labels_path = found[f"{split}_images"], found[f"{split}_labels"]
        images[split] = _read_idx_expecting(
            images_path,
            _IDX_IMAGES_MAGIC,
            "unsigned-byte images, 3 dimensions: count, rows, columns",
        )
        labels[split] = _read_idx_expecting(
            labels_path, _IDX_LABELS_MAGIC, "unsigned-byte labels, 1 dimension: count"
        )
        if images[split].shape[0] != labels[split].shape[0]:
            raise DatasetFormatError(
                f"{images_path} holds {images[split].shape[0]} images but {labels_path} holds "
                f"{labels[split].shape[0]} labels; expected the same count"
            )
        if labels[split].size and labels[split].max() >= 10:
            raise DatasetFormatError(
                f"{labels_path}: label {labels[split].max()} out of range; expected 0..9"
            )
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise DatasetFormatError(
            f"{found['train_images']} has images of shape {images['train'].shape[1:]} but "
            f"{found['test_images']} has {images['test'].shape[1:]}; expected the same"
        )
    x_train, x_test = _standardize_images(images["train"][..., None], images["test"][..., None])
    return _image_dataset(name, x_train, labels["train"], x_test, labels["test"])


def load_mnist(data_dir: str | os.PathLike[str]) -> Dataset:
    """MNIST from the four IDX files (optionally gzipped) under ``data_dir``.

    ``data_dir`` may hold the files directly or in ``mnist/`` or ``MNIST/raw/``.
    Images become (28, 28, 1), scaled to [0, 1] and standardised with the
    training set's mean and standard deviation.
    """
    return _load_idx_dataset("mnist", data_dir)


def load_fashion_mnist(data_dir: str | os.PathLike[str]) -> Dataset:
    """Fashion-MNIST, laid out and normalised exactly as :func:`load_mnist`.

    ``data_dir`` may hold the files directly or in ``fashion_mnist/``,
    ``fashion-mnist/`` or ``FashionMNIST/raw/``.
    """
    return _load_idx_dataset("fashion_mnist", data_dir)


def load_cifar10(data_dir: str | os.PathLike[str]) -> Dataset:
    """CIFAR-10 from the python pickles (data_batch_1..5, test_batch).

    ``data_dir`` may be the ``cifar-10-batches-py`` folder or its parent.
    Images become NHWC (32, 32, 3), scaled to [0, 1] and standardised per
    channel with the training set's statistics. The pickles are read with an
    unpickler that admits only numpy arrays, so a hostile file cannot run code.
    """
    searched = _search_dirs(data_dir, (_CIFAR_SUBDIR,))
    names = (*_CIFAR_TRAIN_FILES, _CIFAR_TEST_FILE)
    missing: dict[Path, list[str]] = {}
    directory = None
    for candidate in searched:
        if candidate.is_dir():
            missing[candidate] = [name for name in names if not (candidate / name).is_file()]
            if not missing[candidate]:
                directory = candidate
                break
    if directory is None:
        raise _missing_files_error("cifar10", searched, missing)
    train = [_read_cifar_batch(directory / name) for name in _CIFAR_TRAIN_FILES]
    images_train = np.concatenate([images for images, _ in train])
    labels_train = np.concatenate([labels for _, labels in train])
    images_test, labels_test = _read_cifar_batch(directory / _CIFAR_TEST_FILE)
    x_train, x_test = _standardize_images(images_train, images_test)
    return _image_dataset("cifar10", x_train, labels_train, x_test, labels_test)


def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    sample = np.zeros(1, dtype=np.uint8)
    reconstruct = sample.__reduce__()[0]
    frombuffer = sample.__reduce_ex__(5)[0]
    scalar = np.int64(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # python 3 protocol-2 pickles of bytes
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArraysOnlyUnpickler(pickle.Unpickler):
    _allowed = _numpy_reconstructors()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only numpy arrays, "
                f"lists, bytes and numbers"
            ) from None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch as (images NHWC uint8, labels int64)."""
    _regular_file(path)
    try:
        with path.open("rb") as handle:
            batch = _ArraysOnlyUnpickler(handle, encoding="bytes").load()
    except Exception as error:  # garbage makes the unpickler raise almost anything
        raise DatasetFormatError(
            f"{path}: not a CIFAR-10 python pickle ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(batch, dict):
        raise DatasetFormatError(
            f"{path}: unpickled a {type(batch).__name__}, expected a dict with b'data' and "
            f"b'labels'"
        )

    def entry(key: str) -> Any:
        for candidate in (key.encode(), key):
            if candidate in batch:
                return batch[candidate]
        raise DatasetFormatError(
            f"{path}: batch has keys {sorted(map(repr, batch))}, expected b'data' and b'labels'"
        )

    data = entry("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetFormatError(
            f"{path}: b'data' is {type(data).__name__} {getattr(data, 'dtype', '')} of shape "
            f"{getattr(data, 'shape', '?')}, expected a uint8 array of shape (N, 3072)"
        )
    if data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(
            f"{path}: b'data' has shape {data.shape}, expected (N, 3072): 3 channels of 32x32"
        )
    try:
        labels = np.asarray(entry("labels"))
    except (TypeError, ValueError) as error:
        raise DatasetFormatError(f"{path}: b'labels' is not a list of integers") from error
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFormatError(
            f"{path}: b'labels' has shape {labels.shape} and dtype {labels.dtype}, expected "
            f"{data.shape[0]} integers (one per image)"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise DatasetFormatError(
            f"{path}: labels span [{labels.min()}, {labels.max()}], expected 0..9"
        )
    images_NHWC = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are channel-major
    return np.ascontiguousarray(images_NHWC), labels.astype(np.int64)


def _standardize_images(
    train_NHWC: np.ndarray, test_NHWC: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 -> [0, 1] -> per-channel standardisation with training statistics.

    Statistics are exact (from per-channel histograms of the 256 pixel values)
    and need no float64 copy of the images.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    channels = train_NHWC.shape[-1]
    mean_C = np.empty(channels)
    std_C = np.empty(channels)
    for channel in range(channels):
        counts = np.bincount(train_NHWC[..., channel].ravel(), minlength=256).astype(np.float64)
        total = max(counts.sum(), 1.0)
        mean_C[channel] = counts @ values / total
        std_C[channel] = math.sqrt(counts @ (values - mean_C[channel]) ** 2 / total)
    std_C[std_C == 0] = 1.0  # constant channel: centre only
    scale = np.float32(1 / 255)
    outputs = []
    for images in (train_NHWC, test_NHWC):
        x = images.astype(np.float32)
        x *= scale
        x -= mean_C.astype(np.float32)
        x /= std_C.astype(np.float32)
        outputs.append(x)
    return outputs[0], outputs[1]


def _image_dataset(
    name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Dataset:
    arrays = [x_train, y_train.astype(np.int32), x_test, y_test.astype(np.int32)]
    for array in arrays:
        array.setflags(write=False)
    return Dataset(name, *arrays, num_classes=10, input_shape=x_train.shape[1:])


# ---------------------------------------------------------------------------
# Partitioning across workers.


def _check_workers(n: int, n_workers: int) -> None:
    if isinstance(n_workers, bool) or not isinstance(n_workers, int | np.integer):
        raise ValueError(f"n_workers must be an int, got {n_workers!r}")
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if n < n_workers:
        raise ValueError(
            f"cannot give each of {n_workers} workers at least one of {n} examples; "
            f"expected n_workers <= {n}"
        )


def iid_partition(n: int, n_workers: int, seed: int) -> list[np.ndarray]:
    """Split ``range(n)`` uniformly at random into ``n_workers`` shards.

    Shard sizes differ by at most one; each shard's indices are sorted
    (int64). Deterministic in ``seed``.
    """
    _check_workers(n, n_workers)
    permutation = np.random.default_rng(seed).permutation(n)
    return [np.sort(shard).astype(np.int64) for shard in np.array_split(permutation, n_workers)]


def dirichlet_partition(
    labels: np.ndarray, n_workers: int, alpha: float | None, seed: int
) -> list[np.ndarray]:
    """Label-skewed (non-IID) shards: per class, worker shares ~ Dirichlet(alpha).

    For each class the examples are shuffled and split among the workers in
    proportions drawn from a symmetric Dirichlet(alpha): small ``alpha``
    gives each worker few classes, large ``alpha`` approaches IID, and
    ``alpha`` of ``None`` or ``inf`` is exactly :func:`iid_partition`. A worker
    left empty receives a random example of the largest shard, so every shard
    is non-empty. Each index appears in exactly one shard; shards are sorted
    int64 arrays; the result is deterministic in ``seed``.
    """
    labels_N = np.asarray(labels)
    if labels_N.ndim != 1 or not np.issubdtype(labels_N.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got shape {labels_N.shape} of {labels_N.dtype}"
        )
    n = labels_N.shape[0]
    _check_workers(n, n_workers)
    if alpha is None:
        return iid_partition(n, n_workers, seed)
    try:
        concentration = float(alpha)
    except (TypeError, ValueError):
        concentration = math.nan
    if not concentration > 0:
        raise ValueError(f"alpha must be > 0 (or None / inf for IID), got {alpha!r}")
    if math.isinf(concentration):
        return iid_partition(n, n_workers, seed)

    rng = np.random.default_rng(seed)
    owner_N = np.empty(n, dtype=np.int64)
    for label in np.unique(labels_N):
        members = np.flatnonzero(labels_N == label)
        rng.shuffle(members)
        shares_W = rng.dirichlet(np.full(n_workers, concentration))
        if not np.all(np.isfinite(shares_W)) or shares_W.sum() <= 0:
            shares_W = np.zeros(n_workers)
            shares_W[rng.integers(n_workers)] = 1.0
        cuts = np.floor(np.cumsum(shares_W)[:-1] * members.size).astype(np.int64)
        for worker, part in enumerate(np.split(members, np.clip(cuts, 0, members.size))):
            owner_N[part] = worker

    sizes_W = np.bincount(owner_N, minlength=n_workers)
    for worker in np.flatnonzero(sizes_W == 0):
        # n >= n_workers, so while a worker is empty the largest holds >= 2.
        donor = int(np.argmax(sizes_W))
        candidates = np.flatnonzero(owner_N == donor)
        owner_N[candidates[rng.integers(candidates.size)]] = worker
        sizes_W[donor] -= 1
        sizes_W[worker] += 1
    order = np.argsort(owner_N, kind="stable")
    return list(np.split(order.astype(np.int64), np.cumsum(sizes_W)[:-1]))


def gamma_similarity_partition(
    labels: np.ndarray, n_workers: int, gamma: float, seed: int
) -> list[np.ndarray]:
    """ByzFL's gamma-similarity shards: a fraction ``gamma`` IID, the rest by sorted label.

    As ByzFL's ``DataDistributor`` (``gamma_similarity_niid``, used by its
    benchmark with gamma in {1, 0.66, 0.33, 0}): the examples are shuffled,
    the first ``floor(gamma * n)`` of that order are split uniformly among
    the workers, and the rest are sorted by label (ties by index) and cut
    into ``n_workers`` contiguous blocks, worker i taking block i
    (``np.array_split`` sizes throughout). So ``gamma = 1`` is
    :func:`iid_partition`'s kind of split and ``gamma = 0`` gives each worker
    one block of the label-sorted examples (with 10 balanced classes and 10
    workers, one class each). ``gamma`` is read exactly as written
    (``0.33 * 100`` is 33). Each index appears in exactly one shard; shards
    are sorted int64 arrays; the result is deterministic in ``seed``.
    """
    labels_N = np.asarray(labels)
    if labels_N.ndim != 1 or not np.issubdtype(labels_N.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got shape {labels_N.shape} of {labels_N.dtype}"
        )
    n = labels_N.shape[0]
    _check_workers(n, n_workers)
    if isinstance(gamma, bool) or not isinstance(gamma, int | float | np.floating | Fraction):
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    if isinstance(gamma, float | np.floating) and not math.isfinite(gamma):
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    exact = gamma if isinstance(gamma, int | Fraction) else Fraction(str(float(gamma)))
    if not 0 <= exact <= 1:
        raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}")
    order_N = np.random.default_rng(seed).permutation(n)
    n_iid = math.floor(exact * n)
    iid_part, rest = order_N[:n_iid], order_N[n_iid:]
    by_label = rest[np.lexsort((rest, labels_N[rest]))]
    shards = [
        np.concatenate([shared, block])
        for shared, block in zip(
            np.array_split(iid_part, n_workers), np.array_split(by_label, n_workers), strict=True
        )
    ]
    return [np.sort(shard).astype(np.int64) for shard in shards]
