"""Tests for pot_jax.learning.datasets: generators, file loaders, partitions."""

import collections
import gzip
import math
import pickle
import random
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pot_jax.learning import datasets
from pot_jax.learning.datasets import (
    DATASET_NAMES,
    Dataset,
    DatasetFormatError,
    dirichlet_partition,
    iid_partition,
    load_dataset,
    read_idx,
)

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")


@pytest.fixture(autouse=True, scope="module")
def private_cache_dir(tmp_path_factory):
    """Keep the on-disk MNIST-1D cache out of the user's home directory."""
    directory = tmp_path_factory.mktemp("pot_jax_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(datasets.CACHE_ENV_VAR, str(directory))
        yield directory


# ---------------------------------------------------------------------------
# MNIST-1D


def test_mnist1d_default_is_the_published_benchmark_split():
    """5000 sequences of length 40: 4000 train / 1000 test, 10 classes."""
    ds = load_dataset()
    assert ds.name == "mnist1d"
    assert ds.x_train.shape == (4000, 40, 1) and ds.x_test.shape == (1000, 40, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.y_test.dtype == np.int32
    assert ds.input_shape == (40, 1) and ds.num_classes == 10
    assert (ds.n_train, ds.n_test) == (4000, 1000)
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert abs(float(ds.x_train.mean())) < 0.05 and abs(float(ds.x_train.std()) - 1) < 0.05


def test_mnist1d_generation_is_deterministic_and_seeded():
    """Same arguments give identical arrays; another data_seed gives other data."""
    args = datasets._mnist1d_args(200, 42, 0.8)
    first, second = datasets._generate_mnist1d(args), datasets._generate_mnist1d(args)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    other = datasets._generate_mnist1d(datasets._mnist1d_args(200, 7, 0.8))
    assert not np.array_equal(first["x_train"], other["x_train"])
    # A fresh generation (no disk cache) equals the disk-cached default.
    cached = load_dataset("mnist1d", cache=False)
    np.testing.assert_array_equal(cached.x_train, load_dataset("mnist1d").x_train)


def test_mnist1d_generation_leaves_global_rng_state_unchanged():
    """make_dataset reseeds numpy's and python's global RNGs; we restore both."""
    np.random.seed(1234)  # noqa: NPY002
    random.seed(99)
    numpy_before = np.random.get_state()  # noqa: NPY002
    python_before = random.getstate()
    datasets._mnist1d_arrays.cache_clear()
    load_dataset("mnist1d", num_samples=100, cache=False)
    numpy_after = np.random.get_state()  # noqa: NPY002
    assert numpy_before[0] == numpy_after[0]
    np.testing.assert_array_equal(numpy_before[1], numpy_after[1])
    assert numpy_before[2:] == numpy_after[2:]
    assert random.getstate() == python_before


def test_mnist1d_arrays_are_read_only():
    """The in-process cache shares arrays between callers, so they cannot be mutated."""
    ds = load_dataset("mnist1d")
    with pytest.raises(ValueError, match="read-only"):
        ds.x_train[0, 0, 0] = 1.0


def test_mnist1d_disk_cache_round_trip_and_recovers_from_corruption(tmp_path, monkeypatch):
    """A generated set is written to $POT_JAX_CACHE and read back; bad files are regenerated."""
    monkeypatch.setenv(datasets.CACHE_ENV_VAR, str(tmp_path))
    datasets._mnist1d_arrays.cache_clear()
    fresh = load_dataset("mnist1d", num_samples=100)
    files = list((tmp_path / "datasets").glob("mnist1d-n100-seed42-*.npz"))
    assert len(files) == 1
    assert not list((tmp_path / "datasets").glob("*.tmp"))

    def no_generation(args):
        raise AssertionError("should have been read from the disk cache")

    datasets._mnist1d_arrays.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(datasets, "_generate_mnist1d", no_generation)
        from_disk = load_dataset("mnist1d", num_samples=100)
    np.testing.assert_array_equal(from_disk.x_train, fresh.x_train)
    np.testing.assert_array_equal(from_disk.y_test, fresh.y_test)

    files[0].write_bytes(b"not an npz archive")
    datasets._mnist1d_arrays.cache_clear()
    with pytest.warns(UserWarning, match="regenerating"):
        regenerated = load_dataset("mnist1d", num_samples=100)
    np.testing.assert_array_equal(regenerated.x_train, fresh.x_train)
    datasets._mnist1d_arrays.cache_clear()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_samples": 105}, "multiple of 10"),
        ({"num_samples": 0}, "multiple of 10"),
        ({"train_split": 1.0}, "train_split"),
        ({"data_seed": -1}, "data_seed"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_mnist1d_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("mnist1d", **options)


# ---------------------------------------------------------------------------
# Teacher task


def test_teacher_shapes_and_determinism():
    a = load_dataset("teacher", seed=3, n_train=300, n_test=100, dim=8, num_classes=4)
    b = load_dataset("teacher", seed=3, n_train=300, n_test=100, dim=8, num_classes=4)
    c = load_dataset("teacher", seed=4, n_train=300, n_test=100, dim=8, num_classes=4)
    assert a.x_train.shape == (300, 8) and a.x_test.shape == (100, 8) and a.input_shape == (8,)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
    assert a.num_classes == 4
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_teacher_test_set_does_not_depend_on_n_train():
    """Teacher, train inputs and test inputs come from independent streams of the seed."""
    small = load_dataset("teacher", seed=1, n_train=50, n_test=200)
    large = load_dataset("teacher", seed=1, n_train=500, n_test=200)
    np.testing.assert_array_equal(small.x_test, large.x_test)
    np.testing.assert_array_equal(small.y_test, large.y_test)
    np.testing.assert_array_equal(small.x_train, large.x_train[:50])


@pytest.mark.parametrize(("dim", "hidden"), [(20, 0), (5, 0), (20, 32)])
def test_teacher_labels_are_balanced(dim, hidden):
    """Every class gets between half and double its fair share."""
    ds = load_dataset("teacher", seed=0, n_train=5000, dim=dim, num_classes=10, hidden=hidden)
    counts = np.bincount(ds.y_train, minlength=10)
    assert counts.min() >= 0.5 * 500 and counts.max() <= 2 * 500, counts


def test_linear_teacher_is_learnable_by_a_linear_model():
    """A least-squares linear classifier recovers most test labels of the linear teacher."""
    ds = load_dataset("teacher", seed=5, n_train=4000, n_test=1000, dim=20, num_classes=10)
    targets = np.eye(10)[ds.y_train]
    weights, *_ = np.linalg.lstsq(ds.x_train.astype(np.float64), targets, rcond=None)
    accuracy = np.mean(np.argmax(ds.x_test @ weights, axis=1) == ds.y_test)
    assert accuracy > 0.8, accuracy


def test_teacher_rejects_bad_options():
    with pytest.raises(ValueError, match="num_classes"):
        load_dataset("teacher", num_classes=1)
    with pytest.raises(ValueError, match="width"):
        load_dataset("teacher", width=3)


# ---------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype[type_code]).tobytes()


def write_file(path, data: bytes, compress: bool) -> None:
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def make_idx_dir(directory, *, compress=False, n_train=12, n_test=5, seed=0, stems=IDX_STEMS):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in zip(stems, arrays.values(), strict=True):
        write_file(directory / stem, idx_bytes(array), compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_loader_round_trip(tmp_path, name, compress):
    """Synthetic IDX files load back as standardised NHWC images and int32 labels."""
    arrays = make_idx_dir(tmp_path, compress=compress)
    ds = load_dataset(name, data_dir=tmp_path)
    assert ds.name == name and ds.input_shape == (28, 28, 1) and ds.num_classes == 10
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    np.testing.assert_array_equal(ds.y_train, arrays["train_labels"])
    np.testing.assert_array_equal(ds.y_test, arrays["test_labels"])
    scaled = arrays["train_images"] / 255.0
    mean, std = scaled.mean(), scaled.std()
    np.testing.assert_allclose(ds.x_train[..., 0], (scaled - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        ds.x_test[..., 0], (arrays["test_images"] / 255.0 - mean) / std, rtol=1e-5, atol=1e-5
    )
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-4


def test_idx_loader_finds_conventional_subdirectories_and_dotted_names(tmp_path):
    """torchvision's MNIST/raw layout and the 'train-images.idx3-ubyte' spelling are found."""
    dotted = tuple(stem.replace("-idx", ".idx") for stem in IDX_STEMS)
    mnist = make_idx_dir(tmp_path / "MNIST" / "raw", stems=dotted, seed=1)
    fashion = make_idx_dir(tmp_path / "fashion_mnist", compress=True, seed=2)
    np.testing.assert_array_equal(
        load_dataset("mnist", data_dir=tmp_path).y_train, mnist["train_labels"]
    )
    np.testing.assert_array_equal(
        load_dataset("fashion_mnist", data_dir=tmp_path).y_train, fashion["train_labels"]
    )


@pytest.mark.parametrize(
    ("type_code", "dtype"),
    [
        (0x08, np.uint8),
        (0x09, np.int8),
        (0x0B, np.int16),
        (0x0C, np.int32),
        (0x0D, np.float32),
        (0x0E, np.float64),
    ],
)
def test_read_idx_round_trips_every_element_type(tmp_path, type_code, dtype):
    array = (np.arange(24).reshape(2, 3, 4) * (1 if type_code == 0x08 else -3)).astype(dtype)
    (tmp_path / "a.idx").write_bytes(idx_bytes(array, type_code))
    loaded = read_idx(tmp_path / "a.idx")
    assert loaded.dtype == np.dtype(dtype) and loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, array)


def test_missing_idx_files_error_names_files_and_directories(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(error.value)
    for stem in IDX_STEMS:
        assert stem in message
    assert str(tmp_path) in message

    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?m)missing t10k-labels-idx1-ubyte\[\.gz\]$"):
        load_dataset("fashion_mnist", data_dir=tmp_path)


def test_file_datasets_need_an_existing_data_dir(tmp_path):
    for name in ("mnist", "fashion_mnist", "cifar10"):
        with pytest.raises(ValueError, match="data_dir"):
            load_dataset(name)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="takes no options|accepted options: none"):
        load_dataset("mnist", data_dir=tmp_path, num_samples=5)


def corrupt_and_expect(directory, stem, data: bytes, message: str, compress=False) -> None:
    make_idx_dir(directory)
    (directory / stem).unlink()
    write_file(directory / stem, data, compress)
    with pytest.raises(DatasetFormatError, match=message):
        load_dataset("mnist", data_dir=directory)


IMAGES = np.zeros((12, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize(
    ("stem", "data", "message"),
    [
        (
            IDX_STEMS[0],
            b"\x01\x02" + idx_bytes(IMAGES)[2:],
            "bad IDX magic number 0x01020803, expected 0x00000803",
        ),
        (IDX_STEMS[0], b"\x00\x00\x07\x03" + idx_bytes(IMAGES)[4:], "bad IDX magic number"),
        (IDX_STEMS[0], idx_bytes(IMAGES.reshape(12, 784)), r"expected 0x00000803"),
        (IDX_STEMS[1], idx_bytes(np.zeros((12, 1), np.uint8)), r"expected 0x00000801"),
        (IDX_STEMS[0], idx_bytes(IMAGES)[:-10], "truncated"),
        (IDX_STEMS[0], idx_bytes(IMAGES)[:10], "truncated.*header"),
        (IDX_STEMS[0], b"\x00\x00", "truncated"),
        (IDX_STEMS[0], idx_bytes(IMAGES) + b"\x00", "longer than its header says"),
        (IDX_STEMS[1], idx_bytes(np.zeros(11, np.uint8)), "12 images but .* 11 labels"),
        (IDX_STEMS[1], idx_bytes(np.full(12, 10, np.uint8)), "label 10 out of range"),
        (IDX_STEMS[2], idx_bytes(np.zeros((5, 14, 14), np.uint8)), "shape"),
    ],
    ids=[
        "bad-magic",
        "unknown-type",
        "images-with-2-dims",
        "labels-with-2-dims",
        "truncated-data",
        "truncated-header",
        "shorter-than-magic",
        "trailing-bytes",
        "count-mismatch",
        "label-out-of-range",
        "train-test-shape-mismatch",
    ],
)
def test_malformed_idx_is_rejected_with_a_reason(tmp_path, stem, data, message):
    corrupt_and_expect(tmp_path, stem, data, message)


def test_corrupt_gzip_is_rejected(tmp_path):
    truncated_gzip = gzip.compress(idx_bytes(IMAGES))[:40]
    make_idx_dir(tmp_path)
    (tmp_path / IDX_STEMS[0]).unlink()
    (tmp_path / (IDX_STEMS[0] + ".gz")).write_bytes(truncated_gzip)
    with pytest.raises(DatasetFormatError, match="gzip"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x08\x00", "declares 0 dimensions"),
        (b"\x00\x00\x0a\x01\x00\x00\x00\x00", r"bad IDX magic number 0x00000a01; expected"),
        (b"\x00\x01\x08\x01\x00\x00\x00\x00", r"bad IDX magic number 0x00010801; expected"),
        (b"\x00\x00\x0c\x01\x00\x00\x00\x02\x00\x00\x00", r"truncated: header .*\(2,\) of int32"),
    ],
)
def test_read_idx_rejects_malformed_headers(tmp_path, data, message):
    (tmp_path / "bad.idx").write_bytes(data)
    with pytest.raises(DatasetFormatError, match=message):
        read_idx(tmp_path / "bad.idx")


# ---------------------------------------------------------------------------
# CIFAR-10


def cifar_batch(rng, n):
    return {
        b"batch_label": b"synthetic batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def make_cifar_dir(directory, *, protocol=2, legacy_numpy_names=False, sizes=(3, 2, 4, 1, 2, 3)):
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name, n in zip((*CIFAR_FILES, "test_batch"), sizes, strict=True):
        batches[name] = cifar_batch(rng, n)
        data = pickle.dumps(batches[name], protocol=protocol)
        if legacy_numpy_names:  # what numpy 1.x (and the real python-2 files) reference
            assert protocol == 2
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (directory / name).write_bytes(data)
    return batches


@pytest.mark.parametrize(
    ("protocol", "legacy", "subdir"),
    [(2, True, "cifar-10-batches-py"), (2, False, ""), (4, False, "cifar-10-batches-py")],
)
def test_cifar_loader_round_trip(tmp_path, protocol, legacy, subdir):
    """Rows of 3072 bytes (R plane, G plane, B plane) become NHWC images."""
    batches = make_cifar_dir(tmp_path / subdir, protocol=protocol, legacy_numpy_names=legacy)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.name == "cifar10" and ds.input_shape == (32, 32, 3) and ds.num_classes == 10
    assert ds.x_train.shape == (12, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    raw_train = np.concatenate([batches[name][b"data"] for name in CIFAR_FILES])
    labels_train = np.concatenate([batches[name][b"labels"] for name in CIFAR_FILES])
    np.testing.assert_array_equal(ds.y_train, labels_train)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    scaled = raw_train.reshape(12, 3, 32, 32) / 255.0
    mean, std = scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3))
    n, row, col, channel = 7, 5, 17, 2
    expected = (raw_train[n, channel * 1024 + row * 32 + col] / 255.0 - mean[channel]) / std[
        channel
    ]
    assert ds.x_train[n, row, col, channel] == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(ds.x_train.std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_missing_cifar_files_error_names_files(tmp_path):
    make_cifar_dir(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("cifar10", data_dir=tmp_path)
    message = str(error.value)
    for name in (*CIFAR_FILES, "test_batch", "cifar-10-batches-py", str(tmp_path)):
        assert name in message
    assert "missing data_batch_4\n" in message


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop(b"data"), "expected b'data'"),
        (lambda b: b.update({b"data": np.zeros((3, 3000), np.uint8)}), r"\(N, 3072\)"),
        (lambda b: b.update({b"data": np.zeros((3, 3072), np.float32)}), "uint8"),
        (lambda b: b.update({b"labels": [1, 2]}), "3 integers"),
        (lambda b: b.update({b"labels": [1, 2, 11]}), "expected 0..9"),
        (lambda b: b.update({b"evil": collections.OrderedDict()}), "refusing to load collections"),
    ],
    ids=["no-data", "wrong-width", "wrong-dtype", "label-count", "label-range", "foreign-class"],
)
def test_malformed_cifar_batch_is_rejected(tmp_path, mutate, message):
    make_cifar_dir(tmp_path)
    batch = cifar_batch(np.random.default_rng(1), 3)
    mutate(batch)
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetFormatError, match=message):
        load_dataset("cifar10", data_dir=tmp_path)


def test_truncated_cifar_pickle_is_rejected(tmp_path):
    make_cifar_dir(tmp_path)
    whole = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetFormatError, match="not a CIFAR-10 python pickle"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------------------
# load_dataset and Dataset


def test_unknown_dataset_name_lists_valid_names():
    with pytest.raises(ValueError) as error:
        load_dataset("imagenet")
    assert "'imagenet'" in str(error.value)
    for name in DATASET_NAMES:
        assert name in str(error.value)


def test_dataset_validates_its_arrays():
    x = np.zeros((4, 3), np.float32)
    y = np.zeros(4, np.int32)
    with pytest.raises(ValueError, match="float32"):
        Dataset("d", x.astype(np.float64), y, x, y, num_classes=2, input_shape=(3,))
    with pytest.raises(ValueError, match="y_test has shape"):
        Dataset("d", x, y, x, y[:3], num_classes=2, input_shape=(3,))
    with pytest.raises(ValueError, match="per-example shape"):
        Dataset("d", x, y, x, y, num_classes=2, input_shape=(4,))
    with pytest.raises(ValueError, match="labels in"):
        Dataset("d", x, y + 2, x, y, num_classes=2, input_shape=(3,))
    ds = Dataset("d", x, y, x, y, num_classes=2, input_shape=[3])
    assert ds.input_shape == (3,) and "n_train=4" in repr(ds)


# ---------------------------------------------------------------------------
# Partitions


def label_entropy(labels: np.ndarray) -> float:
    p = np.bincount(labels) / labels.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def assert_is_partition(shards, n, n_workers):
    assert len(shards) == n_workers
    assert all(shard.size > 0 and shard.dtype == np.int64 for shard in shards)
    assert all(np.all(np.diff(shard) > 0) for shard in shards)
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(n))


def test_dirichlet_partition_is_deterministic_partition():
    labels = np.random.default_rng(0).integers(0, 10, 2000)
    first = dirichlet_partition(labels, 16, 0.3, seed=7)
    second = dirichlet_partition(labels, 16, 0.3, seed=7)
    other = dirichlet_partition(labels, 16, 0.3, seed=8)
    assert_is_partition(first, 2000, 16)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_small_alpha_is_more_label_skewed_than_large_alpha():
    """Mean per-worker label entropy grows with alpha (towards log 10 for IID)."""
    labels = np.random.default_rng(1).integers(0, 10, 5000)

    def mean_entropy(alpha):
        shards = dirichlet_partition(labels, 20, alpha, seed=0)
        return np.mean([label_entropy(labels[shard]) for shard in shards])

    skewed, mild, iid = mean_entropy(0.05), mean_entropy(100.0), mean_entropy(None)
    assert skewed < 0.5 * mild
    assert mild > 0.95 * math.log(10) and iid > 0.95 * math.log(10)


def test_infinite_alpha_is_iid_partition():
    labels = np.zeros(50, dtype=np.int32)
    expected = iid_partition(50, 4, seed=3)
    for alpha in (None, math.inf, np.float32(np.inf)):
        for a, b in zip(dirichlet_partition(labels, 4, alpha, 3), expected, strict=True):
            np.testing.assert_array_equal(a, b)


def test_iid_partition_sizes_differ_by_at_most_one():
    shards = iid_partition(103, 10, seed=0)
    assert_is_partition(shards, 103, 10)
    assert {shard.size for shard in shards} == {10, 11}


def test_dirichlet_extreme_skew_still_gives_every_worker_data():
    """alpha -> 0 puts each class on one worker; empty workers are refilled."""
    labels = np.repeat(np.arange(2), 10)
    assert_is_partition(dirichlet_partition(labels, 20, 1e-6, seed=0), 20, 20)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros(5, np.int32), 6, 1.0, 0), "n_workers <= 5"),
        ((np.zeros(5, np.int32), 0, 1.0, 0), "n_workers must be >= 1"),
        ((np.zeros(5, np.int32), 2, 0.0, 0), "alpha must be > 0"),
        ((np.zeros(5, np.int32), 2, -math.inf, 0), "alpha must be > 0"),
        ((np.zeros(5, np.int32), 2, math.nan, 0), "alpha must be > 0"),
        ((np.zeros((5, 1), np.int32), 2, 1.0, 0), "1-D integer"),
        ((np.zeros(5, np.float32), 2, 1.0, 0), "1-D integer"),
    ],
)
def test_dirichlet_partition_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        dirichlet_partition(*args)


@given(
    n=st.integers(1, 300),
    data=st.data(),
    num_classes=st.integers(1, 12),
    alpha=st.sampled_from([1e-4, 0.05, 0.5, 1.0, 10.0, 1e4, math.inf, None]),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_partition_is_a_partition_for_any_sizes(n, data, num_classes, alpha, seed):
    """Every index lands in exactly one non-empty shard, for any n >= n_workers and alpha."""
    n_workers = data.draw(st.integers(1, min(n, 40)), label="n_workers")
    labels = np.random.default_rng(seed).integers(0, num_classes, n)
    shards = dirichlet_partition(labels, n_workers, alpha, seed)
    assert_is_partition(shards, n, n_workers)
