"""The DINO family across ranks (2 gloo processes, one spawn for every check, ~10 s): each
rank's result equals one process holding the concatenated batch.

- sinkhorn_knopp(gather=True): the prototype sums over both ranks (ranks holding 3 and 4 rows),
  every backend that runs CPU tensors (triton through the interpreter);
- DINOCenter: the center moves towards the mean over both ranks' rows (3 and 4 rows);
- koleo_loss(gather=True): neighbours from both ranks; each rank returns the global loss and
  its rows get world_size times the single-process gradient (DDP's averaging restores it).
"""

import torch

from nexus_fast.ops.dino import DINOCenter
from nexus_fast.ops.koleo import koleo_loss
from nexus_fast.ops.reference import dino as reference
from nexus_fast.ops.sinkhorn import sinkhorn_knopp
from nexus_fast.testing import assert_close, run_distributed

SPLIT = (3, 4)  # rows of rank 0 and rank 1 (unequal: Sinkhorn and the center allow it)


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "teacher": torch.randn(sum(SPLIT), 29, generator=generator) * 0.5,
        "cls": torch.randn(8, 6, generator=generator),
    }


def _sinkhorn_backends() -> tuple[str, ...]:
    """Every backend that runs CPU tensors here (triton: through the interpreter)."""
    from nexus_fast import triton_kernels

    return ("reference", "cpu", "triton") if triton_kernels.INTERPRET else ("reference", "cpu")


def _worker(rank: int, world_size: int, inputs: dict[str, torch.Tensor]) -> dict:
    teacher = inputs["teacher"].split(SPLIT)[rank]
    results = {}
    for backend in _sinkhorn_backends():
        results[f"sinkhorn {backend}"] = sinkhorn_knopp(
            teacher, 0.05, 3, gather=True, backend=backend
        )
    center = DINOCenter(teacher.shape[1], momentum=0.9)
    center.update(teacher)
    center.apply_update()
    results["center"] = center.center
    cls = inputs["cls"].chunk(world_size)[rank].clone().requires_grad_()
    loss = koleo_loss(cls, gather=True)
    loss.backward()
    results["koleo"], results["koleo grad"] = loss.detach(), cls.grad
    return results


def test_global_batch_statistics_equal_one_process() -> None:
    inputs = _inputs()
    ranks = run_distributed(_worker, 2, inputs)

    expected = sinkhorn_knopp(inputs["teacher"], 0.05, 3, backend="cpu")
    for backend in _sinkhorn_backends():
        gathered = torch.cat([r[f"sinkhorn {backend}"] for r in ranks])
        assert_close(gathered, expected, msg=f"sinkhorn {backend}")

    expected_center = reference.updated_center(torch.zeros(1, 29), inputs["teacher"])
    for r in ranks:
        assert_close(r["center"], expected_center.float())

    single = inputs["cls"].clone().requires_grad_()
    expected_loss = koleo_loss(single)
    expected_loss.backward()
    for rank, r in enumerate(ranks):
        assert_close(r["koleo"], expected_loss.detach())
        assert_close(r["koleo grad"], 2 * single.grad.chunk(2)[rank])
