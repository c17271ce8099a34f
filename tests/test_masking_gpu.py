"""nexus_fast.masking on a GPU (run by benchmarks/device_check.sh): a CPU generator gives the same
masks on CUDA as on the CPU, and no generator synchronises the device with the host."""

import pytest
import torch
from test_masking_common import GENERATORS, assert_varlen_matches, seeded, tensors

import nexus_fast.masking as masking

pytestmark = pytest.mark.gpu

OFFICIAL_SIZES = {
    "mae": lambda **kw: masking.random_mask(256, 196, **kw),
    "ijepa": lambda **kw: masking.multiblock_mask(256, (14, 14), **kw),
    "ijepa-truncated": lambda **kw: masking.multiblock_mask(256, (14, 14), truncate=True, **kw),
    "vjepa2-short": lambda **kw: masking.tube_multiblock_mask(
        64, (8, 16, 16), **masking.VJEPA2_SHORT_RANGE, **kw
    ),
    "vjepa2-long": lambda **kw: masking.tube_multiblock_mask(
        64, (8, 16, 16), **masking.VJEPA2_LONG_RANGE, **kw
    ),
    "data2vec2": lambda **kw: masking.inverse_block_mask(64, (14, 14), **kw),
    "dinov2": lambda **kw: masking.block_mask(256, (16, 16), **kw),
}


def _small(name: str):
    return lambda **kw: GENERATORS[name](8, **kw)


CASES = {**OFFICIAL_SIZES, **{f"small-{name}": _small(name) for name in GENERATORS}}


@pytest.mark.parametrize("name", CASES)
def test_a_cpu_generator_gives_the_same_masks_on_cuda(name: str) -> None:
    on_cpu = tensors(CASES[name](generator=seeded(5), device="cpu"))
    on_cuda = tensors(CASES[name](generator=seeded(5), device="cuda"))
    for key, value in on_cuda.items():
        assert value.is_cuda, key
        assert torch.equal(value.cpu(), on_cpu[key]), key


@pytest.mark.parametrize("name", CASES)
def test_no_generator_synchronises(name: str) -> None:
    cuda_generator = torch.Generator("cuda").manual_seed(5)
    CASES[name](generator=seeded(5), device="cuda")  # warm-up: CUDA context, caching allocators
    CASES[name](generator=cuda_generator)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        CASES[name](generator=seeded(6), device="cuda")
        result = CASES[name](generator=cuda_generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for key, value in tensors(result).items():
        assert value.is_cuda, key


def test_a_cuda_generator_gives_valid_masks_on_cuda() -> None:
    generator = torch.Generator("cuda").manual_seed(0)
    ijepa = masking.multiblock_mask(64, (14, 14), generator=generator)
    assert_varlen_matches(ijepa.context, ijepa.context_mask)
    assert_varlen_matches(ijepa.targets, ijepa.target_masks)
    assert not (ijepa.context_mask[:, None] & ijepa.target_masks).any()
    short, long = masking.vjepa2_tube_masks(16, generator=generator)
    for tube in (short, long):
        assert_varlen_matches(tube.context, tube.context_mask)
        assert torch.equal(tube.context_mask, ~tube.target_mask)
    dinov2 = masking.block_mask(64, (16, 16), generator=generator)
    assert_varlen_matches(dinov2.masked, dinov2.mask)
    assert (dinov2.mask.sum(1) <= dinov2.budgets).all()
    data2vec = masking.inverse_block_mask(8, (14, 14), generator=generator)
    assert (data2vec.mask.sum(1) == 196 - 39).all()


def test_a_collated_result_pins_and_moves_as_a_whole() -> None:
    masks = masking.block_mask(32, (16, 16), generator=seeded(7))
    moved = masks.pin_memory().to("cuda", non_blocking=True)
    for key, value in tensors(moved).items():
        assert value.is_cuda and torch.equal(value.cpu(), tensors(masks)[key]), key
