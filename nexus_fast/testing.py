"""Test utilities shared by the test suite and by users who check their own kernels.

TOLERANCES is the one table of per-dtype tolerances for simple (elementwise, gather) operators,
compared against the reference computed in the same dtype. Attention and reductions use the
FlashAttention rule instead (`assert_within_reference_error`): the error of the kernel at most
`factor` times the error of the reference computed in the same low precision, both measured
against a float64 reference.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


# A few units in the last place of each format: reordering a sum or fusing a multiply-add moves a
# result by that much, a wrong index or formula by far more.
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(atol=1e-12, rtol=1e-10),
    torch.float32: Tolerance(atol=1e-5, rtol=1.3e-6),
    torch.float16: Tolerance(atol=1e-3, rtol=1e-3),
    torch.bfloat16: Tolerance(atol=1e-2, rtol=1.6e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """Asserts that `actual` matches `expected` within the tolerance of actual's dtype."""
    tolerance = TOLERANCES[actual.dtype]
    torch.testing.assert_close(
        actual,
        expected.to(actual.dtype),
        atol=tolerance.atol,
        rtol=tolerance.rtol,
        msg=(lambda default: f"{msg}\n{default}") if msg else None,
    )


def assert_within_reference_error(
    actual: torch.Tensor,
    low_precision_reference: torch.Tensor,
    exact: torch.Tensor,
    factor: float = 2.0,
    floor: float = 1e-6,
    msg: str = "",
    relative_floor: float = 0.0,
) -> None:
    """The FlashAttention criterion: max |actual - exact| <= factor * max |reference - exact|,
    plus an allowance of max(floor, relative_floor * max |exact|).

    Args:
        actual: the kernel's output (any dtype).
        low_precision_reference: the reference computed in actual's dtype.
        exact: the reference in float64.
        factor: how much worse than the low-precision reference the kernel may be.
        floor: an absolute allowance, for outputs the reference happens to get exactly right.
        relative_floor: the same allowance in parts of the largest |exact|: summing in another
            order than the reference moves a result by a few ulps of its magnitude, and the
            low-precision reference may happen to land on the exact value (a loss of 23 in
            float32 is one ulp, 1.9e-6, from its neighbours).
    """
    exact = exact.double()
    error = (actual.double() - exact).abs().max().item()
    reference_error = (low_precision_reference.double() - exact).abs().max().item()
    allowance = max(floor, relative_floor * exact.abs().max().item())
    bound = factor * reference_error + allowance
    assert error <= bound, (
        f"{msg} error {error:.3e} exceeds {factor} x reference error {reference_error:.3e} "
        f"+ {allowance:.1e}"
    )


def _distributed_worker(rank: int, world_size: int, init_file: str, fn, args, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int = 2, *args) -> list:
    """Runs fn(rank, world_size, *args) in `world_size` CPU processes joined by a gloo process
    group, and returns each rank's result (in rank order).

    fn must be a module-level function (it is pickled into the new processes) and its result
    something torch.save can write. Used by the tests of every `gather=True` loss and of the
    distributed trainer.
    """
    import os
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        init_file = os.path.join(folder, "rendezvous")
        mp.spawn(
            _distributed_worker,
            args=(world_size, init_file, fn, args, folder),
            nprocs=world_size,
            join=True,
        )
        return [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(world_size)]
