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
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter  # noqa: E402

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
    "compact_number",
    "display_name",
    "figure",
    "plain_log_axis",
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


# How identifiers from configs and data files are named on a figure.
DISPLAY_NAMES = {
    # datasets
    "mnist1d": "MNIST-1D",
    "teacher": "teacher (synthetic)",
    # worker attacks
    "alie": "ALIE",
    "sign_flip": "sign flip",
    "label_flip": "label flip",
    "ipm": "IPM",
    "nan_inf": "NaN/Inf",
    # aggregation rules and verification
    "coordinate_median": "coordinate median",
    "trimmed_mean": "trimmed mean",
    "krum": "Krum",
    "multi_krum": "Multi-Krum",
    "spot_check": "spot checks",
    "robust_only": "no verification",
    # models and commitment hashes
    "mlp": "MLP",
    "cnn": "CNN",
    "sha256": "SHA-256",
    "blake3": "BLAKE3",
    # BLS backends
    "arkworks": "arkworks (Rust)",
    "py_ecc": "py_ecc (pure Python)",
    # PBFT message patterns
    "all_to_all": "all-to-all PBFT",
    "linear": "linear PBFT",
}


def display_name(key) -> str:
    """The name a figure shows for a config or data identifier (``sign_flip`` -> "sign flip")."""
    return DISPLAY_NAMES.get(key, str(key).replace("_", " "))


def compact_number(value: float, _pos=None) -> str:
    """A tick label without exponents: 0.01, 4, 250, 1000, 10k, 2M (k and M only when exact)."""
    if abs(value) >= 1e6 and value % 1e6 == 0:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e4 and value % 1e3 == 0:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def plain_log_axis(axis, ticks=None, *, subs=(1.0,)) -> None:
    """A log ``axis`` (``ax.xaxis`` or ``ax.yaxis``) labelled 1, 10, 1000, 10k, or at ``ticks``;
    ``subs=(1, 2, 5)`` also labels 2 and 5 in each decade, for an axis spanning few decades."""
    locator = FixedLocator(list(ticks)) if ticks is not None else LogLocator(10, subs=subs)
    axis.set_major_locator(locator)
    axis.set_major_formatter(FuncFormatter(compact_number))
    axis.set_minor_formatter(NullFormatter())


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
    """NAME.png and NAME.pdf in fig_dir; smoke-scale figures are stamped as such.

    The stamp sits above the top edge of the laid-out figure (the tight bounding box
    grows to hold it), so it cannot cover an axis label, a title or a legend.
    """
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    if scale == "smoke":
        fig.text(
            1.0,
            1.0,
            "smoke scale: not a measurement",
            ha="right",
            va="bottom",
            fontsize=8,
            color="C1",
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
