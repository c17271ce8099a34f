"""The `nexus-fast` command."""

import argparse
import subprocess
import sys
from pathlib import Path


def _info(args: argparse.Namespace) -> int:
    from .info import report

    print(report())
    return 0


def _bench(args: argparse.Namespace) -> int:
    # The benchmarks live in the source tree (benchmarks/), next to the results they write.
    runner = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    if not runner.is_file():
        print(
            f"nexus-fast bench needs a source checkout: {runner} does not exist "
            "(install with `pip install -e .` from a clone)",
            file=sys.stderr,
        )
        return 2
    forwarded = [*args.names, *(["--quick"] if args.quick else [])]
    forwarded += [*(["--device", args.device] if args.device else [])]
    forwarded += [*(["--out", args.out] if args.out else [])]
    return subprocess.run([sys.executable, str(runner), *forwarded], check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexus-fast", description="Self-supervised learning with fused kernels."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="versions and, per operator, the usable backends")
    info.set_defaults(handler=_info)

    bench = commands.add_parser("bench", help="run the benchmarks and write benchmarks/results/")
    bench.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions and shapes")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    bench.add_argument("--out", default=None, help="results folder (default: benchmarks/results)")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
