"""What a training view is (`CropSpec`) and the views each method trains on (`method_views`).

A `CropSpec` describes one random view: a random resized crop, then photometric changes, then
normalisation. `nexus_fast.data.augment` applies it to a batch on the training device.

Presets follow the official recipes (the file of each is named so it can be checked):

- MAE (facebookresearch/mae, main_pretrain.py): crop scale (0.2, 1), flip; nothing else.
- data2vec 2.0 (fairseq, examples/data2vec/data/mae_image_dataset.py): the same as MAE.
- I-JEPA (facebookresearch/ijepa, src/transforms.py with the released configs): crop scale
  (0.3, 1) only: no flip, no colour, no blur.
- V-JEPA 2 (facebookresearch/vjepa2, app/vjepa/train.py and configs/train/*): crop scale (0.3, 1),
  aspect ratio (0.75, 1.35), flip; one crop for every frame of a clip; 256 px.
- Barlow Twins (facebookresearch/barlowtwins, main.py) and VICReg (facebookresearch/vicreg,
  augmentations.py), the BYOL recipe: crop scale (0.08, 1), flip 0.5, colour jitter
  (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2, blur sigma (0.1, 2); view 1 blur p 1.0 and no
  solarize, view 2 blur p 0.1 and solarize p 0.2.
- DINOv2 (facebookresearch/dinov2, dinov2/data/augmentations.py): two global crops scale
  (0.32, 1) at 224 px and eight local crops scale (0.05, 0.32) at 96 px (98 for patch 14), all
  with flip, jitter and grayscale as above; global 1 blur p 1.0, global 2 blur p 0.1 and
  solarize p 0.2, locals blur p 0.5.

Differences from the official code, on purpose: crops are resized bilinearly (the recipes use
bicubic through PIL) so that a whole batch is one `grid_sample`; the blur is a true Gaussian cut
at 3 sigma unless `blur_kernel_size` is set (DINOv2 uses 9 taps, PIL an approximation).

Small images: `method_views(method, size)` scales a recipe to `size` px. The crop scales and
probabilities are fractions and stay as they are; pixel lengths (the local crop size and the blur
sigma) shrink by size / official size, so a 28 px animal-shapes view is blurred as much, relative
to the image, as a 224 px ImageNet view.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from ..config import require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)
# A greyscale image made from an RGB image with the LUMA weights has (about) these statistics.
IMAGENET_GREY_MEAN = (sum(w * m for w, m in zip(LUMA, IMAGENET_MEAN)),)
IMAGENET_GREY_STD = (sum(w * s for w, s in zip(LUMA, IMAGENET_STD)),)

Stats = tuple[float] | tuple[float, float, float]
Method = Literal["mae", "data2vec2", "ijepa", "vjepa2", "barlow_twins", "vicreg", "dinov2"]
METHODS: tuple[str, ...] = (
    "mae",
    "data2vec2",
    "ijepa",
    "vjepa2",
    "barlow_twins",
    "vicreg",
    "dinov2",
)


@dataclass(frozen=True)
class CropSpec:
    """One random view: crop and resize, flip, colour jitter, grayscale, blur, solarize, normalise.

    The steps run in that order (the order of the BYOL and DINOv2 recipes), each on a random
    subset of the batch chosen by its probability.

    Attributes:
        size: output side in pixels (views are square).
        scale: range of the crop's area as a fraction of the image area (RandomResizedCrop).
        ratio: range of the crop's aspect ratio width / height, drawn log-uniformly.
        flip_p: probability of a horizontal flip.
        jitter_p: probability of colour jitter; its four factors are drawn per sample and applied
            in a random order per sample, as torchvision's ColorJitter does.
        brightness: brightness factor drawn from [max(0, 1 - b), 1 + b].
        contrast: contrast factor drawn from [max(0, 1 - c), 1 + c].
        saturation: saturation factor drawn from [max(0, 1 - s), 1 + s] (RGB only).
        hue: hue shift drawn from [-h, h], in turns, h <= 0.5 (RGB only).
        grayscale_p: probability of replacing an RGB image by its luma (RGB only).
        blur_p: probability of a Gaussian blur.
        blur_sigma: range of the blur's standard deviation, in output pixels.
        blur_kernel_size: odd number of taps; None cuts the Gaussian at 3 * the largest sigma.
        solarize_p: probability of inverting the pixels at or above `solarize_threshold`.
        solarize_threshold: on [0, 1] images (0.5 is the 128 of the uint8 recipes).
        mean: per-channel mean for normalisation, one value (any channel count) or three; None
            gives ImageNet's for RGB and its luma-weighted value for one channel.
        std: per-channel standard deviation, as `mean`.
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int | None = None
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    mean: Stats | None = None
    std: Stats | None = None

    def __post_init__(self) -> None:
        # Lists (from JSON or a dict config) become tuples, so that specs stay hashable.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the first field whose value is impossible."""
        require(_is_int(self.size) and self.size >= 1, "size", self.size, "an integer >= 1")
        require(
            _is_pair(self.scale) and 0 < self.scale[0] <= self.scale[1] <= 1,
            "scale",
            self.scale,
            "a pair (low, high) with 0 < low <= high <= 1",
        )
        require(
            _is_pair(self.ratio) and 0 < self.ratio[0] <= self.ratio[1],
            "ratio",
            self.ratio,
            "a pair (low, high) with 0 < low <= high",
        )
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            value = getattr(self, name)
            require(_is_number(value) and 0 <= value <= 1, name, value, "a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            require(_is_number(value) and value >= 0, name, value, "a number >= 0")
        require(_is_number(self.hue) and 0 <= self.hue <= 0.5, "hue", self.hue, "in [0, 0.5]")
        require(
            _is_pair(self.blur_sigma) and 0 < self.blur_sigma[0] <= self.blur_sigma[1],
            "blur_sigma",
            self.blur_sigma,
            "a pair (low, high) with 0 < low <= high",
        )
        kernel = self.blur_kernel_size
        require(
            kernel is None or (_is_int(kernel) and kernel >= 1 and kernel % 2 == 1),
            "blur_kernel_size",
            kernel,
            "None or an odd integer >= 1",
        )
        require(
            _is_number(self.solarize_threshold) and 0 <= self.solarize_threshold <= 1,
            "solarize_threshold",
            self.solarize_threshold,
            "a number in [0, 1]",
        )
        for name in ("mean", "std"):
            value = getattr(self, name)
            require(
                value is None
                or (
                    isinstance(value, tuple)
                    and len(value) in (1, 3)
                    and all(_is_number(v) for v in value)
                ),
                name,
                value,
                "None, or a tuple of 1 or 3 numbers",
            )
        require(self.std is None or all(v > 0 for v in self.std), "std", self.std, "values > 0")
        require(
            (self.mean is None) == (self.std is None),
            "std",
            self.std,
            f"given together with mean (mean={self.mean!r})",
        )

    @property
    def blur_radius(self) -> int:
        """Taps on each side of the centre of the blur kernel."""
        if self.blur_kernel_size is not None:
            return self.blur_kernel_size // 2
        return math.ceil(3 * self.blur_sigma[1])

    def stats(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) for images of `channels` channels, one value per channel.

        Raises:
            ValueError: three values (of mean or std) given for images that do not have three
                channels.
        """
        if self.mean is None or self.std is None:
            if channels == 3:
                return IMAGENET_MEAN, IMAGENET_STD
            return IMAGENET_GREY_MEAN * channels, IMAGENET_GREY_STD * channels
        # Each of mean and std broadcasts on its own: mean=(0.5,) with three stds is allowed.
        mean = self.mean * channels if len(self.mean) == 1 else self.mean
        std = self.std * channels if len(self.std) == 1 else self.std
        allowed = f"one value or one per channel (the images have {channels})"
        require(len(mean) == channels, "mean", self.mean, allowed)
        require(len(std) == channels, "std", self.std, allowed)
        return mean, std


@dataclass(frozen=True)
class MethodViews:
    """The views one method trains on.

    Attributes:
        views: one spec (MAE, data2vec 2.0, the JEPAs: one view per image) or two (Barlow Twins
            and VICReg: the two views; DINOv2: the two global crops).
        local: the spec of DINOv2's local crops, else None.
        n_local: how many local crops per image (0 without them).
    """

    views: tuple[CropSpec, ...]
    local: CropSpec | None = None
    n_local: int = 0


def method_views(
    method: str,
    size: int | None = None,
    *,
    local_size: int | None = None,
    n_local: int = 8,
    patch_size: int | None = None,
) -> MethodViews:
    """The official augmentation recipe of `method`, scaled to `size` px.

    Args:
        method: one of METHODS.
        size: output side of the (global) views; None gives the official one (224, 256 for
            V-JEPA 2). Pixel lengths of the recipe (blur sigma, local crop size) scale by
            size / official size.
        local_size: DINOv2's local crop side; None gives 96 px scaled like the rest (12 px at
            size 28), rounded to a multiple of `patch_size` when one is given (98 at 224 with
            patch 14, as DINOv2 does).
        n_local: DINOv2's number of local crops (official: 8).
        patch_size: the ViT patch size, used only to round the default local size.

    Returns:
        MethodViews.

    Raises:
        ValueError: an unknown method or an impossible size.

    Example:
        >>> recipe = method_views("dinov2", 28, patch_size=4)
        >>> recipe.views[0].size, recipe.local.size, recipe.n_local
        (28, 12, 8)
    """
    require(method in METHODS, "method", method, "one of " + ", ".join(METHODS))
    official = 256 if method == "vjepa2" else 224
    size = official if size is None else size
    require(_is_int(size) and size >= 1, "size", size, "an integer >= 1")
    shrink = size / official
    sigma = (0.1 * shrink, 2.0 * shrink)
    if method in ("mae", "data2vec2"):
        return MethodViews((CropSpec(size=size, scale=(0.2, 1.0)),))
    if method == "ijepa":
        return MethodViews((CropSpec(size=size, scale=(0.3, 1.0), flip_p=0.0),))
    if method == "vjepa2":
        return MethodViews((CropSpec(size=size, scale=(0.3, 1.0), ratio=(0.75, 1.35)),))
    colour = dict(jitter_p=0.8, grayscale_p=0.2, blur_sigma=sigma)
    if method in ("barlow_twins", "vicreg"):
        first = CropSpec(size=size, blur_p=1.0, **colour)
        second = CropSpec(size=size, blur_p=0.1, solarize_p=0.2, **colour)
        return MethodViews((first, second))
    require(_is_int(n_local) and n_local >= 0, "n_local", n_local, "an integer >= 0")
    if local_size is None:
        local_size = max(1, round(96 * shrink))
        if patch_size is not None:
            require(_is_int(patch_size) and patch_size >= 1, "patch_size", patch_size, ">= 1")
            local_size = max(patch_size, round(local_size / patch_size) * patch_size)
    require(_is_int(local_size) and local_size >= 1, "local_size", local_size, "an integer >= 1")
    first = CropSpec(size=size, scale=(0.32, 1.0), blur_p=1.0, **colour)
    second = CropSpec(size=size, scale=(0.32, 1.0), blur_p=0.1, solarize_p=0.2, **colour)
    local = CropSpec(size=local_size, scale=(0.05, 0.32), blur_p=0.5, **colour)
    return MethodViews((first, second), local, n_local)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_pair(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and all(map(_is_number, value))
