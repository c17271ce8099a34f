"""What every mask generator shares: the result types, the random draws, argument checks, and the
conversion of boolean masks into padded index lists."""

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


class TensorFields:
    """Moves all the tensors of a result at once: `.to(device)` after a data-loader collator,
    and `.pin_memory()`, which `DataLoader(pin_memory=True)` calls on what a collator returns."""

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> "TensorFields":
        """A copy with every tensor on `device`."""
        return self._map(lambda value: value.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "TensorFields":
        """A copy with every tensor in pinned host memory."""
        return self._map(lambda value: value.pin_memory())

    def _map(self, move) -> "TensorFields":
        fields = dataclasses.fields(self)
        return dataclasses.replace(self, **{f.name: move(getattr(self, f.name)) for f in fields})


@dataclass(frozen=True)
class MaskedIndices(TensorFields):
    """A fixed number of kept patches per row (MAE, data2vec 2.0).

    Attributes:
        ids_keep: (B, K) int64, the patches the encoder sees.
        ids_restore: (B, L) int64, the position of each patch in cat([kept, removed]):
            `scatter_tokens(kept_tokens, ids_restore, mask_token)` rebuilds the full sequence,
            exactly as the MAE decoder unshuffles.
        mask: (B, L) bool, True where the patch is removed (the patches the loss is taken on).
    """

    ids_keep: Tensor
    ids_restore: Tensor
    mask: Tensor


@dataclass(frozen=True)
class VarlenIndices(TensorFields):
    """Rows of patch indices of different lengths, padded to one width.

    Each row lists its patches in ascending order (as `torch.nonzero` gives them), then zeros.
    The width is fixed by the generator's arguments, never by its draws (see the package
    docstring), so it is an upper bound of the lengths, not necessarily reached.

    Attributes:
        ids: (..., N_max) int64, 0 beyond each row's length.
        lengths: (...) int64, the number of real entries of each row.
        valid: (..., N_max) bool, True for real entries (a key padding mask is its negation).
    """

    ids: Tensor
    lengths: Tensor
    valid: Tensor

    @property
    def max_length(self) -> int:
        """The padded width N_max: no row is longer, so it serves as varlen attention's
        max_seqlen without reading the lengths back from the device."""
        return self.ids.shape[-1]

    def cu_seqlens(self) -> Tensor:
        """(rows + 1,) int32 offsets of each row in the packed sequence `ids[valid]`, rows being
        the leading dimensions flattened (the layout of varlen attention)."""
        offsets = self.lengths.flatten().cumsum(0)
        return torch.nn.functional.pad(offsets, (1, 0)).to(torch.int32)

    def trimmed(self) -> "VarlenIndices":
        """The same rows, cut to the longest one.

        Reads the largest length on the host: free on the CPU (a data-loader collator), one
        device synchronisation on a GPU. With `truncate=True` it gives the official dense
        (..., batch minimum) tensors.
        """
        width = int(self.lengths.max()) if self.lengths.numel() else 0
        return VarlenIndices(self.ids[..., :width], self.lengths, self.valid[..., :width])


# -- random draws -------------------------------------------------------------------------------


def resolve_generator(
    generator: torch.Generator | None, device: torch.device | str | None
) -> tuple[torch.Generator, torch.device]:
    """The generator to draw from (default: torch's default CPU generator) and the output device
    (default: the generator's)."""
    if generator is None:
        generator = torch.default_generator
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    return generator, torch.device(device) if device is not None else generator.device


def uniform(generator: torch.Generator, *shape: int) -> Tensor:
    """U[0, 1) float64 numbers, drawn on the generator's device (53 random bits: distinct keys)."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` on `device`; a host-to-GPU copy goes through pinned memory without blocking."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def scaled_index(u: Tensor, count: Tensor | int) -> Tensor:
    """floor(u * count) in [0, count - 1]: a uniform integer from a uniform float64 u < 1.

    No clamp is needed: the largest double below 1 is 1 - 2**-53, and its product with an
    integer n is at least half a spacing below n, so it rounds below n.
    """
    return (u * count).floor().long()


def grid_tensor(grid: tuple[int, ...], device: torch.device) -> Tensor:
    """The grid's extents as an int64 tensor on `device`, copied without a synchronisation
    (`torch.tensor(..., device="cuda")` would wait for the copy, and so for the stream)."""
    return to_device(torch.tensor(grid), device)


# -- argument checks ----------------------------------------------------------------------------


def check_int(name: str, value: object, minimum: int) -> int:
    """value as an int, or ValueError if it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_grid(grid: object, names: Sequence[str]) -> tuple[int, ...]:
    """A patch grid: one positive integer per name, e.g. ("h", "w") or ("t", "h", "w")."""
    shape = "(" + ", ".join(names) + ")"
    if (
        not isinstance(grid, Sequence)
        or len(grid) != len(names)
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in grid)
    ):
        raise ValueError(f"grid must be {shape} of positive integers, got {grid!r}")
    return tuple(grid)


def is_number(value: object) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_fraction(name: str, value: object, *, low_open: bool, high_open: bool) -> float:
    """A number in [0, 1], with the ends chosen excluded."""
    below = not is_number(value) or value < 0 or (low_open and value == 0)
    if below or value > 1 or (high_open and value == 1):
        low, high = ("(0" if low_open else "[0"), ("1)" if high_open else "1]")
        raise ValueError(f"{name} must lie in {low}, {high}, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """A number > 0."""
    if not is_number(value) or value <= 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def check_interval(
    name: str, value: object, *, upper: float | None = None, zero_ok: bool = False
) -> tuple[float, float]:
    """A pair (low, high) with 0 < low <= high (0 <= low when zero_ok), and high <= upper."""
    valid = isinstance(value, Sequence) and len(value) == 2 and all(map(is_number, value))
    if valid:
        low, high = float(value[0]), float(value[1])
        valid = (low > 0 or (zero_ok and low == 0)) and low <= high
        valid = valid and (upper is None or high <= upper)
    if not valid:
        allowed = ("0 <= low" if zero_ok else "0 < low") + " <= high"
        allowed += f" <= {upper:g}" if upper is not None else ""
        raise ValueError(f"{name} must be a pair (low, high) with {allowed}, got {value!r}")
    return low, high


# -- masks and index lists ----------------------------------------------------------------------


def box_masks(starts: Tensor, sizes: Tensor, grid: tuple[int, ...]) -> Tensor:
    """Boolean masks of axis-aligned boxes on a row-major grid.

    Args:
        starts: (..., D) int64, the first cell of each box along each of the D grid axes.
        sizes: (..., D) int64, the extent of each box along each axis.
        grid: the D extents of the grid.

    Returns:
        (..., prod(grid)) bool, True inside the box: the outer product of one interval per axis.
    """
    mask = None
    for axis, extent in enumerate(grid):
        cells = torch.arange(extent, device=starts.device)
        start = starts[..., axis, None]
        inside = (cells >= start) & (cells < start + sizes[..., axis, None])  # (..., extent)
        mask = inside if mask is None else (mask[..., :, None] & inside[..., None, :]).flatten(-2)
    return mask


def varlen_from_mask(mask: Tensor, width: int, truncate: bool) -> tuple[VarlenIndices, Tensor]:
    """The True positions of each row of `mask`, ascending, padded with zeros to `width`.

    Args:
        mask: (..., L) bool.
        width: the padded width; no row may have more True entries (an index error otherwise).
        truncate: cut every row to the shortest row of the whole tensor, keeping its first
            entries (the official JEPA collators' truncation).

    Returns:
        The indices, and `mask` with the truncated entries cleared.
    """
    flags = mask.long()
    rank = flags.cumsum(-1) - 1  # position of each True entry in its row
    counts = rank[..., -1] + 1
    if truncate and mask.numel():
        lengths = counts.amin().expand_as(counts).clone()
        mask = mask & (rank < lengths[..., None])
        flags = mask.long()
    else:
        lengths = counts
    # Entries that are not listed go to a spare last column, dropped afterwards: the slot is
    # the rank where listed, else width (as arithmetic, twice as fast as torch.where on a CPU).
    slot = rank.sub_(width).mul_(flags).add_(width)
    patches = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    ids = mask.new_zeros((*mask.shape[:-1], width + 1), dtype=torch.int64)
    ids = ids.scatter_(-1, slot, patches)[..., :width]
    valid = torch.arange(width, device=mask.device) < lengths[..., None]
    return VarlenIndices(ids, lengths, valid), mask


def indices_from_kept(kept: Tensor, num_keep: int) -> MaskedIndices:
    """MaskedIndices of a (B, L) bool mask with exactly `num_keep` True (kept) entries per row:
    kept and removed patches each in ascending order."""
    rank_kept = kept.cumsum(-1) - 1
    rank_removed = (~kept).cumsum(-1) - 1 + num_keep
    ids_restore = torch.where(kept, rank_kept, rank_removed)
    slot = torch.where(kept, rank_kept, num_keep)  # removed patches go to a spare column
    patches = torch.arange(kept.shape[-1], device=kept.device).expand_as(kept)
    ids_keep = kept.new_zeros((kept.shape[0], num_keep + 1), dtype=torch.int64)
    ids_keep = ids_keep.scatter_(-1, slot, patches)[:, :num_keep]
    return MaskedIndices(ids_keep, ids_restore, ~kept)
