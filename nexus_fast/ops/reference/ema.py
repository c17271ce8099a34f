"""Reference EMA: the seed's loop, one tensor at a time."""

import torch


def ema_update_(
    teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: torch.Tensor
) -> None:
    """teacher[i] = momentum * teacher[i] + (1 - momentum) * student[i], in place.

    Exact at the ends: momentum 1 leaves the teacher as it was, momentum 0 copies the student.
    """
    with torch.no_grad():
        for t, s in zip(teacher, student):
            t.mul_(momentum).add_((1 - momentum) * s.to(t.dtype))
