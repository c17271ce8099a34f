"""nexus_fast.masking: what every generator promises (types, determinism, devices, no host
reads, argument checks), the shared helpers, and the checks that the per-generator test files
(tests/test_masking_*.py) import from here."""

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

import nexus_fast.masking as masking
from nexus_fast.masking import VarlenIndices
from nexus_fast.masking._blocks import _side_pairs, area_bounds
from nexus_fast.masking._common import box_masks, scaled_index, varlen_from_mask
from nexus_fast.masking.multiblock import first_sufficient

# The official algorithms, as benchmarks/peers/masks.py restates them: oracles for the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers import masks as official

__all__ = [
    "GENERATORS",
    "assert_sides_follow_formula",
    "assert_varlen_matches",
    "official",
    "seeded",
    "tensors",
]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_varlen_matches(varlen: VarlenIndices, mask: Tensor) -> None:
    """`varlen` lists exactly the True entries of `mask` (..., L), each row ascending, padded
    with zeros, with consistent lengths, valid flags and cu_seqlens."""
    ids, lengths, valid = varlen.ids, varlen.lengths, varlen.valid
    assert (ids.dtype, lengths.dtype, valid.dtype) == (torch.int64, torch.int64, torch.bool)
    assert ids.shape[:-1] == mask.shape[:-1] == lengths.shape == valid.shape[:-1]
    assert ids.shape == valid.shape and varlen.max_length == ids.shape[-1]
    assert torch.equal(lengths, mask.sum(-1))
    assert torch.equal(valid, torch.arange(ids.shape[-1], device=ids.device) < lengths[..., None])
    assert not ids[~valid].any(), "padding must be zeros"
    listed = torch.zeros(mask.shape, dtype=torch.int64, device=mask.device)
    listed.scatter_add_(-1, ids, valid.long())  # a duplicate would count 2
    assert torch.equal(listed, mask.long()), "the listed indices differ from the mask"
    assert ((ids[..., 1:] > ids[..., :-1]) | ~valid[..., 1:]).all(), "rows must ascend"
    expected = torch.cat([lengths.new_zeros(1), lengths.flatten().cumsum(0)]).int()
    assert torch.equal(varlen.cu_seqlens(), expected)
    assert varlen.cu_seqlens().dtype == torch.int32


def assert_sides_follow_formula(
    sides: Tensor,
    grid: tuple[int, int],
    scale: tuple[float, float],
    aspect: tuple[float, float],
) -> None:
    """Each (h, w) row of `sides` can come from I-JEPA's size formula for some scale and aspect
    in their ranges.

    h = round(x), w = round(y) with x = sqrt(cells aspect), y = sqrt(cells / aspect), so
    x in [h - 1/2, h + 1/2] and y in [w - 1/2, w + 1/2] (x unbounded above when h was clipped to
    the grid): cells = x y and aspect = x / y must then meet their ranges. An exchanged h and w,
    a wrong scale or a dropped clip breaks it.
    """
    cells = (math.floor(grid[0] * grid[1] * scale[0]), math.floor(grid[0] * grid[1] * scale[1]))
    for h, w in sides.tolist():
        x_low, y_low = h - 0.5, w - 0.5
        x_high = math.inf if h == grid[0] else h + 0.5
        y_high = math.inf if w == grid[1] else w + 0.5
        assert x_low * y_low <= cells[1] + 1e-9 and x_high * y_high >= cells[0] - 1e-9, (h, w)
        assert x_low / y_high <= aspect[1] + 1e-9 and x_high / y_low >= aspect[0] - 1e-9, (h, w)


# -- every generator ----------------------------------------------------------------------------

# Small grids keep the suite fast; each file tests its generator at the official sizes.
GENERATORS = {
    "random": lambda batch, **kw: masking.random_mask(batch, 50, **kw),
    "multiblock": lambda batch, **kw: masking.multiblock_mask(batch, (10, 12), **kw),
    "tube": lambda batch, **kw: masking.tube_multiblock_mask(batch, (4, 8, 8), **kw),
    "tube-half-time": lambda batch, **kw: masking.tube_multiblock_mask(
        batch, (4, 8, 8), temporal_scale=(0.5, 0.5), per_batch_sizes=False, **kw
    ),
    "inverse_block": lambda batch, **kw: masking.inverse_block_mask(
        batch, (7, 9), num_clones=3, **kw
    ),
    "block": lambda batch, **kw: masking.block_mask(batch, (12, 12), **kw),
}


def tensors(result: object, prefix: str = "") -> dict[str, Tensor]:
    """Every tensor of a result, by its dotted field name."""
    found = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if dataclasses.is_dataclass(value):
            found.update(tensors(value, f"{prefix}{field.name}."))
        else:
            found[prefix + field.name] = value
    return found


def expected_dtype(key: str) -> torch.dtype:
    name = key.rsplit(".", 1)[-1]
    if name in ("mask", "valid") or name.endswith(("_mask", "_masks")):
        return torch.bool
    return torch.float32 if name == "weights" else torch.int64


@pytest.mark.parametrize("name", GENERATORS)
def test_same_seed_same_masks_other_seed_other_masks(name: str) -> None:
    first = tensors(GENERATORS[name](8, generator=seeded(3)))
    again = tensors(GENERATORS[name](8, generator=seeded(3)))
    other = tensors(GENERATORS[name](8, generator=seeded(4)))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


@pytest.mark.parametrize("name", GENERATORS)
def test_default_generator_follows_torch_manual_seed(name: str) -> None:
    torch.manual_seed(11)
    first = tensors(GENERATORS[name](4))
    torch.manual_seed(11)
    again = tensors(GENERATORS[name](4))
    assert all(torch.equal(first[key], again[key]) for key in first)


@pytest.mark.parametrize("name", GENERATORS)
def test_dtypes_and_device(name: str) -> None:
    for key, value in tensors(GENERATORS[name](5, generator=seeded(0), device="cpu")).items():
        assert value.dtype == expected_dtype(key), key
        assert value.device.type == "cpu", key


@pytest.mark.parametrize("name", GENERATORS)
def test_no_value_is_read_back_from_the_device(name: str) -> None:
    # Reading a meta tensor raises, so this run proves the device path never syncs with the
    # host; the shapes must equal the CPU's, which depend on the arguments only.
    on_meta = tensors(GENERATORS[name](6, generator=seeded(0), device="meta"))
    on_cpu = tensors(GENERATORS[name](6, generator=seeded(0), device="cpu"))
    for key, value in on_meta.items():
        assert value.device.type == "meta", key
        assert value.shape == on_cpu[key].shape and value.dtype == on_cpu[key].dtype, key


@pytest.mark.parametrize("name", GENERATORS)
def test_results_move_as_a_whole(name: str) -> None:
    result = GENERATORS[name](3, generator=seeded(0))
    moved = result.to("meta")
    assert type(moved) is type(result)
    assert all(value.device.type == "meta" for value in tensors(moved).values())
    assert all(value.device.type == "cpu" for value in tensors(result).values())


def test_a_data_loader_collator_builds_the_masks() -> None:
    def collate(images: list[Tensor]) -> tuple[Tensor, masking.MultiBlockMask]:
        return torch.stack(images), masking.multiblock_mask(len(images), (14, 14))

    dataset = [torch.zeros(3, 8, 8) for _ in range(10)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate)
    sizes = [(images.shape[0], masks.context_mask.shape[0]) for images, masks in loader]
    assert sizes == [(4, 4), (4, 4), (2, 2)]


def test_widths_depend_on_the_arguments_only() -> None:
    shapes = {
        seed: {
            k: v.shape
            for k, v in tensors(GENERATORS["multiblock"](6, generator=seeded(seed))).items()
        }
        for seed in range(3)
    }
    assert shapes[0] == shapes[1] == shapes[2]


# -- argument checks ----------------------------------------------------------------------------

INVALID = [
    (masking.random_mask, (0, 196), {}, "batch_size must be an integer >= 1, got 0"),
    (masking.random_mask, (2, 196), {"mask_ratio": 1.0}, r"mask_ratio must lie in \[0, 1\)"),
    (masking.random_mask, (2, 196), {"mask_ratio": -0.1}, r"mask_ratio must lie in \[0, 1\)"),
    (masking.random_mask, (2, 3), {"mask_ratio": 0.75}, "keeps int.* = 0 of 3 patches"),
    (masking.random_mask, (2, 4), {"noise": torch.rand(2, 5)}, r"noise must be .* \(2, 4\)"),
    (masking.random_mask, (2, 4), {"generator": 0}, None),
    (masking.multiblock_mask, (2, (14,)), {}, r"grid must be \(H, W\) of positive integers"),
    (masking.multiblock_mask, (2, (14, 0)), {}, r"grid must be \(H, W\)"),
    (masking.multiblock_mask, (2, (14, 14)), {"num_targets": 0}, "num_targets must be"),
    (
        masking.multiblock_mask,
        (2, (14, 14)),
        {"target_scale": (0.2, 0.1)},
        r"target_scale must be a pair \(low, high\) with 0 < low <= high <= 1, got \(0.2, 0.1\)",
    ),
    (masking.multiblock_mask, (2, (14, 14)), {"context_scale": (0.9, 1.2)}, "context_scale"),
    (masking.multiblock_mask, (2, (14, 14)), {"target_aspect": (0.0, 1.0)}, "target_aspect"),
    (masking.multiblock_mask, (2, (14, 14)), {"min_keep": -1}, "min_keep must be"),
    (masking.multiblock_mask, (2, (14, 14)), {"min_keep": 40}, "fewer than max.min_keep, 1. = 40"),
    (masking.multiblock_mask, (2, (4, 4)), {"target_scale": (0.01, 0.1)}, "can be 0x0"),
    (
        masking.multiblock_mask,
        (2, (6, 6)),
        {"target_scale": (0.3, 0.3), "context_scale": (0.15, 0.15), "min_keep": 8},
        "a context can keep at most 4 patches",
    ),
    (masking.tube_multiblock_mask, (2, (8, 16)), {}, r"grid must be \(T, H, W\)"),
    (masking.tube_multiblock_mask, (2, (8, 16, 16)), {"num_blocks": 0}, "num_blocks"),
    (masking.tube_multiblock_mask, (2, (8, 16, 16)), {"temporal_scale": (0, 1)}, "temporal"),
    (masking.tube_multiblock_mask, (2, (8, 2, 2)), {"spatial_scale": (0.1, 0.1)}, "empty"),
    (
        masking.tube_multiblock_mask,
        (2, (8, 4, 4)),
        {"spatial_scale": (0.5, 1.0), "aspect": (1.0, 1.0)},
        "can cover the whole 8x4x4 grid",
    ),
    (masking.inverse_block_mask, (2, (14, 14)), {"mask_ratio": 1.5}, "mask_ratio"),
    (masking.inverse_block_mask, (2, (14, 14)), {"num_clones": 0}, "num_clones"),
    (masking.inverse_block_mask, (2, (14, 14)), {"block_size": 0}, "block_size"),
    (masking.inverse_block_mask, (2, (14, 14)), {"adjust": -0.1}, r"adjust must lie in \[0, 1\)"),
    (masking.inverse_block_mask, (2, (2, 2)), {"mask_ratio": 0.8}, "keeps int.* = 0 of 4"),
    (masking.block_mask, (2, (16, 16)), {"masked_fraction": 1.5}, r"masked_fraction .*\[0, 1\]"),
    (masking.block_mask, (2, (16, 16)), {"ratio_range": (0.5, 0.1)}, "ratio_range"),
    (masking.block_mask, (2, (16, 16)), {"ratio_range": (0.1, 1.5)}, "ratio_range"),
    (masking.block_mask, (2, (16, 16)), {"min_patches": 0}, "min_patches"),
    (masking.block_mask, (2, (16, 16)), {"max_patches": 0}, "max_patches must be a number > 0"),
    (masking.block_mask, (2, (16, 16)), {"min_aspect": float("nan")}, "min_aspect"),
    (masking.block_mask, (2, (16, 16)), {"max_aspect": 0.1}, "max_aspect must be >= min_aspect"),
]


@pytest.mark.parametrize(("function", "args", "kwargs", "message"), INVALID)
def test_invalid_arguments_are_refused(function, args, kwargs, message) -> None:
    error = TypeError if message is None else ValueError
    with pytest.raises(error, match=message):
        function(*args, **kwargs)


# -- shared helpers -----------------------------------------------------------------------------


def test_varlen_from_mask_and_truncation() -> None:
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    varlen, same = varlen_from_mask(mask, 5, truncate=False)
    assert torch.equal(same, mask)
    assert varlen.ids.tolist() == [[0, 2, 3, 0, 0], [3, 0, 0, 0, 0], [0, 1, 2, 3, 4]]
    assert varlen.lengths.tolist() == [3, 1, 5]
    assert varlen.cu_seqlens().tolist() == [0, 3, 4, 9]
    assert_varlen_matches(varlen, mask)
    cut, cut_mask = varlen_from_mask(mask, 5, truncate=True)
    assert cut.lengths.tolist() == [1, 1, 1]
    assert cut_mask.long().tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 1, 0], [1, 0, 0, 0, 0]]
    assert_varlen_matches(cut, cut_mask)
    trimmed = cut.trimmed()
    assert trimmed.ids.tolist() == [[0], [3], [0]] and trimmed.max_length == 1


def test_a_row_longer_than_the_width_is_an_error_not_a_silent_cut() -> None:
    with pytest.raises(RuntimeError):
        varlen_from_mask(torch.ones(2, 6, dtype=torch.bool), 4, truncate=False)


def test_box_masks_are_row_major_boxes() -> None:
    starts = torch.tensor([[1, 0, 2]])
    sides = torch.tensor([[2, 2, 1]])
    mask = box_masks(starts, sides, (3, 2, 4)).reshape(3, 2, 4)
    expected = torch.zeros(3, 2, 4, dtype=torch.bool)
    expected[1:3, 0:2, 2:3] = True
    assert torch.equal(mask, expected)


@pytest.mark.parametrize(
    ("grid", "scale", "aspect"),
    [
        ((14, 14), (0.15, 0.2), (0.75, 1.5)),
        ((14, 14), (0.85, 1.0), (1.0, 1.0)),
        ((16, 16), (0.7, 0.7), (0.75, 1.5)),
        ((5, 9), (0.05, 0.6), (0.3, 3.0)),
    ],
)
def test_area_bounds_hold_for_every_draw(grid, scale, aspect) -> None:
    # A dense sweep of (scale, aspect) through the formula never leaves the bounds, and reaches
    # the areas of both bounds (they are the exact extremes, not loose ones).
    cells = grid[0] * grid[1]
    smallest, largest = area_bounds(grid, scale, aspect)
    drawn = set()
    for s in torch.linspace(scale[0], scale[1], 41, dtype=torch.float64).tolist():
        for a in torch.linspace(aspect[0], aspect[1], 1001, dtype=torch.float64).tolist():
            n = math.floor(cells * s)
            drawn.add(
                (n, min(round(math.sqrt(n * a)), grid[0]), min(round(math.sqrt(n / a)), grid[1]))
            )
    for n, h, w in drawn:
        assert (h, w) in _side_pairs(n, grid, aspect), (n, h, w)
    areas = {h * w for _, h, w in drawn}
    assert min(areas) == smallest[0] * smallest[1] and max(areas) == largest[0] * largest[1]


def test_first_sufficient_takes_the_first_enough_else_the_most() -> None:
    counts = torch.tensor([[3, 12, 15, 11], [9, 2, 9, 1], [10, 10, 10, 10]])
    assert first_sufficient(counts, 10).tolist() == [1, 0, 0]


def test_a_uniform_index_stays_below_its_count() -> None:
    # The largest float64 below 1 times any count rounds below the count: no clamp is needed.
    counts = torch.arange(1, 100_001)
    u = torch.full(counts.shape, 1 - 2**-53, dtype=torch.float64)
    assert torch.equal(scaled_index(u, counts), counts - 1)
    assert torch.equal(scaled_index(torch.zeros_like(u), counts), torch.zeros_like(counts))
