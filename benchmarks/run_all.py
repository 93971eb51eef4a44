"""Run every benchmark and record its JSON under benchmarks/results/.

Usage: ``python benchmarks/run_all.py [--only throughput|crypto|consensus]``.
Each result carries its own JAX version and device; numbers are measured on
whatever machine runs this (the committed ones: a 2-core CPU, see README).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

THROUGHPUT_GRID = [
    (model, batch) for model in ("mlp", "cnn") for batch in (8, 32, 128)
]  # the grid: per-worker batch 8, 32, 128 for both models, W = 16


def pot_jax(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "pot_jax.cli", *args, "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_throughput() -> None:
    rows = []
    for model, batch in THROUGHPUT_GRID:
        for commitment_hash in ("sha256", "blake3"):
            rows.append(
                pot_jax(
                    "bench",
                    "throughput",
                    "--model",
                    model,
                    "--batch",
                    str(batch),
                    "--commitment-hash",
                    commitment_hash,
                )  # fmt: skip
            )
            print(json.dumps(rows[-1]), flush=True)
    (RESULTS / "throughput.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_crypto() -> None:
    result = pot_jax("bench", "crypto")
    (RESULTS / "crypto.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)


RUNNERS = {"throughput": run_throughput, "crypto": run_crypto}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(RUNNERS))
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, run in RUNNERS.items():
        if args.only in (None, name):
            run()


if __name__ == "__main__":
    main()
