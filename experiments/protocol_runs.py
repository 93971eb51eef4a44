"""Running the full protocol for a figure and keeping only its metrics.

The run directory (transcript, checkpoints) is a temporary directory: the
figures need the metrics, not the transcripts, and a transcript can be
regenerated from the config and seed recorded in the figure's data.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

__all__ = ["run_and_collect"]


def run_and_collect(config_kwargs: dict, *, scheme=None) -> tuple[list[dict], dict]:
    """Run ``ProtocolConfig(**config_kwargs)``; its evaluation rows and its summary."""
    from pot_jax.config import ProtocolConfig
    from pot_jax.protocol import run_protocol

    # Figures are sweeps that must re-run bit for bit from their recorded config,
    # so they use the named simulation option for keys unless a config says otherwise
    # (their transcripts are temporary and prove nothing; see pot_jax.protocol.keys).
    config_kwargs = {"keys": "derived", **config_kwargs}
    with tempfile.TemporaryDirectory(prefix="pot-figure-") as tmp:
        config = ProtocolConfig(**config_kwargs, run_dir=tmp, progress=False)
        summary = run_protocol(config, scheme=scheme)
        lines = (Path(tmp) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    # metrics.jsonl has a row every round; the figures plot the evaluation rows.
    metrics = [row for row in rows if "pot_test_accuracy" in row]
    out = asdict(summary)
    out.pop("run_dir", None)
    return metrics, out
