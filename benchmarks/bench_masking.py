"""Mask generators per batch of 256: nexus_fast.masking against the official
algorithms as their repositories run them (benchmarks/peers/masks.py: Python loops over the
samples, on the CPU as in their collators, the result copied to the device as their training
loops do).

Shapes: MAE on ViT-B/16 at 224 px (14 x 14), the I-JEPA multi-block mask (14 x 14), V-JEPA 2
(8 x 16 x 16 tubelets, short- and long-range), data2vec 2.0 (14 x 14, 16 clones per image),
DINOv2 iBOT masks (16 x 16: 224 px at patch 14). Providers: the official peer, nexus_fast with a
CPU generator (the same masks on every device), and on a GPU nexus_fast with a CUDA generator.

    python benchmarks/bench_masking.py [--quick] [--device cpu|cuda] [--out DIR]
"""

import random
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main
from peers import masks as official

import nexus_fast.masking as masking

BATCH = 256
BASELINE = "official (python loop)"


def _moved(result: object, device: str) -> object:
    """The official result (tensors, or lists of them) on `device`, as a training loop moves it."""
    if isinstance(result, torch.Tensor):
        return result.to(device, non_blocking=True)
    return [_moved(part, device) for part in result]


def _official_cases(device: str) -> dict[str, Callable[[], object]]:
    generator = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    return {
        "MAE 14x14": lambda: official.mae_random_masking(
            torch.rand(BATCH, 196, device=device), 0.75
        ),
        "I-JEPA 14x14": lambda: _moved(
            official.ijepa_multiblock(BATCH, 14, 14, generator=generator), device
        ),
        "V-JEPA 2 short 8x16x16": lambda: _moved(
            official.vjepa2_multiblock3d(BATCH, 8, 16, 16, generator=generator), device
        ),
        "V-JEPA 2 long 8x16x16": lambda: _moved(
            official.vjepa2_multiblock3d(
                BATCH, 8, 16, 16, generator=generator, num_blocks=2, spatial_scale=(0.7, 0.7)
            ),
            device,
        ),
        "data2vec 2.0 14x14 x16": lambda: _moved(
            official.data2vec2_inverse_block_mask(BATCH * 16, 14, 14, generator=generator),
            device,
        ),
        "DINOv2 16x16": lambda: _moved(
            official.dinov2_block_masks(BATCH, 16, 16, rng=rng)[0], device
        ),
    }


def _nexus_cases(generator: torch.Generator, device: str) -> dict[str, Callable[[], object]]:
    return {
        "MAE 14x14": lambda: masking.random_mask(BATCH, 196, generator=generator, device=device),
        "I-JEPA 14x14": lambda: masking.multiblock_mask(
            BATCH, (14, 14), generator=generator, device=device
        ),
        "V-JEPA 2 short 8x16x16": lambda: masking.tube_multiblock_mask(
            BATCH, (8, 16, 16), **masking.VJEPA2_SHORT_RANGE, generator=generator, device=device
        ),
        "V-JEPA 2 long 8x16x16": lambda: masking.tube_multiblock_mask(
            BATCH, (8, 16, 16), **masking.VJEPA2_LONG_RANGE, generator=generator, device=device
        ),
        "data2vec 2.0 14x14 x16": lambda: masking.inverse_block_mask(
            BATCH, (14, 14), generator=generator, device=device
        ),
        "DINOv2 16x16": lambda: masking.block_mask(
            BATCH, (16, 16), generator=generator, device=device
        ),
    }


def cases(device: str) -> list[Case]:
    providers = {
        BASELINE: _official_cases(device),
        "nexus (cpu generator)": _nexus_cases(torch.Generator().manual_seed(0), device),
    }
    if device == "cuda":
        cuda_generator = torch.Generator("cuda").manual_seed(0)
        providers["nexus (cuda generator)"] = _nexus_cases(cuda_generator, device)
    result = []
    for shape in providers[BASELINE]:
        for provider, functions in providers.items():
            result.append(
                Case(provider, f"{shape} B={BATCH}", "full", functions[shape], {}, device)
            )
    return result


main = benchmark_main("masking", lambda device, quick: cases(device), BASELINE, __doc__)


if __name__ == "__main__":
    sys.exit(main())
