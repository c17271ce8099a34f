"""Gradient checkpointing: the peak memory it saves and the time it costs, one training
forward + backward of a ViT-B/16 encoder and of MAE ViT-B/16 (encoder + 8-block decoder) at
224 px, with and without `grad_checkpointing=True`.

Mode "forward": the forward pass with its graph kept, so its peak extra memory is the
activations saved for the backward, which checkpointing cuts to one block input per block. Mode
"full": forward + backward, whose time shows the price (each block's forward runs again in the
backward) and whose peak also holds the parameters' gradients (344 MB at ViT-B, float32), which
checkpointing does not touch. Batch 4 on the CPU (float32; 2 with --quick), 64 on the GPU (bf16
autocast).

    python benchmarks/bench_checkpointing.py [--quick] [--device cpu|cuda] [--out DIR]
"""

import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main

from nexus_fast.models import VisionTransformer, vit_config
from nexus_fast.models.ssl import MAE

OFF, ON = "checkpointing off", "checkpointing on"


class Step:
    """One training step on fixed inputs, split so that the memory of the activations kept for
    the backward shows on its own: `forward` runs the forward pass and keeps its graph (its peak
    extra memory is what the backward will need), `full` runs forward + backward."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, device: str) -> None:
        self.model, self.images = model, images
        self.autocast = (
            torch.autocast("cuda", torch.bfloat16) if device == "cuda" else nullcontext()
        )
        self.loss: torch.Tensor | None = None

    def forward(self) -> None:
        with self.autocast:
            out = self.model(self.images)
        self.loss = out[0] if isinstance(out, tuple) else out.float().square().mean()

    def full(self) -> None:
        self.forward()
        self.loss.backward()
        self.loss = None

    def reset(self) -> None:
        """Untimed: drops the kept graph and the gradients."""
        self.loss = None
        self.model.zero_grad(set_to_none=True)


def cases(device: str, quick: bool) -> list[Case]:
    batch = 64 if device == "cuda" else (2 if quick else 4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, generator=generator).to(device)
    builders = {
        f"ViT-B/16 encoder B={batch}": lambda flag: VisionTransformer(
            vit_config("base", img_size=224, patch_size=16, grad_checkpointing=flag)
        ),
        f"MAE ViT-B/16 B={batch}": lambda flag: MAE(
            MAE.preset("official", grad_checkpointing=flag)
        ),
    }
    result = []
    for shape, build in builders.items():
        for provider, flag in ((OFF, False), (ON, True)):
            torch.manual_seed(0)
            step = Step(build(flag).to(device).train(), images, device)
            for mode, fn in (("forward", step.forward), ("full", step.full)):
                work = {"images": batch}
                result.append(Case(provider, shape, mode, fn, work, device, step.reset))
    return result


main = benchmark_main("checkpointing", cases, OFF, __doc__)

if __name__ == "__main__":
    sys.exit(main())
