"""Mask generators of the masked-prediction methods, batched and built on the device.

    random_mask           MAE: uniform random, a fixed number kept per sample
    multiblock_mask       I-JEPA: target blocks and a context block without them
    tube_multiblock_mask  V-JEPA 2: spatio-temporal blocks as target, the rest as context
    inverse_block_mask    data2vec 2.0: blocks of kept patches, several masks per image
    block_mask            DINOv2 / iBOT: BEiT's rectangles on a stratified share of the images

Every generator works on a whole batch with tensor operations (loops only over a small fixed
number of blocks or rounds), so it serves inside a training step as well as in a data-loader
collator (device="cpu", where each worker's default generator is seeded apart).

Randomness. `generator` (default: torch's default CPU generator, so `torch.manual_seed` fixes
the masks) determines every random draw. Draws are made on the generator's device: a CPU
generator draws small tensors on the CPU (block sizes and positions are computed there too),
which are then copied to `device` (through pinned memory, without blocking, when it is a GPU);
so one seed gives identical masks on every device. A CUDA generator draws on the GPU: faster,
but its masks differ from a CPU generator's. After the copy, every device computes the same bits:
integer and boolean operations, stable sorts, and selections by float64 keys (distinct but for
a chance of about 1e-12 per row). block_mask, a loop of small sequential rounds, runs entirely
where the draws are and copies the finished masks.

No host synchronisation. On a GPU nothing is read back to the host, so the shapes of the
results depend only on the arguments, never on the draws: a list of a varying number of patches
is a `VarlenIndices` padded to the largest length the arguments allow (a static width, which
also suits torch.compile). `VarlenIndices.trimmed()` cuts it to the batch's longest row with one
host read, free on the CPU. Masks are row-major over the patch grid: patch l of an (h, w) grid is
cell (l // w, l % w), of a (t, h, w) grid cell (l // (h w), (l // w) % h, l % w), as `patchify`
orders patches.

Results are frozen dataclasses of tensors; `.to(device)` and `.pin_memory()` move all of them
(a collator's result pins itself under `DataLoader(pin_memory=True)`).

Every argument is checked: a value outside its range raises ValueError naming it and what is
allowed, as does a configuration the official code would loop on forever; a generator that is
not a torch.Generator raises TypeError.
"""

from ._common import MaskedIndices, VarlenIndices
from .block import BlockMask, block_mask
from .inverse_block import inverse_block_mask
from .multiblock import MultiBlockMask, multiblock_mask
from .random_masking import random_mask
from .tube import (
    VJEPA2_LONG_RANGE,
    VJEPA2_SHORT_RANGE,
    TubeMask,
    tube_multiblock_mask,
    vjepa2_tube_masks,
)

__all__ = [
    "VJEPA2_LONG_RANGE",
    "VJEPA2_SHORT_RANGE",
    "BlockMask",
    "MaskedIndices",
    "MultiBlockMask",
    "TubeMask",
    "VarlenIndices",
    "block_mask",
    "inverse_block_mask",
    "multiblock_mask",
    "random_mask",
    "tube_multiblock_mask",
    "vjepa2_tube_masks",
]
