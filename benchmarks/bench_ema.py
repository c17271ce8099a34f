"""EMA teacher update over the parameter lists of ViT-B/16 and ViT-L/16 (PERF.md, "In-place EMA").

Providers: the seed's Python loop, DINOv2's _foreach_mul_ + _foreach_add_, timm's
torch._foreach_lerp_, and each nexus_fast backend usable here. Rate: GB/s against the floor of
12 bytes/param (fp32 student: read teacher and student, write teacher) or 10 (bf16 student).

    python benchmarks/bench_ema.py [--quick] [--device cpu|cuda]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, benchmark_main, nexus_backends

import nexus_fast as nf

MOMENTUM = 0.996


def vit_parameter_shapes(dim: int, depth: int, patch: int = 16, img: int = 224) -> list[tuple]:
    """Parameter shapes of a timm-style ViT (cls token, learned pos-embed, qkv bias, MLP x4)."""
    tokens = (img // patch) ** 2 + 1
    shapes: list[tuple] = [(dim, 3, patch, patch), (dim,), (1, 1, dim), (1, tokens, dim)]
    for _ in range(depth):
        shapes += [(dim,), (dim,), (3 * dim, dim), (3 * dim,), (dim, dim), (dim,)]
        shapes += [(dim,), (dim,), (4 * dim, dim), (4 * dim,), (dim, 4 * dim), (dim,)]
    return [*shapes, (dim,), (dim,)]


MODELS = {"ViT-B/16": (768, 12), "ViT-L/16": (1024, 24)}


def seed_python_loop(teacher: list, student: list) -> None:
    """The seed document's update, verbatim: two or more launches and a temporary per tensor."""
    for target_param, online_param in zip(teacher, student):
        target_param.data = MOMENTUM * target_param.data + (1 - MOMENTUM) * online_param.data


def dinov2_foreach(teacher: list, student: list) -> None:
    """DINOv2's update (train/ssl_meta_arch.py): a foreach multiply, then a foreach add."""
    torch._foreach_mul_(teacher, MOMENTUM)
    torch._foreach_add_(teacher, student, alpha=1 - MOMENTUM)


def timm_foreach_lerp(teacher: list, student: list) -> None:
    """timm's ModelEmaV3 update: one foreach lerp."""
    torch._foreach_lerp_(teacher, student, 1 - MOMENTUM)


def _with_fp32_student(update):
    """Peers need one dtype: a bf16 student is cast first (a copy of every tensor, as users do)."""

    def run(teacher: list, student: list) -> None:
        update(teacher, [s.float() for s in student])

    return run


def cases(device: str, quick: bool) -> list[Case]:
    result = []
    models = {"ViT-B/16": MODELS["ViT-B/16"]} if quick else MODELS
    backends = nexus_backends("ema_update_", device, include=("cpu", "cuda", "triton"))
    for model, (dim, depth) in models.items():
        shapes = vit_parameter_shapes(dim, depth)
        for student_dtype in (torch.float32, torch.bfloat16):
            teacher = [torch.randn(s, device=device) for s in shapes]
            student = [torch.randn(s, device=device).to(student_dtype) for s in shapes]
            params = sum(t.numel() for t in teacher)
            floor_bytes = params * (8 + student_dtype.itemsize)
            label = f"{model} {str(student_dtype).removeprefix('torch.')} ({params / 1e6:.0f}M)"
            same_dtype = student_dtype == torch.float32
            peers = {
                "seed python loop": seed_python_loop,
                "dinov2 foreach mul+add": dinov2_foreach,
                "torch._foreach_lerp_": timm_foreach_lerp,
            }
            for name, update in peers.items():
                run = update if same_dtype else _with_fp32_student(update)
                result.append(
                    Case(
                        name,
                        label,
                        "full",
                        lambda r=run, t=teacher, s=student: r(t, s),
                        {"bytes": floor_bytes},
                        device,
                    )
                )
            for backend in backends:
                result.append(
                    Case(
                        f"nexus:{backend}",
                        label,
                        "full",
                        lambda b=backend, t=teacher, s=student: nf.ops.ema_update_(
                            t, s, MOMENTUM, backend=b
                        ),
                        {"bytes": floor_bytes},
                        device,
                    )
                )
    return result


main = benchmark_main("ema", cases, "torch._foreach_lerp_", __doc__)


if __name__ == "__main__":
    sys.exit(main())
