"""Batched augmentation on the training device, in plain torch, deterministic under a generator.

Every view of a batch is made in two steps:

1. `sample_params` draws all the random numbers of all the samples in ONE call on the
   generator's device (54 uniforms per sample, in a fixed layout, whatever the spec enables) and
   turns them into per-sample parameters: crop box, flip, jitter factors and order, grayscale,
   blur sigma, solarize. The parameters then move to the images' device. A CPU generator thus
   gives the same augmentations on any device, as `nexus_fast.masking` does for masks, and no
   step reads a value back to the host.
2. `apply_params` applies them to the whole batch at once: one `grid_sample` crops, resizes
   (bilinear, no antialias) and flips every sample; the photometric steps are masked tensor ops.

Steps, in order (the order of the BYOL and DINOv2 recipes):
- random resized crop: torchvision's RandomResizedCrop sampling, batched: ten candidate boxes per
  sample (area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`), the first that
  fits is kept, else torchvision's central fallback. The crop is then resized as
  `F.interpolate(crop, mode="bilinear", align_corners=False)` would (sampling never leaves the box).
- horizontal flip.
- colour jitter: brightness, contrast, saturation, hue with torchvision's formulas, applied in a
  random order drawn per sample (as torchvision's ColorJitter draws one per call). On one-channel
  images only brightness and contrast apply.
- grayscale: luma 0.299 R + 0.587 G + 0.114 B on all three channels (RGB only).
- Gaussian blur: separable, reflect padding, one sigma per sample.
- solarize: x -> 1 - x where x >= threshold.
- normalisation: (x - mean) / std per channel.

Inputs are uint8 (0..255) or floating point in [0, 1] (not checked: that would read the data
back to the host); outputs are float32.
"""

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .views import LUMA, CropSpec

ATTEMPTS = 10  # candidate boxes per sample, as torchvision's RandomResizedCrop tries
# Columns of the per-sample uniforms: 4 x ATTEMPTS for the crop, then one per remaining draw.
_CROP = 4 * ATTEMPTS
_FLIP, _JITTER, _FACTORS, _ORDER = _CROP, _CROP + 1, _CROP + 2, _CROP + 6
_GRAYSCALE, _BLUR, _SIGMA, _SOLARIZE = _CROP + 10, _CROP + 11, _CROP + 12, _CROP + 13
COLUMNS = _CROP + 14

# Colour-jitter operations, the column of each in AugmentParams.jitter_factors.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters of one view of a batch of N samples.

    Attributes:
        box: (N, 4) float32 crop boxes (top, left, height, width) in input pixels.
        flip: (N,) bool, flip horizontally.
        jitter: (N,) bool, apply colour jitter.
        jitter_factors: (N, 4) float32 brightness, contrast and saturation factors and the hue
            shift in turns; (1, 1, 1, 0), the identity, where `jitter` is False.
        jitter_order: (N, 4) int64, the jitter operation applied at each of the four stages.
        grayscale: (N,) bool, replace an RGB image by its luma.
        blur: (N,) bool, apply the Gaussian blur.
        blur_sigma: (N,) float32 standard deviations of the blur, in output pixels.
        solarize: (N,) bool, solarize.
    """

    box: Tensor
    flip: Tensor
    jitter: Tensor
    jitter_factors: Tensor
    jitter_order: Tensor
    grayscale: Tensor
    blur: Tensor
    blur_sigma: Tensor
    solarize: Tensor

    def to(self, device: torch.device | str) -> "AugmentParams":
        """A copy on `device`; host-to-GPU copies go through pinned memory without blocking."""
        return self._map(lambda value: _to_device(value, torch.device(device)))

    def repeat_interleave(self, repeats: int) -> "AugmentParams":
        """Each sample's parameters `repeats` times in a row (one clip's frames)."""
        return self._map(lambda value: value.repeat_interleave(repeats, dim=0))

    def _map(self, change) -> "AugmentParams":
        fields = dataclasses.fields(self)
        return AugmentParams(**{f.name: change(getattr(self, f.name)) for f in fields})


def sample_params(
    spec: CropSpec,
    count: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> AugmentParams:
    """Draws the parameters of `count` views of (height, width) images in one random call.

    Args:
        spec: the view.
        count: number of samples.
        height: input image height.
        width: input image width.
        generator: the source of randomness (default: torch's default CPU generator). The draws
            happen on its device; the same seed gives the same parameters on any device.
        device: where the parameters are returned (default: the generator's device).

    Returns:
        AugmentParams of `count` rows.
    """
    if generator is None:
        generator = torch.default_generator
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    for name, value in (("count", count), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed: an integer >= 1")
    # float64: exact box arithmetic (round() of an area's square root) on every device.
    u = torch.rand(
        (count, COLUMNS), generator=generator, device=generator.device, dtype=torch.float64
    )
    box = _crop_boxes(u[:, :_CROP], spec, height, width)

    jitter = u[:, _JITTER] < spec.jitter_p
    low = torch.tensor(
        [
            max(0.0, 1 - spec.brightness),
            max(0.0, 1 - spec.contrast),
            max(0.0, 1 - spec.saturation),
            -spec.hue,
        ],
        dtype=torch.float64,
        device=u.device,
    )
    high = torch.tensor(
        [1 + spec.brightness, 1 + spec.contrast, 1 + spec.saturation, spec.hue],
        dtype=torch.float64,
        device=u.device,
    )
    factors = low + (high - low) * u[:, _FACTORS : _FACTORS + 4]
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64, device=u.device)
    factors = torch.where(jitter[:, None], factors, identity)
    # The ranks of four uniforms: a uniformly random permutation of the four operations.
    order = u[:, _ORDER : _ORDER + 4].argsort(dim=1)

    low_sigma, high_sigma = spec.blur_sigma
    params = AugmentParams(
        box=box.float(),
        flip=u[:, _FLIP] < spec.flip_p,
        jitter=jitter,
        jitter_factors=factors.float(),
        jitter_order=order,
        grayscale=u[:, _GRAYSCALE] < spec.grayscale_p,
        blur=u[:, _BLUR] < spec.blur_p,
        blur_sigma=(low_sigma + (high_sigma - low_sigma) * u[:, _SIGMA]).float(),
        solarize=u[:, _SOLARIZE] < spec.solarize_p,
    )
    return params.to(device) if device is not None else params


def _crop_boxes(u: Tensor, spec: CropSpec, height: int, width: int) -> Tensor:
    """(N, 4) float64 boxes (top, left, height, width): torchvision's RandomResizedCrop sampling
    with its ten attempts evaluated side by side, from (N, 4 * ATTEMPTS) uniforms."""
    u_area, u_ratio, u_top, u_left = u.split(ATTEMPTS, dim=1)
    area = height * width * (spec.scale[0] + (spec.scale[1] - spec.scale[0]) * u_area)
    low, high = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    aspect = torch.exp(low + (high - low) * u_ratio)
    box_w = torch.round(torch.sqrt(area * aspect))  # round half to even, as Python's round()
    box_h = torch.round(torch.sqrt(area / aspect))
    fits = (box_w >= 1) & (box_w <= width) & (box_h >= 1) & (box_h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first attempt that fits
    box_w, box_h = box_w.gather(1, first), box_h.gather(1, first)
    top = torch.floor(u_top.gather(1, first) * (height - box_h + 1))
    left = torch.floor(u_left.gather(1, first) * (width - box_w + 1))
    chosen = torch.cat([top, left, box_h, box_w], dim=1)

    # No attempt fits: torchvision's fallback, the central crop of the nearest allowed ratio.
    image_ratio = width / height
    if image_ratio < spec.ratio[0]:
        fall_w, fall_h = width, round(width / spec.ratio[0])
    elif image_ratio > spec.ratio[1]:
        fall_w, fall_h = round(height * spec.ratio[1]), height
    else:
        fall_w, fall_h = width, height
    fallback = torch.tensor(
        [(height - fall_h) // 2, (width - fall_w) // 2, fall_h, fall_w],
        dtype=u.dtype,
        device=u.device,
    )
    return torch.where(fits.any(dim=1, keepdim=True), chosen, fallback)


# -- the steps -----------------------------------------------------------------------------------


def resized_crop(images: Tensor, box: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crops every box out of its image, resizes it to (size, size), flips where asked.

    Bilinear with half-pixel centres (`F.interpolate(..., align_corners=False)` of the crop, no
    antialias); sample coordinates are clamped to the box, so no pixel outside it is read.

    Args:
        images: (B, C, H, W) floating images.
        box: (V * B, 4) boxes (top, left, height, width), view-major: row v * B + b is view v of
            image b. V > 1 makes V crops per image in the same single grid_sample.
        flip: (V * B,) bool.
        size: output side.

    Returns:
        (V * B, C, size, size), view-major.
    """
    batch, _, height, width = images.shape
    views = box.shape[0] // batch
    centres = torch.arange(size, device=images.device, dtype=torch.float32) + 0.5
    top, left, box_h, box_w = box.unbind(dim=1)
    xs = left[:, None] + centres * (box_w / size)[:, None] - 0.5  # (V*B, size) input columns
    ys = top[:, None] + centres * (box_h / size)[:, None] - 0.5
    xs = torch.minimum(torch.maximum(xs, left[:, None]), (left + box_w - 1)[:, None])
    ys = torch.minimum(torch.maximum(ys, top[:, None]), (top + box_h - 1)[:, None])
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    # Pixel coordinates to grid_sample's [-1, 1] (align_corners=False: pixel i is at (2i+1)/W-1).
    gx = ((2 * xs + 1) / width - 1).view(views, batch, 1, size).expand(-1, -1, size, -1)
    gy = ((2 * ys + 1) / height - 1).view(views, batch, size, 1).expand(-1, -1, -1, size)
    grid = torch.stack([gx, gy], dim=-1)  # (V, B, size, size, 2)
    # The V grids of one image stacked along the height: one sampling pass over the batch.
    grid = grid.transpose(0, 1).reshape(batch, views * size, size, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.unflatten(2, (views, size))  # (B, C, V, size, size)
    return out.permute(2, 0, 1, 3, 4).flatten(0, 1)


def luma(images: Tensor) -> Tensor:
    """(N, 1, H, W) grey level 0.299 R + 0.587 G + 0.114 B of (N, 3, H, W) RGB images."""
    red, green, blue = images.unbind(dim=1)
    return (LUMA[0] * red + LUMA[1] * green + LUMA[2] * blue).unsqueeze(1)


def colour_jitter(images: Tensor, params: AugmentParams, with_hue: bool = True) -> Tensor:
    """Brightness, contrast, saturation and hue, each sample in its own order.

    torchvision's formulas, all clamped to [0, 1]: brightness f x; contrast f x + (1 - f) m with m
    the mean grey level of the image; saturation f x + (1 - f) grey(x); hue a shift in HSV. One
    channel: grey(x) = x, and saturation and hue are skipped. `with_hue=False` skips the hue
    (the costliest step) when its range is 0.
    """
    rgb = images.shape[1] == 3
    x = images
    for stage in range(4):
        op = params.jitter_order[:, stage]  # (N,)
        factor = params.jitter_factors.gather(1, op[:, None]).view(-1, 1, 1, 1)
        is_hue = (op == HUE).view(-1, 1, 1, 1)
        skip = is_hue if rgb else is_hue | (op == SATURATION).view(-1, 1, 1, 1)
        # A factor of exactly 1 makes the blend below the identity, bit for bit.
        factor = torch.where(skip, torch.ones_like(factor), factor)
        grey = luma(x) if rgb else x
        target = torch.where(
            (op == BRIGHTNESS).view(-1, 1, 1, 1),
            torch.zeros_like(grey),
            torch.where(
                (op == CONTRAST).view(-1, 1, 1, 1), grey.mean(dim=(1, 2, 3), keepdim=True), grey
            ),
        )
        blended = (factor * x + (1 - factor) * target).clamp(0, 1)
        if rgb and with_hue:
            shift = params.jitter_factors[:, HUE].view(-1, 1, 1, 1)
            hue_here = is_hue & params.jitter.view(-1, 1, 1, 1)
            blended = torch.where(hue_here, shift_hue(x, shift), blended)
        x = blended
    return x


def shift_hue(images: Tensor, shift: Tensor) -> Tensor:
    """RGB images (N, 3, H, W) with the HSV hue turned by `shift` (N, 1, 1, 1) turns.

    The hexagonal HSV hue (torchvision's and colorsys's), measured in sextants [0, 6), is turned,
    and the pixel rebuilt with value v and chroma c unchanged by the closed form
    channel n = v - c clamp(min(k, 4 - k), 0, 1), k = (n + hue) mod 6, n = 5, 3, 1 for R, G, B.
    """
    red, green, blue = images.unbind(dim=1)
    value = images.amax(dim=1)
    chroma = value - images.amin(dim=1)
    divisor = torch.where(chroma > 0, chroma, torch.ones_like(chroma))  # grey: any hue will do
    red_max = value == red
    green_max = (value == green) & ~red_max
    sextant = torch.where(
        red_max,
        (green - blue) / divisor,
        torch.where(green_max, 2.0 + (blue - red) / divisor, 4.0 + (red - green) / divisor),
    )
    hue = torch.remainder(sextant + 6.0 * shift.squeeze(1), 6.0)
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = torch.remainder(offset + hue, 6.0)
        channels.append(value - chroma * torch.minimum(k, 4.0 - k).clamp(0, 1))
    return torch.stack(channels, dim=1)


def gaussian_blur(images: Tensor, sigma: Tensor, apply: Tensor, radius: int) -> Tensor:
    """Separable Gaussian blur with one sigma per sample, reflect padding.

    Args:
        images: (N, C, H, W).
        sigma: (N,) standard deviations in pixels.
        apply: (N,) bool; the other samples come back unchanged.
        radius: taps on each side of the centre (cut to the image size - 1, the most that
            reflect padding allows).

    Returns:
        (N, C, H, W).
    """
    height, width = images.shape[-2:]
    radius = min(radius, height - 1, width - 1)
    if radius < 1:
        return images
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float32)
    weights = torch.exp(-(taps**2) / (2 * sigma[:, None] ** 2))
    weights = (weights / weights.sum(dim=1, keepdim=True)).view(-1, 1, 1, 1, 2 * radius + 1)
    # Shifted sums rather than a grouped convolution: the same arithmetic on every device
    # (cuDNN may run convolutions in TF32), and the kernel is at most a few dozen taps.
    padded = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    rows = sum(weights[..., k] * padded[..., k : k + width] for k in range(2 * radius + 1))
    padded = F.pad(rows, (0, 0, radius, radius), mode="reflect")
    blurred = sum(weights[..., k] * padded[..., k : k + height, :] for k in range(2 * radius + 1))
    return torch.where(apply.view(-1, 1, 1, 1), blurred, images)


def solarize(images: Tensor, apply: Tensor, threshold: float = 0.5) -> Tensor:
    """x -> 1 - x for the pixels >= threshold of the samples where `apply` (N,) is True."""
    flip = apply.view(-1, 1, 1, 1) & (images >= threshold)
    return torch.where(flip, 1 - images, images)


def normalize(images: Tensor, spec: CropSpec) -> Tensor:
    """(x - mean) / std per channel, with the spec's statistics for this many channels."""
    mean, std = spec.stats(images.shape[1])
    mean_t = _to_device(torch.tensor(mean, dtype=images.dtype), images.device)
    std_t = _to_device(torch.tensor(std, dtype=images.dtype), images.device)
    return (images - mean_t.view(1, -1, 1, 1)) / std_t.view(1, -1, 1, 1)


def apply_params(images: Tensor, spec: CropSpec, params: AugmentParams) -> Tensor:
    """The view `spec` of each image with the given per-sample parameters.

    Args:
        images: (B, C, H, W) uint8, or floating point in [0, 1].
        spec: the view.
        params: V * B rows on the images' device (from `sample_params`); V > 1 gives V views of
            each image, view-major.

    Returns:
        (V * B, C, spec.size, spec.size) float32, normalised.
    """
    x = resized_crop(_unit_float(images), params.box, params.flip, spec.size)
    return _photometric(x, spec, params)


def _photometric(x: Tensor, spec: CropSpec, params: AugmentParams) -> Tensor:
    """Every step after the crop, on (N, C, S, S) floats in [0, 1] with N rows of params."""
    channels = x.shape[1]
    if (spec.jitter_p > 0 or spec.grayscale_p > 0) and channels not in (1, 3):
        raise ValueError(
            f"colour jitter and grayscale need 1 or 3 channels, the images have {channels}: "
            "set jitter_p and grayscale_p to 0"
        )
    if spec.jitter_p > 0:
        x = colour_jitter(x, params, with_hue=spec.hue > 0)
    if spec.grayscale_p > 0 and channels == 3:
        x = torch.where(params.grayscale.view(-1, 1, 1, 1), luma(x).expand_as(x), x)
    if spec.blur_p > 0:
        x = gaussian_blur(x, params.blur_sigma, params.blur, spec.blur_radius)
    if spec.solarize_p > 0:
        x = solarize(x, params.solarize, spec.solarize_threshold)
    return normalize(x, spec)


# -- entry points --------------------------------------------------------------------------------


def augment(images: Tensor, spec: CropSpec, generator: torch.Generator | None = None) -> Tensor:
    """One random view of each image.

    Args:
        images: (B, C, H, W) uint8, or floating point in [0, 1], on the training device.
        spec: the view (see `nexus_fast.data.views.method_views` for the methods' recipes).
        generator: the source of randomness (default: torch's default CPU generator); a CPU
            generator gives the same views on every device.

    Returns:
        (B, C, spec.size, spec.size) float32, normalised, on the images' device.

    Example:
        >>> images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
        >>> augment(images, CropSpec(size=16), torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 16, 16])
    """
    return _views(images, spec, 1, generator)


def two_views(
    images: Tensor, specs: Sequence[CropSpec], generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Two views of each image (Barlow Twins, VICReg): `specs[0]` then `specs[1]`.

    Args:
        images: (B, C, H, W) uint8, or floating point in [0, 1].
        specs: the two views' specs (asymmetric in the BYOL recipe: blur and solarize differ).
        generator: the source of randomness (default: torch's default CPU generator).

    Returns:
        (view1, view2), each (B, C, size, size) float32.
    """
    first, second = _pair("specs", specs)
    return augment(images, first, generator), augment(images, second, generator)


def multi_crop(
    images: Tensor,
    global_spec: CropSpec | Sequence[CropSpec],
    local_spec: CropSpec,
    n_local: int,
    generator: torch.Generator | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Two global and `n_local` local crops of each image (DINOv2's multi-crop).

    Args:
        images: (B, C, H, W) uint8, or floating point in [0, 1].
        global_spec: one spec for both global crops, or a pair (DINOv2's differ: blur p 1.0 for
            the first, blur p 0.1 and solarize p 0.2 for the second).
        local_spec: the spec of the local crops (all made in one batched pass).
        n_local: number of local crops, >= 0.
        generator: the source of randomness (default: torch's default CPU generator).

    Returns:
        (globals, locals): a list of 2 tensors (B, C, global size, global size) and a list of
        `n_local` tensors (B, C, local size, local size), float32.
    """
    if isinstance(n_local, bool) or not isinstance(n_local, int) or n_local < 0:
        raise ValueError(f"n_local={n_local!r} is not allowed: an integer >= 0")
    batch = images.shape[0] if images.dim() == 4 else 0
    if isinstance(global_spec, CropSpec):
        global_views = list(_views(images, global_spec, 2, generator).split(batch))
    else:
        first, second = _pair("global_spec", global_spec)
        global_views = [augment(images, first, generator), augment(images, second, generator)]
    if n_local == 0:
        return global_views, []
    return global_views, list(_views(images, local_spec, n_local, generator).split(batch))


def augment_clip(video: Tensor, spec: CropSpec, generator: torch.Generator | None = None) -> Tensor:
    """One random view of each clip: the same crop, flip and colour changes for all its frames,
    different ones for different clips (V-JEPA's video augmentation).

    Args:
        video: (B, C, T, H, W) uint8, or floating point in [0, 1].
        spec: the view.
        generator: the source of randomness (default: torch's default CPU generator).

    Returns:
        (B, C, T, spec.size, spec.size) float32, normalised.
    """
    if video.dim() != 5:
        raise ValueError(f"video must be (B, C, T, H, W), got shape {tuple(video.shape)}")
    batch, channels, frames = video.shape[:3]
    params = _params_for(video.flatten(1, 2), spec, 1, generator)
    # Frames ride along as channels through the crop: one box per clip.
    x = resized_crop(_unit_float(video.flatten(1, 2)), params.box, params.flip, spec.size)
    x = x.view(batch, channels, frames, spec.size, spec.size).transpose(1, 2)
    x = _photometric(x.flatten(0, 1), spec, params.repeat_interleave(frames))
    return x.view(batch, frames, channels, spec.size, spec.size).transpose(1, 2)


def _views(images: Tensor, spec: CropSpec, views: int, generator: torch.Generator | None) -> Tensor:
    """`views` views of each image, (views * B, C, size, size), view-major."""
    params = _params_for(images, spec, views, generator)
    return apply_params(images, spec, params)


def _params_for(
    images: Tensor, spec: CropSpec, views: int, generator: torch.Generator | None
) -> AugmentParams:
    _check_images(images)
    if not isinstance(spec, CropSpec):
        raise TypeError(f"spec must be a CropSpec, got {type(spec).__name__}")
    batch, _, height, width = images.shape
    return sample_params(spec, views * batch, height, width, generator, images.device)


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image, got a batch of 0")


def _unit_float(images: Tensor) -> Tensor:
    """float32 in [0, 1]: uint8 divided by 255, floats as they are."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


def _pair(name: str, specs: Sequence[CropSpec]) -> tuple[CropSpec, CropSpec]:
    if (
        isinstance(specs, CropSpec)
        or len(specs) != 2
        or not all(isinstance(s, CropSpec) for s in specs)
    ):
        raise ValueError(f"{name} must be a pair of CropSpec, got {specs!r}")
    return specs[0], specs[1]


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` on `device`; a host-to-GPU copy goes through pinned memory without blocking."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
