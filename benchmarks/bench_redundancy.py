"""Barlow Twins and VICReg losses at the official 8192-wide projector (PERF.md, "Barlow Twins /
VICReg losses"): time and peak extra memory, forward and forward + backward.

Providers: the official formulation (benchmarks/peers/redundancy.py: BatchNorm1d and the D x D
cross-correlation for Barlow Twins, the two D x D covariances for VICReg; autograd backward), and
each nexus_fast backend usable here but the reference (cpu: the torch path; triton on a GPU).
nexus_fast runs method="auto" (the Gram form at every shape here, N < 0.75 D for Barlow Twins and
N < D for VICReg, except N = D = 2048, which takes the direct form). Inputs are bf16 on the GPU
(what the official code's autocast feeds the loss) and float32 on the CPU. Shapes: N in {256,
1024, 2048} x D in {2048, 8192} on the GPU, N in {256, 1024} x D in {2048, 8192} on the CPU.

On the CPU an official call estimated over CPU_SECONDS_LIMIT (10 s: 12 N D^2 FLOPs of VICReg's
forward and backward at N = 1024, D = 8192, at the ~75 GFLOP/s that two cores reach) is left out,
and the run prints which.

    python benchmarks/bench_redundancy.py [--quick] [--device cpu|cuda] [--out DIR]
"""

import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main, nexus_backends
from peers import redundancy as official

from nexus_fast.ops.redundancy import barlow_twins_loss, vicreg_loss

OFFICIAL = "official"
CPU_SECONDS_LIMIT = 10.0
CPU_FLOPS_PER_SECOND = 75e9  # float32 matrix products on two cores of the CPU machine
LOSSES = ("Barlow Twins", "VICReg")


def _official_flops(loss: str, rows: int, cols: int, mode: str) -> float:
    """Matrix-product FLOPs of the official formulation: Barlow Twins' C = A^T B is 2 N D^2
    forward and twice that backward; VICReg has one D x D covariance per view."""
    forward = 2 * rows * cols**2 * (1 if loss == "Barlow Twins" else 2)
    return forward if mode == "forward" else 3 * forward


def _official(loss: str, cols: int, batch: int, device: str) -> Callable:
    if loss == "Barlow Twins":
        return official.BarlowTwinsLoss(cols, batch).to(device)
    return official.vicreg_loss


def _nexus(loss: str, backend: str) -> Callable:
    if loss == "Barlow Twins":
        return lambda z1, z2: barlow_twins_loss(z1, z2, backend=backend)
    return lambda z1, z2: vicreg_loss(z1, z2, backend=backend)[0]


class LossCall:
    """One provider's loss on fixed inputs; keeps the last loss so backward can follow."""

    def __init__(self, loss_fn: Callable, z1: torch.Tensor, z2: torch.Tensor) -> None:
        self.loss_fn = loss_fn
        self.z1, self.z2 = z1, z2
        self.loss: torch.Tensor | None = None

    def reset(self) -> None:
        """Drops the last graph and gradients, untimed, so each repetition allocates anew."""
        self.z1.grad = self.z2.grad = None
        self.loss = None

    def forward(self) -> None:
        self.loss = self.loss_fn(self.z1, self.z2)

    def full(self) -> None:
        self.forward()
        self.loss.backward()


def cases(device: str, quick: bool) -> list[Case]:
    backends = nexus_backends("barlow_twins_loss", device, include=("cpu", "triton"))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda":
        shapes = [(n, d) for n in (256, 1024, 2048) for d in (2048, 8192)]
    else:
        shapes = [(n, d) for n in (256, 1024) for d in (2048, 8192)]
    if quick:
        shapes = shapes[:1]
    result = []
    for rows, cols in shapes:
        generator = torch.Generator(device=device).manual_seed(rows + cols)
        base = torch.randn(rows, cols, device=device, generator=generator)
        noise = torch.randn(rows, cols, device=device, generator=generator)
        for loss in LOSSES:
            label = f"{loss} N={rows} D={cols} {str(dtype).removeprefix('torch.')}"
            providers = {OFFICIAL: _official(loss, cols, rows, device)}
            providers |= {f"nexus:{b}": _nexus(loss, b) for b in backends}
            for provider, loss_fn in providers.items():
                z1 = base.to(dtype).requires_grad_()
                z2 = (base + noise).to(dtype).requires_grad_()
                call = LossCall(loss_fn, z1, z2)
                for mode, fn in (("forward", call.forward), ("full", call.full)):
                    if provider == OFFICIAL and device == "cpu":
                        seconds = _official_flops(loss, rows, cols, mode) / CPU_FLOPS_PER_SECOND
                        if seconds > CPU_SECONDS_LIMIT:
                            print(f"  skipped: {provider} {label} {mode} (~{seconds:.0f} s a call)")
                            continue
                    result.append(Case(provider, label, mode, fn, {}, device, call.reset))
    return result


main = benchmark_main("redundancy", cases, OFFICIAL, __doc__)


if __name__ == "__main__":
    sys.exit(main())
