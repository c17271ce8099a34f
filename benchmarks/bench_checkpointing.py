"""Gradient checkpointing: the peak memory it saves and the time it costs, one training
forward + backward of a ViT-B/16 encoder and of MAE ViT-B/16 (encoder + 8-block decoder) at
224 px, with and without `grad_checkpointing=True`.

Peak extra memory is what the step allocates beyond the model (activations kept for the
backward, then gradients); checkpointing keeps one block's input per block instead of every
intermediate, at the price of a second forward of each block in the backward pass (about +30%
time). Batch 4 on the CPU (float32), 64 on the GPU (bf16 autocast).

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


def _step(model: torch.nn.Module, images: torch.Tensor, device: str):
    autocast = torch.autocast("cuda", torch.bfloat16) if device == "cuda" else nullcontext()

    def run() -> None:
        with autocast:
            out = model(images)
        loss = out[0] if isinstance(out, tuple) else out.float().square().mean()
        loss.backward()

    def reset() -> None:
        model.zero_grad(set_to_none=True)

    return run, reset


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
            model = build(flag).to(device).train()
            run, reset = _step(model, images, device)
            result.append(Case(provider, shape, "full", run, {"images": batch}, device, reset))
    return result


main = benchmark_main("checkpointing", cases, OFF, __doc__)

if __name__ == "__main__":
    sys.exit(main())
