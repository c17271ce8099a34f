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


def _pretrain(args: argparse.Namespace) -> int:
    from .train.pretrain import pretrain, summary
    from .train.settings import run_overrides

    overrides = run_overrides(args.method, args.config, args.set, args.steps)
    out = args.out or f"runs/{args.method}"
    results = pretrain(
        args.method,
        dataset=args.dataset,
        overrides=overrides,
        epochs=args.epochs,
        out_dir=out,
        device=args.device,
        resume=args.resume,
        linear=not args.no_linear,
    )
    print(summary(results))
    print(f"run folder: {out} (checkpoints, metrics.jsonl, plots, results.json)")
    return 130 if results["interrupted"] else 0


def _eval(args: argparse.Namespace) -> int:
    from .train.evaluate import evaluate_checkpoint
    from .train.settings import parse_assignment

    if args.set and args.protocol != "finetune":
        raise ValueError(f"--set is for `eval finetune` only, not `eval {args.protocol}`")
    scores = evaluate_checkpoint(
        args.checkpoint,
        protocols=[args.protocol],
        dataset=args.dataset,
        device=args.device,
        finetune_settings=dict(parse_assignment(text) for text in args.set),
    )
    for name, value in scores.items():
        percent = name in ("knn", "linear", "finetune")
        print(f"{name}: {100 * value:.1f}%" if percent else f"{name}: {value:.4g}")
    return 0


def _user_errors(handler):
    """Bad input (an unknown key, an impossible value, a missing file) ends with its message
    and exit status 2, as argparse's own errors do, instead of a traceback; a run stopped by
    the NaN guard ends with its message and status 1."""

    def run(args: argparse.Namespace) -> int:
        from .train.trainer import NonFiniteLossError

        try:
            return handler(args)
        except NonFiniteLossError as error:  # the run failed; its last good checkpoint is kept
            print(f"nexus-fast {args.command}: training stopped: {error}", file=sys.stderr)
            return 1
        except (ValueError, FileNotFoundError) as error:
            print(f"nexus-fast {args.command}: error: {error}", file=sys.stderr)
            return 2

    return run


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

    from .train.recipes import METHODS

    pretrain = commands.add_parser(
        "pretrain",
        help="pre-train a method (default: on the built-in animal-shapes) and score it",
        description="Pre-trains a method and prints the kNN and linear-probe accuracy of the "
        "encoder, pre-trained and at random initialisation. Settings: --set key=value for the "
        "trainer (steps, batch_size, lr, ...) and model.<field>=value for the model.",
    )
    # The default is the method that learns best on a CPU in a few minutes (docs/results.md).
    pretrain.add_argument("--method", default="vicreg", choices=METHODS)
    pretrain.add_argument(
        "--dataset", default="animal-shapes", help="animal-shapes or a folder of class folders"
    )
    pretrain.add_argument("--config", default=None, help="a JSON or TOML file of settings")
    pretrain.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="one setting (repeatable)"
    )
    length = pretrain.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="optimizer steps")
    length.add_argument("--epochs", type=float, default=None, help="passes over the data")
    pretrain.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    pretrain.add_argument("--out", default=None, help="run folder (default: runs/METHOD)")
    pretrain.add_argument(
        "--resume", action="store_true", help="continue from the run folder's latest checkpoint"
    )
    pretrain.add_argument("--no-linear", action="store_true", help="skip the linear probe")
    pretrain.set_defaults(handler=_user_errors(_pretrain))

    evaluate = commands.add_parser("eval", help="score a checkpoint's encoder")
    evaluate.add_argument("protocol", choices=("knn", "linear", "finetune"))
    evaluate.add_argument("--checkpoint", required=True, help="a run folder or a step_* folder")
    evaluate.add_argument("--dataset", default=None, help="default: the run's data set")
    evaluate.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    evaluate.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a fine-tuning setting (FinetuneConfig: epochs, lr, layer_decay, drop_path, "
        "label_smoothing, ...); repeatable",
    )
    evaluate.set_defaults(handler=_user_errors(_eval))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
