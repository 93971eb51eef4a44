"""What to record next to every result so it can be reproduced."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
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


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
