"""What to record next to every result so it can be reproduced."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import jax

import pot_jax


def device_description() -> str:
    devices = jax.devices()
    kinds = sorted({f"{d.platform}:{d.device_kind}" for d in devices})
    return f"{len(devices)}x " + ",".join(kinds)


def git_commit() -> str | None:
    """The commit of the package's checkout, if it is one."""
    root = Path(pot_jax.__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_metadata() -> dict:
    """Versions, device and host of this process."""
    return {
        "pot_jax_version": pot_jax.__version__,
        "git_commit": git_commit(),
        "jax_version": jax.__version__,
        "device": device_description(),
        "backend": jax.default_backend(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "utc_time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class JsonLines:
    """Append-only JSON-lines writer, flushed after every record."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RunDirectoryError(ValueError):
    """The run directory already holds a run; nothing was written."""


def refuse_existing_run(run_dir: Path, files) -> None:
    """Raise before writing anything if ``run_dir`` holds any of a run's ``files``."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"--run-dir {run_dir} exists and is not a directory")
    held = [name for name in files if (run_dir / name).exists()]
    if held:
        raise RunDirectoryError(
            f"{run_dir} already holds a run ({', '.join(held)}); nothing was changed. "
            "Choose another --run-dir, or move that run away first"
        )


def show_progress(config) -> bool:
    """The progress bar shows only when asked for and stderr is a terminal."""
    return bool(config.progress) and sys.stderr.isatty()


class TensorBoard:
    """Scalars of each metrics row as TensorBoard events (``pip install -e '.[tensorboard]'``)."""

    @staticmethod
    def require():
        """The writer class; raises a one-line error when the extra is not installed."""
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ValueError(
                "--tensorboard needs tensorboardX: pip install -e '.[tensorboard]'"
            ) from None
        return SummaryWriter

    def __init__(self, directory: Path):
        self._writer = self.require()(logdir=str(directory))

    def write(self, row: dict) -> None:
        step = row["round"]
        for key, value in row.items():
            if key != "round" and isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(key, value, step)
            elif isinstance(value, dict):
                for sub, v in value.items():
                    self._writer.add_scalar(f"{key}/{sub}", v, step)

    def close(self) -> None:
        self._writer.close()


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
