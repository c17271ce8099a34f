"""Per-step schedules: learning rate and weight decay (warmup, then cosine) and the teacher
momentum (cosine or linear towards 1), with the seed document's names and arguments.

Every schedule is a 1-D float64 tensor with one value per optimizer step, so a trainer reads
`schedule[step]` and a resumed run continues exactly where it stopped.
"""

import math

import torch
from torch import Tensor


def cosine_schedule_with_warmup(
    base_lr: float,
    warmup_epochs: float,
    total_epochs: float,
    steps_per_epoch: int = 1,
    *,
    start_lr: float = 0.0,
    final_lr: float = 0.0,
) -> Tensor:
    """Linear warmup from start_lr to base_lr, then a half cosine from base_lr to final_lr.

    Args:
        base_lr: the value at the end of the warmup (also used for weight decay schedules).
        warmup_epochs: epochs of linear warmup (may be fractional; 0 for none).
        total_epochs: epochs in all.
        steps_per_epoch: optimizer steps per epoch (1 gives one value per epoch).
        start_lr: the first value of the warmup.
        final_lr: the value the cosine reaches at the last step.

    Returns:
        (round(total_epochs * steps_per_epoch),) float64: value[s] for step s. During warmup
        value[s] = start + (base - start) * s / W; after it, with t = (s - W) / (T - W),
        value[s] = final + (base - final) * (1 + cos(pi * t)) / 2.
    """
    if total_epochs <= 0 or steps_per_epoch <= 0:
        raise ValueError(
            f"total_epochs and steps_per_epoch must be positive, got {total_epochs}, "
            f"{steps_per_epoch}"
        )
    if not 0 <= warmup_epochs <= total_epochs:
        raise ValueError(
            f"warmup_epochs={warmup_epochs} is not in [0, total_epochs={total_epochs}]"
        )
    total = round(total_epochs * steps_per_epoch)
    warmup = round(warmup_epochs * steps_per_epoch)
    steps = torch.arange(total, dtype=torch.float64)
    values = torch.empty(total, dtype=torch.float64)
    values[:warmup] = start_lr + (base_lr - start_lr) * steps[:warmup] / max(warmup, 1)
    decay = total - warmup
    progress = (steps[warmup:] - warmup) / max(decay - 1, 1)
    values[warmup:] = final_lr + (base_lr - final_lr) * 0.5 * (1 + torch.cos(math.pi * progress))
    return values


def momentum_schedule(
    total_steps: int, start: float = 0.996, end: float = 1.0, kind: str = "cosine"
) -> Tensor:
    """The teacher momentum per step, from start to end: "cosine" (DINO, DINOv2:
    end - (end - start) * (1 + cos(pi * s / (T - 1))) / 2) or "linear" (I-JEPA, data2vec 2.0:
    start + (end - start) * s / (T - 1))."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not (0 <= start <= 1 and 0 <= end <= 1):
        raise ValueError(f"momentum start={start} and end={end} must lie in [0, 1]")
    progress = torch.arange(total_steps, dtype=torch.float64) / max(total_steps - 1, 1)
    if kind == "cosine":
        return end - (end - start) * 0.5 * (1 + torch.cos(math.pi * progress))
    if kind == "linear":
        return start + (end - start) * progress
    raise ValueError(f"kind={kind!r} is not allowed: 'cosine' or 'linear'")
