"""A portable audit (issue 12, section 5): data that moved is found and checked by digest."""

import shutil
import subprocess
import sys

from pot_jax.cli import main

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "learning"))
from test_datasets import make_idx_dir  # noqa: E402

FLAGS = [
    "--dataset", "mnist", "--workers", "4", "--batch-size", "2", "--rounds", "2",
    "--hidden", "8", "--eval-every", "1", "--checkpoint-every", "1", "--byzantine-fraction",
    "0", "--no-progress",
]  # fmt: skip


def test_the_audit_finds_moved_data_with_data_dir_and_checks_its_digest(tmp_path, capsys):
    data = tmp_path / "mnist"
    make_idx_dir(data, n_train=40, n_test=10)
    run = tmp_path / "run"
    assert main(["train", *FLAGS, "--data-dir", str(data), "--run-dir", str(run)]) == 0
    moved = tmp_path / "elsewhere" / "mnist"
    shutil.move(data, moved)
    capsys.readouterr()
    assert main(["audit", str(run)]) == 1  # the recorded place is empty now
    out = capsys.readouterr().out
    assert "cannot be loaded" in out and "--data-dir" in out
    assert main(["audit", str(run), "--data-dir", str(moved), "--recompute", "all"]) == 0
    other = tmp_path / "other"
    make_idx_dir(other, n_train=40, n_test=10, seed=1)  # same shapes, other bytes
    capsys.readouterr()
    assert main(["audit", str(run), "--data-dir", str(other)]) == 1
    assert "the data differ from the digest the genesis signed" in capsys.readouterr().out


def test_experiments_is_not_an_installed_top_level_module(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('experiments'))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "None"


def test_data_files_that_are_fifos_fail_fast(tmp_path):
    import os

    from pot_jax.learning.datasets import DatasetFormatError, load_dataset

    data = tmp_path / "mnist"
    make_idx_dir(data)
    victim = data / "train-images-idx3-ubyte"
    victim.unlink()
    os.mkfifo(victim)
    try:
        load_dataset("mnist", data_dir=data)  # would block forever if it opened the FIFO
    except (DatasetFormatError, FileNotFoundError) as err:
        assert "train-images-idx3-ubyte" in str(err)
    else:
        raise AssertionError("a FIFO was read as data")
