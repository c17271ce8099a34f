"""One training step of each of the seven methods (forward + backward + AdamW + EMA where the
method has a teacher), nexus_fast against the plain way, at the same model, batch and dtype.

Providers:
- nexus: every nexus_fast operator on the backend it picks by itself (Triton / CUDA / C++).
- plain: the same model with every operator forced to its plain-PyTorch reference (the official
  formulations: materialised D x D matrices for Barlow Twins and VICReg, full-size teacher
  distributions and a dense Sinkhorn-Knopp for DINOv2, index_select / scatter token plumbing for
  the masked methods), attention through torch's SDPA (flash / cuDNN / efficient kernels), and
  the EMA as torch._foreach_lerp_ (timm's update). Only the operators differ, so the ratio is
  what the kernels buy.

Shapes: on the CPU the tiny presets (float32) with the issue's CPU sizes of the heads (a
2048-wide projector for Barlow Twins and VICReg, K = 4096 prototypes for DINOv2); on the GPU the
official sizes in bf16 autocast (ViT-B/16 for MAE, data2vec 2.0, Barlow Twins and VICReg with
the 8192 x 3 projector; I-JEPA ViT-H/14; V-JEPA 2 ViT-L/16 on 16 frames; DINOv2 ViT-B/14 with
65536 prototypes and 2 + 8 crops). On the GPU the rate includes MFU: the step's FLOPs (counted
by torch's FlopCounterMode on the plain step) over the time, against the measured bf16 matmul
rate of this GPU.

    python benchmarks/bench_train_step.py [--quick] [--device cpu|cuda]
"""

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main

from nexus_fast.models.ssl import (
    MAE,
    BarlowTwinsModel,
    Data2VecModel,
    DINOv2Model,
    JEPAModel,
    VICRegModel,
    VJEPAModel,
)

METHODS = {
    "mae": MAE,
    "ijepa": JEPAModel,
    "vjepa2": VJEPAModel,
    "dinov2": DINOv2Model,
    "data2vec2": Data2VecModel,
    "barlow_twins": BarlowTwinsModel,
    "vicreg": VICRegModel,
}
TWO_VIEWS = ("barlow_twins", "vicreg")
# NEXUS_FAST_BACKEND for the plain provider (see nexus_fast/ops/_dispatch.py).
PLAIN_BACKENDS = "reference,attention=sdpa,ema_update_=foreach"
# The CPU's head sizes over the tiny presets.
CPU_HEADS = {
    "barlow_twins": {"projector_dims": (2048, 2048, 2048)},
    "vicreg": {"expander_dims": (2048, 2048, 2048)},
    "dinov2": {"dino_prototypes": 4096, "ibot_prototypes": 4096},
}
# GPU batch per method at the official sizes: large enough to keep an H200 busy, small enough
# that the plain provider (which materialises more) fits too.
GPU_BATCH = {
    "mae": 256,
    "ijepa": 64,
    "vjepa2": 8,
    "dinov2": 64,
    "data2vec2": 16,  # x clone_batch 16 = 256 masked copies through the student
    "barlow_twins": 256,
    "vicreg": 256,
}


@contextlib.contextmanager
def backends(value: str | None) -> Iterator[None]:
    """NEXUS_FAST_BACKEND=value inside the block (None: the automatic choice)."""
    previous = os.environ.pop("NEXUS_FAST_BACKEND", None)
    if value is not None:
        os.environ["NEXUS_FAST_BACKEND"] = value
    try:
        yield
    finally:
        os.environ.pop("NEXUS_FAST_BACKEND", None)
        if previous is not None:
            os.environ["NEXUS_FAST_BACKEND"] = previous


def _inputs(name: str, model, batch: int, device: str) -> tuple:
    config = model.config
    generator = torch.Generator().manual_seed(0)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(device)

    size, channels = config.img_size, config.in_chans
    if name == "vjepa2":
        return (draw(batch, channels, config.num_frames, size, size),)
    if name == "dinov2":
        global_shape, local_shapes = model.crop_shapes(batch)
        return draw(*global_shape), [draw(*shape) for shape in local_shapes]
    images = draw(batch, channels, size, size)
    if name in TWO_VIEWS:
        return images, images.flip(-1)
    return (images,)


def _step_fn(model, inputs: tuple, device: str) -> Callable[[], None]:
    """One optimizer step: zero grads, forward + backward (bf16 autocast on the GPU), AdamW,
    then the teacher's EMA when the method has one."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = device == "cuda"
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=fused)
    has_teacher = any(True for _ in model.teacher_pairs())
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(*inputs)[0]
        loss.backward()
        optimizer.step()
        if has_teacher:
            model.update_teacher(0.996)

    return step


def _with_backends(fn: Callable[[], None], value: str | None) -> Callable[[], None]:
    def run() -> None:
        with backends(value):
            fn()

    return run


def step_flops(step: Callable[[], None]) -> float:
    """FLOPs of one call of `step` (matmuls, convolutions and SDPA, forward and backward), as
    torch's FlopCounterMode counts them; the plain step is counted, since custom kernels are
    invisible to the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def measured_bf16_tflops(size: int = 8192, repeats: int = 10) -> float:
    """This GPU's bf16 matmul rate (TFLOP/s): the mean of `repeats` size^3 products."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    begin.record()
    for _ in range(repeats):
        a @ b
    end.record()
    end.synchronize()
    return 2 * size**3 * repeats / (begin.elapsed_time(end) * 1e-3) / 1e12


def method_cases(name: str, cls, batch: int, device: str, roofline: float | None) -> list[Case]:
    """The nexus and plain Cases of one step of a method (one model, shared by both)."""
    torch.manual_seed(0)
    if device == "cuda":
        config = cls.preset("official")
    else:
        config = cls.preset("tiny", **CPU_HEADS.get(name, {}))
    with torch.device(device):  # initialised in place: a ViT-H on the CPU takes seconds
        model = cls(config).train()
    inputs = _inputs(name, model, batch, device)
    step = _step_fn(model, inputs, device)
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    size = "official" if device == "cuda" else "tiny"
    dtype = "bf16" if device == "cuda" else "fp32"
    label = f"{name} {size} B={batch} {dtype} ({parameters / 1e6:.1f}M params)"
    work: dict[str, float] = {"images": batch}
    if roofline is not None:
        with backends(PLAIN_BACKENDS):
            work["flops"] = step_flops(step)
        work["roofline_tflops"] = roofline
    return [
        Case(provider, label, "full", _with_backends(step, value), work, device)
        for provider, value in (("nexus", None), ("plain", PLAIN_BACKENDS))
    ]


def cases(device: str, quick: bool) -> list[Case]:
    roofline = measured_bf16_tflops() if device == "cuda" else None
    if roofline is not None:
        print(f"  bf16 matmul rate of this GPU: {roofline:.0f} TFLOP/s (the MFU roofline)")
    result = []
    # NEXUS_FAST_BENCH_METHODS="dinov2 vicreg" limits the run to some methods (a short GPU lease).
    chosen = os.environ.get("NEXUS_FAST_BENCH_METHODS", "").split() or list(METHODS)
    unknown = [name for name in chosen if name not in METHODS]
    if unknown:
        raise ValueError(f"NEXUS_FAST_BENCH_METHODS: unknown {unknown}; allowed: {list(METHODS)}")
    for name in chosen:
        cls = METHODS[name]
        batch = GPU_BATCH[name] if device == "cuda" else (16 if quick else 64)
        result += method_cases(name, cls, batch, device, roofline)
    return result


main = benchmark_main("train_step", cases, "plain", __doc__)

if __name__ == "__main__":
    sys.exit(main())
