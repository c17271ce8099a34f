"""One training step of each of the seven methods (forward + backward + AdamW + EMA where the
method has a teacher): time, peak memory and images/s, at the CPU preset ("tiny") on the CPU.

    python benchmarks/bench_train_step.py [--quick] [--device cpu|cuda]
"""

import sys
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
TWO_VIEWS = ("barlow_twins", "vicreg", "dinov2")


def _inputs(name: str, model, batch: int, device: str) -> tuple:
    config = model.config
    size, channels = config.img_size, config.in_chans
    generator = torch.Generator().manual_seed(0)
    if name == "vjepa2":
        shape = (batch, channels, config.num_frames, size, size)
        return (torch.randn(shape, generator=generator).to(device),)
    images = torch.randn(batch, channels, size, size, generator=generator).to(device)
    if name in TWO_VIEWS:
        return images, images.flip(-1)
    return (images,)


def step_case(name: str, cls, batch: int, device: str) -> tuple[Case, int]:
    """The Case of one optimizer step of a method at its tiny preset, and its parameter count."""
    torch.manual_seed(0)
    model = cls(cls.preset("tiny")).to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    inputs = _inputs(name, model, batch, device)
    has_teacher = any(True for _ in model.teacher_pairs())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = model(*inputs)[0]
        loss.backward()
        optimizer.step()
        if has_teacher:
            model.update_teacher(0.996)

    parameters = sum(p.numel() for p in trainable)
    label = f"{name} tiny B={batch} ({parameters / 1e3:.0f}k params)"
    return Case("nexus", label, "full", step, {"images": batch}, device), parameters


def cases(device: str, quick: bool) -> list[Case]:
    batch = 16 if quick else 64
    return [step_case(name, cls, batch, device)[0] for name, cls in METHODS.items()]


main = benchmark_main("train_step", cases, "nexus", __doc__)

if __name__ == "__main__":
    sys.exit(main())
