"""The benchmark harness: providers x shapes x modes, timed and measured the same way everywhere.

A benchmark module builds `Case`s (one provider on one shape in one mode, as a zero-argument
callable) and hands them to `run_cases`, which reports per case the median, p20 and p80 time and
the peak memory allocated beyond what existed before the call, then writes
benchmarks/results/<benchmark>_<machine>_<date>.{json,md,png}.

Timing: GPU work with CUDA events after warm-up, the L2 cache flushed before every repetition;
CPU work with perf_counter. Peak memory: torch.cuda's peak statistics on the GPU; on the CPU the
profiler's allocation timeline ("Total Allocated" of its memory events), in a separate untimed run.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
L2_FLUSH_BYTES = 256 * 2**20  # larger than any GPU's L2 (H200: 50 MB)


@dataclass
class Case:
    """One provider on one shape in one mode.

    Attributes:
        provider: who computes ("nexus:cpu", "torch._foreach_lerp_", ...).
        shape: a short label of the problem size ("ViT-B/16 fp32").
        mode: "forward", "backward" or "full".
        fn: runs the work once; inputs are prepared outside it.
        work: quantities that turn time into a rate, e.g. {"bytes": 1.0e9} gives GB/s and
            {"flops": ...} gives TFLOP/s (with "roofline_tflops", also the % of that roofline),
            {"images": B} gives images/s.
        device: where fn runs ("cpu" or "cuda").
        setup: runs before every repetition, untimed (e.g. zero the gradients).
    """

    provider: str
    shape: str
    mode: str
    fn: Callable[[], object]
    work: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    setup: Callable[[], object] | None = None


@dataclass
class Measurement:
    benchmark: str
    provider: str
    shape: str
    mode: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    peak_mb: float  # allocated beyond what existed before the call, at its peak
    repeats: int
    rates: dict[str, float] = field(default_factory=dict)  # "GB/s", "TFLOP/s"


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _time_once(case: Case, flush: torch.Tensor | None) -> float:
    """Milliseconds of one call (setup and the L2 flush untimed)."""
    if case.setup is not None:
        case.setup()
    if case.device != "cuda":
        begin = time.perf_counter()
        case.fn()
        return (time.perf_counter() - begin) * 1e3
    if flush is not None:
        flush.zero_()
    begin_event = torch.cuda.Event(enable_timing=True)
    end_event = torch.cuda.Event(enable_timing=True)
    begin_event.record()
    case.fn()
    end_event.record()
    end_event.synchronize()
    return begin_event.elapsed_time(end_event)


def time_group(
    cases: list[Case], warmup: int, repeats: int, min_seconds: float
) -> list[list[float]]:
    """Times cases that compete on one shape, interleaved round by round.

    Interleaving spreads the drift of a noisy machine (other jobs, clocks, caches) over every
    provider instead of charging it to whichever ran last. Each case gets at least `repeats`
    repetitions, more until `min_seconds` have passed (at most 200 rounds).
    """
    for case in cases:
        for _ in range(warmup):
            _time_once(case, None)
    flush = None
    if any(case.device == "cuda" for case in cases):
        torch.cuda.synchronize()
        flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    times: list[list[float]] = [[] for _ in cases]
    started = time.perf_counter()
    rounds = 0
    while rounds < repeats or (time.perf_counter() - started < min_seconds and rounds < 200):
        for index, case in enumerate(cases):
            times[index].append(_time_once(case, flush))
        rounds += 1
    return times


def peak_extra_bytes(case: Case) -> int:
    """Bytes allocated by one call beyond what existed before it, at the call's peak."""
    if case.setup is not None:
        case.setup()
    if case.device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        case.fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        case.fn()
    with tempfile.TemporaryDirectory() as folder:
        trace = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as handle:
            events = json.load(handle)["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]"]
    memory = [m for m in memory if m.get("Device Type", 0) == 0]  # CPU allocations only
    if not memory:
        return 0
    start = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(0, max(m["Total Allocated"] for m in memory) - start)


def _measurement(benchmark: str, case: Case, times: list[float]) -> Measurement:
    median = statistics.median(times)
    rates = {}
    if "bytes" in case.work:
        rates["GB/s"] = case.work["bytes"] / (median * 1e-3) / 1e9
    if "images" in case.work:
        rates["images/s"] = case.work["images"] / (median * 1e-3)
    if "flops" in case.work:
        rates["TFLOP/s"] = case.work["flops"] / (median * 1e-3) / 1e12
        if "roofline_tflops" in case.work:
            rates["% roofline"] = 100.0 * rates["TFLOP/s"] / case.work["roofline_tflops"]
    return Measurement(
        benchmark,
        case.provider,
        case.shape,
        case.mode,
        median_ms=median,
        p20_ms=_quantile(times, 0.2),
        p80_ms=_quantile(times, 0.8),
        peak_mb=peak_extra_bytes(case) / 2**20,
        repeats=len(times),
        rates=rates,
    )


def machine_label() -> str:
    """A file-name-safe name of the machine: the GPU if one is used, else the CPU."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    else:
        name = f"cpu{os.cpu_count()}"
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                model = next(line for line in cpuinfo if line.startswith("model name"))
            name = f"{name}-{model.split(':', 1)[1].strip()}"
        except (OSError, StopIteration):
            name = f"{name}-{platform.processor() or platform.machine()}"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()[:48]


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, str]:
    import nexus_fast

    env = {
        "date": datetime.date.today().isoformat(),
        "commit": _commit(),
        "machine": machine_label(),
        "torch": torch.__version__,
        "nexus_fast": nexus_fast.__version__,
        "threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = str(torch.version.cuda)
    return env


def _markdown(
    benchmark: str, env: dict[str, str], rows: list[Measurement], baseline: tuple[str, ...]
) -> str:
    header = ", ".join(f"{k} {v}" for k, v in env.items())
    rate_names = sorted({name for r in rows for name in r.rates})
    lines = [
        f"# {benchmark}",
        "",
        header,
        "",
        "| shape | mode | provider | median ms | p20 ms | p80 ms | peak extra MB | "
        + "".join(f"{n} | " for n in rate_names)
        + f"speed vs {' / '.join(baseline)} |",
        "|" + "---|" * (8 + len(rate_names)),
    ]
    base = {(r.shape, r.mode): r.median_ms for r in rows if r.provider in baseline}
    for r in rows:
        ratio = base.get((r.shape, r.mode))
        speedup = f"{ratio / r.median_ms:.2f}x" if ratio else "-"
        rates = "".join(f"{r.rates[n]:.1f} | " if n in r.rates else "- | " for n in rate_names)
        lines.append(
            f"| {r.shape} | {r.mode} | {r.provider} | {r.median_ms:.3f} | {r.p20_ms:.3f} | "
            f"{r.p80_ms:.3f} | {r.peak_mb:.1f} | {rates}{speedup} |"
        )
    return "\n".join(lines) + "\n"


def _plot(benchmark: str, rows: list[Measurement], path: Path, log_scale: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r.shape, r.mode) for r in rows))
    providers = list(dict.fromkeys(r.provider for r in rows))
    width = 0.8 / len(providers)
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 3), 4.5))
    for index, provider in enumerate(providers):
        values = {(r.shape, r.mode): r.median_ms for r in rows if r.provider == provider}
        positions = [g + index * width for g in range(len(groups))]
        axes.bar(positions, [values.get(g, 0) for g in groups], width, label=provider)
    axes.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    axes.set_xticklabels([f"{s}\n{m}" for s, m in groups], fontsize=8)
    axes.set_ylabel("median time (ms), lower is better")
    if log_scale:
        axes.set_yscale("log")
    axes.set_title(benchmark)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(
    benchmark: str,
    rows: list[Measurement],
    baseline: str | tuple[str, ...],
    out_dir: Path | None = None,
    log_scale: bool = True,
    plot: Callable[[str, list[Measurement], Path], None] | None = None,
) -> Path:
    """Writes <benchmark>_<machine>_<date>.{json,md,png}; returns the Markdown path.

    baseline: the provider (or, for a benchmark of several ops, one provider per op) that the
    "speed vs" column divides by, shape by shape.
    plot: draws the PNG instead of the default bar chart (e.g. bench_scaling's log-log lines).
    """
    baseline = (baseline,) if isinstance(baseline, str) else tuple(baseline)
    env = environment()
    out = Path(out_dir) if out_dir is not None else RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{benchmark}_{env['machine']}_{env['date']}"
    payload = {"benchmark": benchmark, "environment": env, "baseline": baseline}
    payload["results"] = [asdict(r) for r in rows]
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    markdown = _markdown(benchmark, env, rows, baseline)
    stem.with_suffix(".md").write_text(markdown)
    if plot is not None:
        plot(benchmark, rows, stem.with_suffix(".png"))
    else:
        _plot(benchmark, rows, stem.with_suffix(".png"), log_scale)
    print(markdown)
    return stem.with_suffix(".md")


def run_cases(
    benchmark: str,
    cases: list[Case],
    baseline: str | tuple[str, ...],
    out_dir: Path | None = None,
    quick: bool = False,
    plot: Callable[[str, list[Measurement], Path], None] | None = None,
) -> list[Measurement]:
    """Measures every case (interleaved per shape and mode), writes the results, returns them."""
    groups: dict[tuple[str, str], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.shape, case.mode), []).append(case)
    rows = []
    for group in groups.values():
        times = time_group(
            group,
            warmup=1 if quick else 3,
            repeats=3 if quick else 10,
            min_seconds=0.0 if quick else 1.0,
        )
        for case, case_times in zip(group, times):
            row = _measurement(benchmark, case, case_times)
            print(f"  {case.shape:<28} {case.mode:<8} {case.provider:<28} {row.median_ms:10.3f} ms")
            rows.append(row)
    write_results(benchmark, rows, baseline, out_dir, plot=plot)
    return rows


def nexus_backends(op: str, device: str, include: tuple[str, ...] | None = None) -> list[str]:
    """The backends of a nexus_fast operator that can run on this machine, to time as providers.

    Args:
        op: the operator's name in nexus_fast.ops.OPERATORS.
        device: "cpu" or "cuda". The Triton interpreter is a correctness tool, not a provider,
            so triton is left out on the CPU.
        include: only these backend names (default: every backend but the reference).
    """
    import nexus_fast as nf

    names = []
    for backend in nf.ops.OPERATORS[op].backends:
        wanted = backend.name in include if include is not None else backend.name != "reference"
        interpreted = backend.name == "triton" and device == "cpu"
        if wanted and not interpreted and backend.machine_reason() is None:
            names.append(backend.name)
    return names


def benchmark_main(
    benchmark: str,
    cases: Callable[[str, bool], list[Case]],
    baseline: str | tuple[str, ...],
    description: str,
    plot: Callable[[str, list[Measurement], Path], None] | None = None,
) -> Callable[[list[str] | None], int]:
    """The `main(argv)` of a benchmark module: --quick, --device and --out, as run.py passes."""

    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
        parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
        parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        parser.add_argument("--out", default=None, help="results folder (default: results/)")
        args = parser.parse_args(argv)
        run_cases(benchmark, cases(args.device, args.quick), baseline, args.out, args.quick, plot)
        return 0

    return main
