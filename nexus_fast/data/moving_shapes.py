"""Moving animal shapes: a built-in video dataset made from the animal-shapes images, in the manner
of Moving MNIST, with two labels per clip so that video features can be scored by kNN twice:

- `classes`, the animal (what): `knn_accuracy(f_train, train.classes, f_test, test.classes)`;
- `directions`, the motion (where to): the same with `train.directions` and `test.directions`.
  Only the motion tells the direction apart: a feature of one frame cannot, beyond the small cue
  of where the animal starts (see below).

Each clip pastes one 28x28 image onto a black size x size canvas and moves it by `speed` pixels
per frame along each moving axis of its direction (so a diagonal moves speed*sqrt(2) pixels),
the direction drawn per clip. The start (top-left corner of the image in the first frame) is a
whole pixel drawn uniformly among those that keep the whole image, hence the animal, inside the
canvas in every frame. Moving right, for instance, the image can only start in the left part of
the canvas, so the first frame carries a weak cue of the direction; the cue vanishes as the
canvas grows relative to the path.

The image is placed at fractional positions by linear interpolation (one tent-weight matrix per
axis, a batched matmul per frame): a whole-pixel position is an exact copy, a fractional one
splits each pixel between two neighbours, which keeps the total intensity and moves the centre of
mass by exactly the displacement, up to rounding to uint8. With the defaults (8 frames, a 32x32
canvas) a 28x28 image has 4 pixels of room, so the speed is 4/7 pixel per frame; with room for
it (size >= 28 + num_frames - 1) it is 1 pixel per frame.

Everything random comes from numpy's default_rng(seed): a seed gives the same clips everywhere.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nexus_fast.config import require

from .animal_shapes import animal_shapes_split

# (row, column) steps of the eight directions, rows growing downwards, clockwise from "right".
STEPS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
STEP_NAMES = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")


def direction_steps(directions: int) -> Tensor:
    """The (row, column) step of each direction label, (directions, 2) int64 in {-1, 0, 1}:
    4 directions are right, down, left, up; 8 add the diagonals (STEPS, STEP_NAMES order).

    Raises:
        ValueError: directions is not 4 or 8.
    """
    require(directions in (4, 8), "directions", directions, "4 or 8")
    return torch.tensor(STEPS[:: 8 // directions], dtype=torch.int64)


@dataclass
class MovingShapes:
    """Clips of moving animals and their labels (moving_shapes).

    Attributes:
        clips: (N, 1, T, size, size) uint8, the video layout (B, C, T, H, W).
        classes: (N,) int64, the animal of each clip (animal_shapes.CLASSES).
        directions: (N,) int64, the direction of each clip, an index into
            direction_steps(number of directions).
        starts: (N, 2) int64, (row, column) of the image's top-left corner in the first frame.
        speed: pixels per frame along each moving axis.
    """

    clips: Tensor
    classes: Tensor
    directions: Tensor
    starts: Tensor
    speed: float

    def __len__(self) -> int:
        return len(self.classes)


def tent_weights(offsets: Tensor, size: int, extent: int) -> Tensor:
    """(N, size, extent) linear-interpolation weights placing an extent-long axis at a
    fractional offset on a size-long axis: weight[n, y, i] = max(0, 1 - |y - offset[n] - i|)."""
    # Clips share few distinct offsets (whole-pixel starts plus t * speed): build each once.
    distinct, which = torch.unique(offsets.float(), return_inverse=True)
    canvas = torch.arange(size, dtype=torch.float32)[:, None]  # (size, 1)
    source = torch.arange(extent, dtype=torch.float32)[None, :]  # (1, extent)
    distance = canvas - distinct[:, None, None] - source  # (U, size, extent)
    return (1 - distance.abs()).clamp_(min=0)[which]


def moving_shapes(
    images: Tensor,
    labels: Tensor,
    *,
    num_frames: int = 8,
    size: int = 32,
    directions: int = 4,
    speed: float | None = None,
    seed: int = 0,
) -> MovingShapes:
    """One clip per image: the image moving across a black canvas (see the module docstring).

    Args:
        images: (N, H, W) or (N, 1, H, W) uint8, e.g. animal_shapes_split's (N, 28, 28).
        labels: (N,) class of each image, kept as the clips' `classes`.
        num_frames: frames per clip (T).
        size: the canvas side, at least the image's height and width.
        directions: 4 (right, down, left, up) or 8 (and the diagonals).
        speed: pixels per frame along each moving axis; None is 1, or less when the canvas has
            no room for it: (size - image side) / (num_frames - 1).
        seed: seeds the numpy generator that draws the directions and the starts.

    Returns:
        MovingShapes with clips (N, 1, num_frames, size, size) uint8 and the labels.

    Raises:
        ValueError: a bad shape or argument, or a speed whose path leaves the canvas (the
            message gives the largest allowed).
    """
    require(
        images.dim() == 3 or (images.dim() == 4 and images.shape[1] == 1),
        "images.shape",
        tuple(images.shape),
        "(N, H, W) or (N, 1, H, W)",
    )
    pictures = images.reshape(images.shape[0], images.shape[-2], images.shape[-1])
    count, height, width = pictures.shape
    require(
        labels.shape == (count,), "labels.shape", tuple(labels.shape), f"({count},), one per image"
    )
    require(isinstance(num_frames, int) and num_frames > 0, "num_frames", num_frames, "> 0")
    require(
        isinstance(size, int) and size >= max(height, width),
        "size",
        size,
        f"an int >= the image side {max(height, width)}",
    )
    steps = direction_steps(directions)
    room = size - max(height, width)
    # A one-frame clip never moves: any speed fits.
    fastest = room / (num_frames - 1) if num_frames > 1 else math.inf
    if speed is None:
        speed = min(1.0, fastest)
    require(
        speed >= 0 and speed <= fastest * (1 + 1e-9),
        "speed",
        speed,
        f"between 0 and {fastest:.6g} pixels per frame (the room of a {size}x{size} canvas "
        f"for a {height}x{width} image over {num_frames} frames)",
    )
    path = round(speed * (num_frames - 1), 6)  # rounding absorbs float error at the fastest

    rng = np.random.default_rng(seed)
    direction = rng.integers(0, directions, size=count)
    step = steps.numpy()[direction]  # (N, 2)
    limits = np.array([size - height, size - width])
    low = np.ceil(np.maximum(0, -step * path)).astype(np.int64)
    high = np.floor(limits - np.maximum(0, step * path)).astype(np.int64)
    starts = rng.integers(low, high + 1)  # (N, 2), whole pixels

    values = pictures.float()  # (N, H, W)
    frames = []
    for t in range(num_frames):
        offset = torch.from_numpy(starts + step * (speed * t))  # (N, 2) float
        rows = tent_weights(offset[:, 0], size, height)  # (N, size, H)
        columns = tent_weights(offset[:, 1], size, width)  # (N, size, W)
        frames.append(rows @ values @ columns.transpose(1, 2))  # (N, size, size)
    clips = torch.stack(frames, dim=1).round_().clamp_(0, 255).to(torch.uint8)
    return MovingShapes(
        clips=clips[:, None],
        classes=labels.to(torch.int64),
        directions=torch.from_numpy(direction).to(torch.int64),
        starts=torch.from_numpy(starts).to(torch.int64),
        speed=float(speed),
    )


def moving_shapes_split(
    seed: int = 0,
    num_frames: int = 8,
    size: int = 32,
    directions: int = 4,
    *,
    speed: float | None = None,
    root: Path | None = None,
) -> tuple[MovingShapes, MovingShapes]:
    """Moving animal shapes made from animal_shapes_split's "train" (8,000) and "test" (2,000).

    The two splits draw from two independent generators spawned from `seed`, so the test
    directions do not repeat the first training ones. Arguments as in moving_shapes; root as
    in animal_shapes_split.

    Returns:
        (train, test) MovingShapes.

    Example:
        >>> train, test = moving_shapes_split()
        >>> train.clips.shape                              # (8000, 1, 8, 32, 32) uint8
    """
    train_seed, test_seed = (
        int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(2)
    )
    made = []
    for split, split_seed in (("train", train_seed), ("test", test_seed)):
        images, labels = animal_shapes_split(split, root)
        made.append(
            moving_shapes(
                images,
                labels,
                num_frames=num_frames,
                size=size,
                directions=directions,
                speed=speed,
                seed=split_seed,
            )
        )
    return made[0], made[1]
