"""DINOv2's DINO loss path and Sinkhorn-Knopp (PERF.md, "DINO / iBOT loss, prototype head,
Sinkhorn-Knopp"): time and peak extra memory against DINOv2's formulation.

Loss path (forward + backward, mode "full"): from the student's bottleneck features (2 global +
8 local crops of B images, D = 256) and the teacher's logits of the 2 global crops to the DINO
loss and the gradients of the features and of the last layer's weight: the teacher's centering
and softmax, the weight-normalised last layer, the cross-entropy over DINOv2's crop pairs.
DINOv2 (benchmarks/peers/dinov2.py) materialises the crops' rows x K logits, their log-softmax
and products; nexus_fast runs DINOCenter and dino_prototype_loss (the last layer fused into the
loss, chunk by chunk). Rate: TFLOP/s of the three rows x K x D matrix products.
Sinkhorn-Knopp (forward, 3 iterations, float32 teacher logits): DINOv2's sinkhorn_knopp_teacher
against nexus_fast.ops.sinkhorn_knopp. Rate: GB/s against the floor of the scaling form (7 reads
of the logits, one float32 write).

Shapes. GPU (bf16 features under autocast, as DINOv2 trains): B in {52, 104, 208, 416} crops of
10 (rows 520..4160) at K = 65536, and B = 416 at K = 131072 (the PERF.md goal: >= 3x); Sinkhorn
rows in {512, 1024, 2048, 4096} at K = 65536 (4096 rows: the 1 GB scale, goal >= 5x). CPU
(float32): B in {16, 64} at K in {4096, 16384}; Sinkhorn rows in {256, 1024} at K in {4096,
16384}. Each provider's loss is checked against DINOv2's before timing.

    python benchmarks/bench_dino.py [--quick] [--device cpu|cuda] [--out DIR]
"""

import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main, nexus_backends
from peers import dinov2 as official

from nexus_fast.ops.dino import DINOCenter, dino_prototype_loss
from nexus_fast.ops.sinkhorn import sinkhorn_knopp

DINOV2 = "dinov2"
N_LOCAL = 8
WIDTH = 256
TEACHER_TEMP = 0.04
ITERS = 3
# The nexus_fast backends timed on each device (the cpu backends run CPU tensors only).
_INCLUDE = {"cuda": ("triton",), "cpu": ("cpu",)}


def _autocast(device: str):
    """DINOv2 trains under bf16 autocast on the GPU; the CPU runs float32."""
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


class LossPath:
    """One provider's loss path on fixed inputs: forward + backward per call."""

    def __init__(self, run: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> None:
        self.run = run
        self.leaves = leaves

    def reset(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None

    def full(self) -> None:
        self.run().backward()


def _loss_inputs(batch: int, prototypes: int, device: str, seed: int) -> dict:
    generator = torch.Generator(device=device).manual_seed(seed)
    feature_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    global_features = torch.randn(2 * batch, WIDTH, device=device, generator=generator)
    local_features = torch.randn(N_LOCAL * batch, WIDTH, device=device, generator=generator)
    weight = torch.randn(prototypes, WIDTH, device=device, generator=generator) * 0.02
    # Teacher head outputs are cosines (weight-normalised last layer), in DINOv2's swapped order.
    teacher = torch.randn(2 * batch, WIDTH, device=device, generator=generator)
    teacher_logits = official.last_layer(teacher, weight, torch.ones(prototypes, 1, device=device))
    return {
        "global": global_features.to(feature_dtype).requires_grad_(),
        "local": local_features.to(feature_dtype).requires_grad_(),
        "weight": weight.requires_grad_(),
        "teacher_logits": teacher_logits,
    }


def _dinov2_path(inputs: dict, device: str) -> LossPath:
    loss = official.DINOLoss(inputs["weight"].shape[0], device)
    weight_g = torch.ones(inputs["weight"].shape[0], 1, device=device)

    def run() -> torch.Tensor:
        with _autocast(device):
            return official.dino_loss_path(
                [inputs["global"], inputs["local"]],
                inputs["weight"],
                weight_g,
                inputs["teacher_logits"],
                loss,
                TEACHER_TEMP,
                N_LOCAL,
            )

    return LossPath(run, [inputs["global"], inputs["local"], inputs["weight"]])


def _nexus_path(inputs: dict, device: str, backend: str) -> LossPath:
    center = DINOCenter(inputs["weight"].shape[0])
    crops = [*inputs["global"].chunk(2), *inputs["local"].chunk(N_LOCAL)]

    def run() -> torch.Tensor:
        with _autocast(device):
            probs = center.softmax_center(inputs["teacher_logits"], TEACHER_TEMP)
            center.update(inputs["teacher_logits"])
            probs_b, probs_a = probs.chunk(2)  # the logits are in DINOv2's swapped order
            return dino_prototype_loss(crops, inputs["weight"], [probs_a, probs_b], backend=backend)

    return LossPath(run, [inputs["global"], inputs["local"], inputs["weight"]])


def _check_agreement(paths: dict[str, LossPath]) -> None:
    """Every provider computes DINOv2's loss (first call: zero centers, identical inputs)."""
    values = {name: path.run().detach().float() for name, path in paths.items()}
    expected = values[DINOV2]
    for name, value in values.items():
        if not torch.allclose(value, expected, rtol=2e-2, atol=1e-3):
            raise RuntimeError(f"{name} loss {value.item():.6f} != dinov2 {expected.item():.6f}")


def _loss_cases(device: str, quick: bool) -> list[Case]:
    backends = nexus_backends("prototype_cross_entropy", device, include=_INCLUDE[device])
    if device == "cuda":
        shapes = [(52, 65536)] if quick else [(b, 65536) for b in (52, 104, 208, 416)]
        shapes += [] if quick else [(416, 131072)]
    else:
        shapes = [(16, 4096)] if quick else [(16, 4096), (16, 16384), (64, 4096), (64, 16384)]
    result = []
    for batch, prototypes in shapes:
        inputs = _loss_inputs(batch, prototypes, device, seed=batch + prototypes)
        paths = {DINOV2: _dinov2_path(inputs, device)}
        paths |= {f"nexus:{b}": _nexus_path(inputs, device, b) for b in backends}
        _check_agreement(paths)
        rows = (2 + N_LOCAL) * batch
        label = f"loss B={batch} rows={rows} K={prototypes}"
        flops = 3 * 2 * rows * prototypes * WIDTH
        for provider, path in paths.items():
            result.append(
                Case(provider, label, "full", path.full, {"flops": flops}, device, path.reset)
            )
    return result


def _sinkhorn_cases(device: str, quick: bool) -> list[Case]:
    backends = nexus_backends("sinkhorn_knopp", device, include=_INCLUDE[device])
    if device == "cuda":
        shapes = [(512, 65536)] if quick else [(r, 65536) for r in (512, 1024, 2048, 4096)]
    else:
        shapes = (
            [(256, 4096)] if quick else [(256, 4096), (256, 16384), (1024, 4096), (1024, 16384)]
        )
    result = []
    for rows, prototypes in shapes:
        generator = torch.Generator(device=device).manual_seed(rows + prototypes)
        features = torch.randn(rows, WIDTH, device=device, generator=generator)
        weight = torch.randn(prototypes, WIDTH, device=device, generator=generator)
        logits = official.last_layer(features, weight, torch.ones(prototypes, 1, device=device))
        loss = official.DINOLoss(prototypes, device)
        providers = {
            DINOV2: lambda logits=logits, loss=loss: loss.sinkhorn_knopp_teacher(
                logits, TEACHER_TEMP, ITERS
            )
        }
        for backend in backends:
            providers[f"nexus:{backend}"] = lambda logits=logits, backend=backend: sinkhorn_knopp(
                logits, TEACHER_TEMP, ITERS, backend=backend
            )
        expected = providers[DINOV2]()
        for name, fn in providers.items():
            if not torch.allclose(fn(), expected, rtol=1e-3, atol=1e-6):
                raise RuntimeError(f"{name} Sinkhorn-Knopp differs from dinov2's")
        floor_bytes = (2 * ITERS + 1) * logits.numel() * logits.element_size() + logits.numel() * 4
        label = f"sinkhorn {rows}x{prototypes}"
        for provider, fn in providers.items():
            result.append(Case(provider, label, "forward", fn, {"bytes": floor_bytes}, device))
    return result


def cases(device: str, quick: bool) -> list[Case]:
    return _loss_cases(device, quick) + _sinkhorn_cases(device, quick)


main = benchmark_main("dino", cases, DINOV2, __doc__)


if __name__ == "__main__":
    sys.exit(main())
