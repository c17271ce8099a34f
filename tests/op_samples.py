"""Sample inputs of every registered nexus_fast op, for opcheck and torch.compile tests.

A new op adds an entry here; test_every_registered_op_has_samples fails until it does.
"""

from collections.abc import Callable

import torch


def _ema_samples() -> list[tuple]:
    samples = []
    for student_dtype in (torch.float32, torch.bfloat16):
        teacher = [torch.randn(7), torch.randn(3, 5), torch.randn(1)]
        student = [torch.randn(t.shape).to(student_dtype) for t in teacher]
        samples.append((teacher, student, torch.tensor(0.9)))
    return samples


# op name (without the namespace) -> a function returning a list of argument tuples.
SAMPLES: dict[str, Callable[[], list[tuple]]] = {
    "ema_update_": _ema_samples,
    "ema_update_triton_": _ema_samples,
}
