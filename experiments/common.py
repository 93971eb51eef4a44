"""What every figure shares: its spec, data and metadata files, the style, saving.

A figure module has ``Config`` (a frozen dataclass whose docstring names the
figure, the command, the expected result and the runtime), ``CONFIGS =
{"smoke": ..., "paper": ...}``, ``run(config, data_dir)`` that writes the data
files, and ``plot(data_dir, fig_dir)`` that reads only those files and
writes ``NAME.png`` and ``NAME.pdf``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from pot_jax.runinfo import run_metadata, write_json  # noqa: E402

STYLE = Path(__file__).with_name("pot.mplstyle")
SCALES = ("smoke", "paper")
DATA_CSV = "data.csv"
DATA_JSONL = "data.jsonl"
METADATA = "metadata.json"

__all__ = [
    "DATA_CSV",
    "DATA_JSONL",
    "METADATA",
    "SCALES",
    "STYLE",
    "FigureSpec",
    "figure",
    "read_csv",
    "read_jsonl",
    "read_metadata",
    "save_figure",
    "sibling_data",
    "write_csv",
    "write_jsonl",
    "write_metadata",
]


@dataclass(frozen=True)
class FigureSpec:
    """One row of the FIGURES table: the figure, the paper claim it confronts, its module."""

    name: str
    title: str
    claim: str
    module: str


def write_csv(path: Path, rows: Iterable[dict]) -> None:
    """Rows of flat dicts as CSV; the header is the union of keys in first-seen order."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"no rows to write to {path}: an experiment produced no data")
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _parse(text: str):
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    return text


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV written by write_csv, with numbers parsed back."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    records = list(records)
    if not records:
        raise ValueError(f"no records to write to {path}: an experiment produced no data")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_metadata(
    data_dir: Path, *, name: str, scale: str, config, seeds, wall_seconds: float
) -> None:
    """metadata.json: the config as a dict, the seeds, wall time, commit, JAX version, device."""
    write_json(
        Path(data_dir) / METADATA,
        {
            "figure": name,
            "scale": scale,
            "config": dataclasses.asdict(config),
            "seeds": list(seeds),
            "wall_seconds": round(wall_seconds, 3),
            **run_metadata(),
        },
    )


def read_metadata(data_dir: Path) -> dict:
    return json.loads((Path(data_dir) / METADATA).read_text(encoding="utf-8"))


def sibling_data(data_dir: Path, figure_name: str, file_name: str, scale: str) -> Path | None:
    """Another figure's data file next to this one, only if it was made at ``scale``.

    Smoke data must never stand in for a measurement in a paper-scale figure.
    """
    other = Path(data_dir).parent / figure_name
    path = other / file_name
    if not path.exists() or not (other / METADATA).exists():
        return None
    return path if read_metadata(other).get("scale") == scale else None


@contextmanager
def figure(nrows: int = 1, ncols: int = 1, **kw) -> Iterator[tuple]:
    """A figure and its axes drawn in the shared style; closed on exit."""
    with plt.style.context(str(STYLE)):
        fig, axes = plt.subplots(nrows, ncols, layout="constrained", **kw)
        try:
            yield fig, axes
        finally:
            plt.close(fig)


def save_figure(fig, fig_dir: Path, name: str, *, scale: str | None = None) -> list[Path]:
    """NAME.png and NAME.pdf in fig_dir; smoke-scale figures are stamped as such."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    if scale == "smoke":
        fig.text(
            0.99,
            0.005,
            "smoke scale: not a measurement",
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.4",
        )
    paths = [fig_dir / f"{name}.png", fig_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p)
    return paths


class Timer:
    """Wall seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
