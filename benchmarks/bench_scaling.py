"""How each fused kernel's cost grows with the work: time against one size, nexus_fast (the
backend it picks by itself) against the plain way, on a log-log plot.

Sweeps (forward + backward where the op has a gradient):
- EMA: parameters P (flat float32 tensors of ViT-sized chunks), against torch._foreach_lerp_;
- Barlow Twins and VICReg losses: projector width D at N = 256 rows, against the official
  D x D formulation (benchmarks/peers/redundancy.py);
- DINO loss path: prototypes K at B = 16 images (2 + 8 crops), against DINOv2's formulation
  (benchmarks/peers/dinov2.py);
- attention: tokens N at B = 8, H = 4, d = 32, against torch SDPA (on the CPU the automatic
  choice IS SDPA: the Triton kernel is the GPU path, so the two lines coincide there).
The plain way materialises D x D (or rows x K) matrices, so its lines bend upward where nexus's
stay linear; the ratio between the lines at the largest size is the saving a user sees there.

    python benchmarks/bench_scaling.py [--quick] [--device cpu|cuda] [--out DIR]
"""

import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_dino
import bench_redundancy
from harness import Case, Measurement, benchmark_main

import nexus_fast as nf

NEXUS, PLAIN = "nexus", "plain"
COLOURS = {NEXUS: "tab:blue", PLAIN: "tab:orange"}  # the same in every panel
SIZES = {  # sweep -> (axis, CPU sizes, GPU sizes)
    "EMA": ("P", (2**18, 2**20, 2**22, 2**24), (2**20, 2**22, 2**24, 2**26, 2**28)),
    "Barlow Twins": ("D", (256, 512, 1024, 2048, 4096), (1024, 2048, 4096, 8192, 16384)),
    "VICReg": ("D", (256, 512, 1024, 2048, 4096), (1024, 2048, 4096, 8192, 16384)),
    "DINO loss": ("K", (1024, 4096, 16384), (4096, 16384, 65536, 131072)),
    "attention": ("N", (64, 256, 1024), (256, 1024, 4096, 16384)),
}
LABEL = re.compile(r"^(?P<sweep>.+) (?P<axis>\w+)=(?P<size>\d+)$")


def _ema(size: int, device: str) -> dict[str, Callable[[], object]]:
    chunk = min(size, 2**20)  # ViT-sized tensors: the launch count grows with P as in a model
    teacher = [torch.randn(chunk, device=device) for _ in range(size // chunk)]
    student = [torch.randn(chunk, device=device) for _ in range(size // chunk)]
    return {
        NEXUS: lambda: nf.ops.ema_update_(teacher, student, 0.996),
        PLAIN: lambda: torch._foreach_lerp_(teacher, student, 0.004),
    }


def _redundancy(loss: str, size: int, device: str) -> dict[str, tuple[Callable, Callable]]:
    rows = 256
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(size)
    base = torch.randn(rows, size, device=device, generator=generator)
    noise = torch.randn(rows, size, device=device, generator=generator)
    providers = {
        PLAIN: bench_redundancy._official(loss, size, rows, device),
        NEXUS: lambda z1, z2: (
            nf.ops.barlow_twins_loss(z1, z2)
            if loss == "Barlow Twins"
            else nf.ops.vicreg_loss(z1, z2)[0]
        ),
    }
    calls = {}
    for name, loss_fn in providers.items():
        z1 = base.to(dtype).requires_grad_()
        z2 = (base + noise).to(dtype).requires_grad_()
        call = bench_redundancy.LossCall(loss_fn, z1, z2)
        calls[name] = (call.full, call.reset)
    return calls


def _dino(size: int, device: str) -> dict[str, tuple[Callable, Callable]]:
    inputs = bench_dino._loss_inputs(16, size, device, seed=size)
    backend = "triton" if device == "cuda" else "cpu"
    paths = {
        PLAIN: bench_dino._dinov2_path(inputs, device),
        NEXUS: bench_dino._nexus_path(inputs, device, backend),
    }
    return {name: (path.full, path.reset) for name, path in paths.items()}


def _attention(size: int, device: str) -> dict[str, tuple[Callable, Callable]]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(size)
    q, k, v = (
        torch.randn(8, 4, size, 32, device=device, generator=generator).to(dtype).requires_grad_()
        for _ in range(3)
    )

    def reset() -> None:
        q.grad = k.grad = v.grad = None

    def run(backend: str | None) -> Callable[[], None]:
        return lambda: nf.ops.attention(q, k, v, backend=backend).sum().backward()

    return {NEXUS: (run(None), reset), PLAIN: (run("sdpa"), reset)}


def cases(device: str, quick: bool) -> list[Case]:
    builders = {
        "EMA": _ema,
        "Barlow Twins": lambda size, dev: _redundancy("Barlow Twins", size, dev),
        "VICReg": lambda size, dev: _redundancy("VICReg", size, dev),
        "DINO loss": _dino,
        "attention": _attention,
    }
    result = []
    for sweep, (axis, cpu_sizes, gpu_sizes) in SIZES.items():
        sizes = gpu_sizes if device == "cuda" else cpu_sizes
        for size in sizes[:2] if quick else sizes:
            for provider, call in builders[sweep](size, device).items():
                fn, setup = call if isinstance(call, tuple) else (call, None)
                mode = "update" if sweep == "EMA" else "full"
                shape = f"{sweep} {axis}={size}"
                result.append(Case(provider, shape, mode, fn, {}, device, setup))
    return result


def plot_lines(benchmark: str, rows: list[Measurement], path: Path) -> None:
    """One panel per sweep: median ms against the size, one line per provider, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps: dict[str, dict[str, list[tuple[int, float]]]] = {}
    axes_names: dict[str, str] = {}
    for row in rows:
        parsed = LABEL.match(row.shape)
        if parsed is None:
            continue
        axes_names[parsed["sweep"]] = parsed["axis"]
        points = sweeps.setdefault(parsed["sweep"], {}).setdefault(row.provider, [])
        points.append((int(parsed["size"]), row.median_ms))
    figure, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.8), squeeze=False)
    for panel, (sweep, providers) in zip(axes[0], sweeps.items()):
        for provider, points in providers.items():
            points.sort()
            colour = COLOURS.get(provider)
            panel.plot(*zip(*points), marker="o", label=provider, color=colour)
        panel.set_xscale("log", base=2)
        panel.set_yscale("log")
        panel.set_xlabel(axes_names[sweep])
        panel.set_title(sweep)
        panel.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("median ms (lower is better)")
    axes[0][0].legend()
    figure.suptitle(benchmark)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


main = benchmark_main("scaling", cases, PLAIN, __doc__, plot=plot_lines)

if __name__ == "__main__":
    sys.exit(main())
