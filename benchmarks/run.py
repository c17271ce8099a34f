"""Runs the benchmarks and writes their results under benchmarks/results/ (or --out).

python benchmarks/run.py [NAME ...] [--quick] [--device cpu|cuda] [--out DIR]
nexus-fast bench [NAME ...] [--quick] [--device ...] [--out DIR]
"""

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# name -> module of benchmarks/ with a main(argv) that accepts --quick, --device and --out.
BENCHMARKS = {
    "ema": "bench_ema",
    "patches": "bench_patches",
    "masked_patch_loss": "bench_masked_patch_loss",
    "masking": "bench_masking",
    "mae_sequence": "bench_mae_sequence",
    "attention": "bench_attention",
    "regression": "bench_regression",
    "redundancy": "bench_redundancy",
    "dino": "bench_dino",
    "train_step": "bench_train_step",
    "scaling": "bench_scaling",
    "checkpointing": "bench_checkpointing",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    failures = 0
    for name in args.names or list(BENCHMARKS):
        print(f"== benchmark {name} on {args.device}")
        forwarded = ["--device", args.device] + (["--quick"] if args.quick else [])
        forwarded += ["--out", args.out] if args.out else []
        failures += importlib.import_module(BENCHMARKS[name]).main(forwarded) != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
