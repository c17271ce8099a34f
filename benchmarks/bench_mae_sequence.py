"""The MAE masking sequence, nexus_fast against the official op sequence (PERF.md, "Masked patch
gather / scatter"): mask, patch embedding, position embeddings, decoder-side unshuffle with the mask
token, and the masked patch loss; forward, and forward + backward.

official (benchmarks/peers/mae.py): conv patch embedding of ALL patches, + pos, argsort x2,
gather, linear, repeat + cat + gather, patchify + normalise + masked mean.
nexus: random_mask, gather_patches (patchify + gather in one pass) and the patch embedding as one
linear layer on the KEPT patches only, gather_tokens (pos), linear, scatter_tokens,
masked_patch_loss (target patchified inside the kernel, masked patches only).
The decoder embedding maps straight to pixel space (D -> p*p*C), so the transformer blocks, which
are the same in both, are left out.

    python benchmarks/bench_mae_sequence.py [--quick] [--device cpu|cuda]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main
from peers import mae as official

import nexus_fast as nf
from nexus_fast.masking import random_mask

MASK_RATIO = 0.75
MODELS = {"ViT-B/16": 768, "ViT-L/16": 1024}


def _parameters(dim: int, device: str, dtype: torch.dtype) -> dict:
    patch_numel = 16 * 16 * 3
    generator = torch.Generator().manual_seed(0)

    def param(*shape: int) -> torch.Tensor:
        value = torch.randn(*shape, generator=generator) * 0.02
        return value.to(device=device, dtype=dtype).requires_grad_()

    return {
        "patch_weight": param(dim, 3, 16, 16),
        "patch_bias": param(dim),
        "pos_embed": torch.randn(1, 196, dim, generator=generator).to(device, dtype),
        "decoder_weight": param(patch_numel, dim),
        "mask_token": param(1, 1, patch_numel),
    }


def nexus_sequence(
    imgs, patch_weight, patch_bias, pos_embed, decoder_weight, mask_token, mask_ratio=MASK_RATIO
):
    masks = random_mask(imgs.shape[0], pos_embed.shape[1], mask_ratio, device=imgs.device)
    patches = nf.ops.gather_patches(imgs, 16, masks.ids_keep)  # (B, K, p*p*C)
    # The conv weight applied as a linear layer on the gathered patches (DESIGN.md, patch order).
    weight = patch_weight.permute(0, 2, 3, 1).reshape(patch_weight.shape[0], -1)
    x = torch.nn.functional.linear(patches, weight, patch_bias)
    x = x + nf.ops.gather_tokens(pos_embed, masks.ids_keep)
    y = x @ decoder_weight.t()
    y_ = nf.ops.scatter_tokens(y, masks.ids_restore, mask_token)
    return nf.ops.masked_patch_loss(y_, imgs, masks.mask, 16)


def cases(device: str, quick: bool) -> list[Case]:
    batch = 32 if quick else 256
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    models = {"ViT-B/16": MODELS["ViT-B/16"]} if quick else MODELS
    result = []
    for model, dim in models.items():
        images = torch.randn(batch, 3, 224, 224, device=device).to(dtype)
        params = _parameters(dim, device, dtype)
        trainable = [v for v in params.values() if v.requires_grad]
        label = f"{model} B={batch} {str(dtype).removeprefix('torch.')}"
        for name, sequence in (("official", official.masking_sequence), ("nexus", nexus_sequence)):

            def forward(sequence=sequence, images=images, params=params) -> None:
                with torch.no_grad():
                    sequence(images, **params)

            def full(sequence=sequence, images=images, params=params, trainable=trainable) -> None:
                torch.autograd.grad(sequence(images, **params), trainable)

            result.append(Case(name, label, "forward", forward, device=device))
            result.append(Case(name, label, "full", full, device=device))
    return result


main = benchmark_main("mae_sequence", cases, "official", __doc__)


if __name__ == "__main__":
    sys.exit(main())
