"""Attention at ViT lengths (PERF.md, "Fused attention"): forward, backward and both, head dim 64.

GPU (bf16): N in {50, 197, 257, 1568} at batches that fill the GPU, and DINOv2's crop mix
(2 x 257 + 8 x 50 tokens per image) packed as varlen. Providers: nexus triton, each SDPA backend
forced (flash, cuDNN, efficient), xformers when installed; for the DINOv2 mix also SDPA the way
DINOv2 users run it without varlen (global and local crops as two dense batches) and nexus's own
sdpa path (padding to the longest crop). TFLOP/s from 4*B*H*N^2*d (forward; x2.5 backward) and
the fraction of PERF.md's roofline (forward min(790, 2.15 N), backward min(790, 2.7 N)).
CPU (fp32, sanity only): nexus's default (SDPA's CPU kernel) against SDPA called directly.

    python benchmarks/bench_attention.py [--quick] [--device cpu|cuda]
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main, nexus_backends

import nexus_fast as nf

HEAD_DIM = 64
HEADS = 12
# (tokens per sequence, sequences) that fill an H200 at 12 heads of 64.
GPU_SHAPES = [(50, 2048), (197, 512), (257, 512), (1568, 32)]
CPU_SHAPES = [(50, 32), (197, 8)]
DINOV2_MIX = [257, 257] + [50] * 8


def _sdpa_backends() -> dict[str, object]:
    from torch.nn.attention import SDPBackend

    return {
        "sdpa:flash": SDPBackend.FLASH_ATTENTION,
        "sdpa:cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa:efficient": SDPBackend.EFFICIENT_ATTENTION,
    }


def _forced_sdpa(kind):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(kind):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _rooflines(length: int) -> dict[str, float]:
    """PERF.md's H200 rooflines (TFLOP/s) at head dim 64 for one sequence length, per mode."""
    forward, backward = min(790.0, 2.15 * length), min(790.0, 2.7 * length)
    full = 3.5 / (1.0 / forward + 2.5 / backward)  # time-weighted: forward + 2.5x backward FLOPs
    return {"forward": forward, "backward": backward, "full": full}


def _runs(run, inputs, flops: float, label: str, provider: str, device: str, length: int = 0):
    """forward / backward / full cases of one provider; backward replays a saved graph."""
    grad_out = None
    state = {}

    def forward() -> None:
        with torch.no_grad():
            run(*inputs)

    def setup_backward() -> None:
        nonlocal grad_out
        state["out"] = run(*inputs)
        grad_out = torch.ones_like(state["out"])

    def backward() -> None:
        torch.autograd.grad(state.pop("out"), inputs, grad_out)

    def full() -> None:
        out = run(*inputs)
        torch.autograd.grad(out, inputs, torch.ones_like(out))

    rooflines = _rooflines(length) if device == "cuda" and length else {}

    def work(mode: str, factor: float) -> dict[str, float]:
        rates = {"flops": factor * flops}
        if mode in rooflines:
            rates["roofline_tflops"] = rooflines[mode]
        return rates

    return [
        Case(provider, label, "forward", forward, work("forward", 1.0), device),
        Case(provider, label, "backward", backward, work("backward", 2.5), device, setup_backward),
        Case(provider, label, "full", full, work("full", 3.5), device),
    ]


def _works(run, inputs) -> bool:
    """Whether a provider accepts these inputs (a forced SDPA backend may not)."""
    try:
        run(*inputs)
    except RuntimeError:
        return False
    return True


def dense_cases(device: str, quick: bool) -> list[Case]:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = GPU_SHAPES if device == "cuda" else CPU_SHAPES
    result = []
    for length, batch in shapes[:2] if quick else shapes:
        inputs = [
            torch.randn(
                batch, HEADS, length, HEAD_DIM, device=device, dtype=dtype, requires_grad=True
            )
            for _ in range(3)
        ]
        flops = 4.0 * batch * HEADS * length**2 * HEAD_DIM
        label = f"N={length} B={batch} H={HEADS} d={HEAD_DIM}"
        providers = {"sdpa (torch default)": F.scaled_dot_product_attention}
        if device == "cuda":
            providers.update({name: _forced_sdpa(kind) for name, kind in _sdpa_backends().items()})
        for backend in nexus_backends("attention", device):
            providers[f"nexus:{backend}"] = lambda q, k, v, b=backend: nf.ops.attention(
                q, k, v, backend=b
            )
        for name, run in providers.items():
            if _works(run, inputs):
                result += _runs(run, inputs, flops, label, name, device, length)
    return result


def dinov2_mix_cases(device: str, images: int) -> list[Case]:
    """DINOv2's 2 global + 8 local crops per image, as one packed varlen batch."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lengths = torch.tensor(DINOV2_MIX * images)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
    cu[1:] = lengths.cumsum(0).to(device)
    total = int(lengths.sum())
    inputs = [
        torch.randn(total, HEADS, HEAD_DIM, device=device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    ]
    flops = float(4 * HEADS * HEAD_DIM * (lengths.double() ** 2).sum())
    label = f"DINOv2 mix x{images} (2x257+8x50)"

    def dense(t: torch.Tensor, length: int) -> torch.Tensor:
        return t.reshape(-1, length, HEADS, HEAD_DIM).transpose(1, 2)

    def two_dense_batches(q, k, v):
        # What DINOv2 runs without varlen: the global crops, then the local crops, each dense.
        outs = []
        for part, length in ((slice(0, 514), 257), (slice(514, None), 50)):
            # Packed per image as (g, g, l x 8): take each crop kind of every image.
            views = [
                dense(t.reshape(images, -1, HEADS, HEAD_DIM)[:, part], length) for t in (q, k, v)
            ]
            outs.append(F.scaled_dot_product_attention(*views))
        return outs

    providers = {"sdpa: globals and locals apart": two_dense_batches}
    for backend in nexus_backends("attention", device):
        providers[f"nexus:{backend} varlen"] = lambda q, k, v, b=backend: nf.ops.attention(
            q, k, v, cu_seqlens=cu, max_seqlen=257, backend=b
        )
    result = []
    for name, run in providers.items():
        if _works(run, inputs):
            result += _runs(_as_one_output(run), inputs, flops, label, name, device)
    return result


def _as_one_output(run):
    """Providers that return several tensors, concatenated (so the backward has one output)."""

    def one(*inputs):
        out = run(*inputs)
        return torch.cat([o.reshape(-1) for o in out]) if isinstance(out, list) else out

    return one


def cases(device: str, quick: bool) -> list[Case]:
    images = 64 if device == "cuda" else 4
    return dense_cases(device, quick) + dinov2_mix_cases(device, 16 if quick else images)


BASELINES = ("sdpa (torch default)", "sdpa: globals and locals apart")
main = benchmark_main("attention", cases, BASELINES, __doc__)

if __name__ == "__main__":
    sys.exit(main())
