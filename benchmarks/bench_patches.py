"""Patch and token movement on their own (PERF.md, "Masked patch gather / scatter"): time, peak
memory and GB/s against the bytes each op must move at least.

- gather_patches vs patchify-then-gather in torch (B=256, MAE's 25% kept patches).
- scatter_tokens vs the official unshuffle (repeat the mask token, cat, gather), with backward.
- gather_tokens vs torch.gather.

    python benchmarks/bench_patches.py [--quick] [--device cpu|cuda]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main, nexus_backends

import nexus_fast as nf
from nexus_fast.ops.reference import patches as reference


def _random_ids(batch: int, length: int, kept: int, device: str) -> tuple:
    ids_shuffle = torch.rand(batch, length, device=device).argsort(dim=1)
    return ids_shuffle[:, :kept].contiguous(), ids_shuffle.argsort(dim=1)


def gather_patches_cases(device: str, batch: int, dtype: torch.dtype) -> list[Case]:
    images = torch.randn(batch, 3, 224, 224, device=device).to(dtype)
    ids_keep, _ = _random_ids(batch, 196, 49, device)
    moved = 2 * batch * 49 * 768 * images.element_size()
    label = f"gather_patches B={batch} 224/16 keep 49"
    result = [
        Case(
            "patchify+gather (torch)",
            label,
            "forward",
            lambda: reference.gather_patches(images, 16, ids_keep),
            {"bytes": moved},
            device,
        )
    ]
    for backend in nexus_backends("gather_patches", device):
        result.append(
            Case(
                f"nexus:{backend}",
                label,
                "forward",
                lambda b=backend: nf.ops.gather_patches(images, 16, ids_keep, backend=b),
                {"bytes": moved},
                device,
            )
        )
    return result


def scatter_tokens_cases(device: str, batch: int, dtype: torch.dtype) -> list[Case]:
    dim = 512  # MAE's decoder width
    tokens = torch.randn(batch, 49, dim, device=device, dtype=dtype, requires_grad=True)
    mask_token = torch.zeros(1, 1, dim, device=device, dtype=dtype, requires_grad=True)
    _, ids_restore = _random_ids(batch, 196, 49, device)
    # Reads the kept tokens and writes the whole sequence; the backward moves the same again.
    moved = batch * (49 + 196) * dim * tokens.element_size()
    label = f"scatter_tokens B={batch} L=196 K=49 D={dim}"

    def official_unshuffle():
        mask_tokens = mask_token.repeat(batch, 196 - 49, 1)
        full = torch.cat([tokens, mask_tokens], dim=1)
        return torch.gather(full, 1, ids_restore.unsqueeze(-1).repeat(1, 1, dim))

    providers = {"official repeat+cat+gather": official_unshuffle}
    for backend in nexus_backends("scatter_tokens", device):
        providers[f"nexus:{backend}"] = lambda b=backend: nf.ops.scatter_tokens(
            tokens, ids_restore, mask_token, backend=b
        )
    grad_out = torch.ones(batch, 196, dim, device=device, dtype=dtype)
    result = []
    for name, run in providers.items():

        def forward(run=run) -> None:
            with torch.no_grad():
                run()

        def full(run=run) -> None:
            torch.autograd.grad(run(), (tokens, mask_token), grad_out)

        result.append(Case(name, label, "forward", forward, {"bytes": moved}, device))
        result.append(Case(name, label, "full", full, {"bytes": 2 * moved}, device))
    return result


def gather_tokens_cases(device: str, batch: int, dtype: torch.dtype) -> list[Case]:
    dim = 768
    tokens = torch.randn(batch, 196, dim, device=device, dtype=dtype)
    ids_keep, _ = _random_ids(batch, 196, 49, device)
    moved = 2 * batch * 49 * dim * tokens.element_size()
    label = f"gather_tokens B={batch} N=196 M=49 D={dim}"
    index = ids_keep.unsqueeze(-1).expand(-1, -1, dim)
    result = [
        Case(
            "torch.gather",
            label,
            "forward",
            lambda: torch.gather(tokens, 1, index),
            {"bytes": moved},
            device,
        )
    ]
    for backend in nexus_backends("gather_tokens", device):
        result.append(
            Case(
                f"nexus:{backend}",
                label,
                "forward",
                lambda b=backend: nf.ops.gather_tokens(tokens, ids_keep, backend=b),
                {"bytes": moved},
                device,
            )
        )
    return result


def cases(device: str, quick: bool) -> list[Case]:
    batch = 64 if quick else 256
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return (
        gather_patches_cases(device, batch, dtype)
        + scatter_tokens_cases(device, batch, dtype)
        + gather_tokens_cases(device, batch, dtype)
    )


# Each shape's nexus providers are compared with the torch way of doing the same thing.
BASELINES = ("patchify+gather (torch)", "official repeat+cat+gather", "torch.gather")
main = benchmark_main("patches", cases, BASELINES, __doc__)


if __name__ == "__main__":
    sys.exit(main())
