"""Batched augmentation (nexus_fast.data.augment) and the methods' view recipes (data.views).

References are written out here: F.interpolate of the cropped slice for the crop, torchvision's
RandomResizedCrop loop for the boxes, torchvision's colour formulas per sample, colorsys for the
hue, a 2D convolution with reflect padding for the blur.
"""

import colorsys
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from nexus_fast.data import augment as A
from nexus_fast.data.views import (
    IMAGENET_GREY_MEAN,
    IMAGENET_GREY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropSpec,
    method_views,
)

BYOL = CropSpec(size=12, jitter_p=0.8, grayscale_p=0.2, blur_p=0.5, solarize_p=0.2)
# No photometric step and an identity normalisation: apply_params is the crop alone.
PLAIN = dict(flip_p=0.0, mean=(0.0,), std=(1.0,))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32):
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=seeded(seed), dtype=torch.uint8)
    return torch.rand(shape, generator=seeded(seed), dtype=dtype)


def make_params(
    box: list[list[float]],
    *,
    flip: list[bool] | None = None,
    factors: list[list[float]] | None = None,
    order: list[list[int]] | None = None,
    grayscale: list[bool] | None = None,
    blur: list[bool] | None = None,
    sigma: list[float] | None = None,
    solarize: list[bool] | None = None,
) -> A.AugmentParams:
    """Hand-made parameters; everything not given is the identity."""
    n = len(box)
    return A.AugmentParams(
        box=torch.tensor(box, dtype=torch.float32),
        flip=torch.tensor(flip or [False] * n),
        jitter=torch.tensor([factors is not None] * n),
        jitter_factors=torch.tensor(factors or [[1.0, 1.0, 1.0, 0.0]] * n),
        jitter_order=torch.tensor(order or [[0, 1, 2, 3]] * n),
        grayscale=torch.tensor(grayscale or [False] * n),
        blur=torch.tensor(blur or [False] * n),
        blur_sigma=torch.tensor(sigma or [1.0] * n),
        solarize=torch.tensor(solarize or [False] * n),
    )


def grey(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[0:1] + 0.587 * x[1:2] + 0.114 * x[2:3]


# -- determinism, dtypes, shapes -----------------------------------------------------------------


def test_same_seed_gives_identical_views_and_other_seeds_differ():
    x = images((4, 3, 16, 16), dtype=torch.uint8)
    first = A.augment(x, BYOL, seeded(3))
    assert torch.equal(first, A.augment(x, BYOL, seeded(3)))
    assert not torch.allclose(first, A.augment(x, BYOL, seeded(4)))
    # A generator advances: the next call on it is another view.
    generator = seeded(3)
    A.augment(x, BYOL, generator)
    assert not torch.allclose(first, A.augment(x, BYOL, generator))


@pytest.mark.parametrize("channels", [1, 3])
def test_uint8_and_float_inputs_give_the_same_float32_views(channels):
    x = images((3, channels, 10, 14), dtype=torch.uint8)
    spec = dataclasses.replace(BYOL, size=8)
    from_uint8 = A.augment(x, spec, seeded(1))
    from_float = A.augment(x.double() / 255, spec, seeded(1))
    assert from_uint8.shape == (3, channels, 8, 8)
    assert from_uint8.dtype == torch.float32 and from_float.dtype == torch.float32
    torch.testing.assert_close(from_uint8, from_float, atol=1e-5, rtol=0)


def test_augment_is_apply_params_of_sample_params():
    x = images((5, 3, 16, 12))
    params = A.sample_params(BYOL, 5, 16, 12, seeded(2))
    torch.testing.assert_close(A.apply_params(x, BYOL, params), A.augment(x, BYOL, seeded(2)))


def test_draws_do_not_depend_on_the_enabled_steps():
    """The layout of the uniforms is fixed, so turning a step on changes no other parameter."""
    plain, rich = CropSpec(size=8), dataclasses.replace(BYOL, size=8)
    first, second = seeded(5), seeded(5)
    a, b = A.sample_params(plain, 50, 20, 30, first), A.sample_params(rich, 50, 20, 30, second)
    assert torch.equal(a.box, b.box) and torch.equal(a.flip, b.flip)
    assert torch.equal(torch.rand(3, generator=first), torch.rand(3, generator=second))


@pytest.mark.gpu
def test_cpu_generator_gives_the_same_views_on_cuda():
    x = images((4, 3, 16, 16), dtype=torch.uint8)
    on_cpu = A.augment(x, BYOL, seeded(7))
    on_cuda = A.augment(x.cuda(), BYOL, seeded(7))
    assert on_cuda.device.type == "cuda"
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, atol=1e-4, rtol=0)


# -- crop, resize, flip ----------------------------------------------------------------------------


def test_full_box_is_interpolate_and_the_image_itself_at_its_own_size():
    x = images((2, 3, 13, 17))
    spec = CropSpec(size=9, **PLAIN)
    out = A.apply_params(x, spec, make_params([[0, 0, 13, 17]] * 2))
    expected = F.interpolate(x, size=(9, 9), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)

    square = images((2, 3, 11, 11), seed=1)
    same = A.apply_params(square, CropSpec(size=11, **PLAIN), make_params([[0, 0, 11, 11]] * 2))
    torch.testing.assert_close(same, square, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "box",
    [(2, 3, 9, 11), (5, 1, 12, 20), (0, 7, 4, 3), (16, 22, 1, 1)],
    ids=["down", "wide", "up", "one-pixel"],
)
def test_box_is_interpolate_of_the_slice(box):
    x = images((1, 2, 17, 23))
    top, left, height, width = box
    out = A.apply_params(x, CropSpec(size=7, **PLAIN), make_params([list(box)]))
    crop = x[:, :, top : top + height, left : left + width]
    expected = F.interpolate(crop, size=(7, 7), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_flip_is_torch_flip_of_the_crop():
    x = images((2, 3, 15, 15))
    spec = CropSpec(size=6, **PLAIN)
    box = [[1, 2, 10, 12], [0, 0, 15, 15]]
    plain = A.apply_params(x, spec, make_params(box))
    flipped = A.apply_params(x, spec, make_params(box, flip=[True, False]))
    torch.testing.assert_close(flipped[0], plain[0].flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(flipped[1], plain[1], atol=0, rtol=0)


def test_several_views_in_one_pass_equal_the_views_made_one_by_one():
    x = images((3, 2, 12, 10))
    spec = CropSpec(size=5, **PLAIN)
    boxes = [[0, 0, 12, 10], [1, 2, 5, 6], [3, 0, 9, 9], [4, 4, 8, 6], [0, 1, 2, 3], [2, 2, 7, 7]]
    flips = [False, True, False, True, True, False]
    both = A.apply_params(x, spec, make_params(boxes, flip=flips))  # view-major rows
    first = A.apply_params(x, spec, make_params(boxes[:3], flip=flips[:3]))
    second = A.apply_params(x, spec, make_params(boxes[3:], flip=flips[3:]))
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-6, rtol=0)


def torchvision_boxes(u: torch.Tensor, spec: CropSpec, height: int, width: int) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params, fed with the given uniforms."""
    boxes = []
    for row in u.tolist():
        areas, ratios, tops, lefts = (row[k * A.ATTEMPTS : (k + 1) * A.ATTEMPTS] for k in range(4))
        for k in range(A.ATTEMPTS):
            target = height * width * (spec.scale[0] + (spec.scale[1] - spec.scale[0]) * areas[k])
            low, high = math.log(spec.ratio[0]), math.log(spec.ratio[1])
            aspect = math.exp(low + (high - low) * ratios[k])
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top, left = (
                    math.floor(tops[k] * (height - h + 1)),
                    math.floor(lefts[k] * (width - w + 1)),
                )
                boxes.append([top, left, h, w])
                break
        else:
            if width / height < min(spec.ratio):
                w, h = width, round(width / min(spec.ratio))
            elif width / height > max(spec.ratio):
                w, h = round(height * max(spec.ratio)), height
            else:
                w, h = width, height
            boxes.append([(height - h) // 2, (width - w) // 2, h, w])
    return torch.tensor(boxes, dtype=torch.float32)


@pytest.mark.parametrize(
    "spec,height,width",
    [
        (CropSpec(size=8), 31, 17),
        (CropSpec(size=8, scale=(0.05, 1.0), ratio=(0.2, 5.0)), 10, 12),
        (CropSpec(size=8, scale=(0.9, 1.0), ratio=(1.0, 1.0)), 4, 40),  # always the fallback
    ],
)
def test_boxes_follow_torchvision_random_resized_crop(spec, height, width):
    params = A.sample_params(spec, 300, height, width, seeded(1))
    uniforms = torch.rand((300, A.COLUMNS), generator=seeded(1), dtype=torch.float64)
    expected = torchvision_boxes(uniforms[:, : 4 * A.ATTEMPTS], spec, height, width)
    assert torch.equal(params.box, expected)


@pytest.mark.parametrize(
    "height,width,ratio,expected",
    [(4, 40, (1.0, 1.0), [0, 18, 4, 4]), (40, 4, (2.0, 3.0), [19, 0, 2, 4])],
)
def test_fallback_is_the_central_crop_of_the_nearest_ratio(height, width, ratio, expected):
    spec = CropSpec(size=4, scale=(0.9, 1.0), ratio=ratio)
    box = A.sample_params(spec, 20, height, width, seeded(0)).box
    assert torch.equal(box, torch.tensor([expected] * 20, dtype=torch.float32))


def test_boxes_stay_inside_the_image_with_areas_in_scale():
    spec = CropSpec(size=8, scale=(0.2, 0.6))
    height, width = 60, 80
    top, left, h, w = A.sample_params(spec, 2000, height, width, seeded(0)).box.unbind(1)
    assert torch.equal(torch.stack([top, left, h, w]).round(), torch.stack([top, left, h, w]))
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    # None falls back here; rounding each side to a pixel moves the area by at most ~half a row.
    area = h * w / (height * width)
    slack = (h + w) / 2 / (height * width) + 0.25 / (height * width)
    assert (area >= 0.2 - slack).all() and (area <= 0.6 + slack).all()
    assert area.min() < 0.22 and area.max() > 0.58  # the whole range is used
    aspect = w / h
    assert aspect.min() > 0.7 and aspect.max() < 1.4


def test_probabilities_and_factor_ranges():
    spec = CropSpec(
        size=8, flip_p=0.5, jitter_p=0.8, grayscale_p=0.2, blur_p=0.1, solarize_p=0.3, hue=0.1
    )
    params = A.sample_params(spec, 4000, 16, 16, seeded(0))
    for name, p in [
        ("flip", 0.5),
        ("jitter", 0.8),
        ("grayscale", 0.2),
        ("blur", 0.1),
        ("solarize", 0.3),
    ]:
        assert abs(getattr(params, name).float().mean().item() - p) < 0.03, name
    factors = params.jitter_factors[params.jitter]
    low = torch.tensor([0.6, 0.6, 0.8, -0.1])
    high = torch.tensor([1.4, 1.4, 1.2, 0.1])
    assert ((factors >= low) & (factors <= high)).all()
    identity = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert torch.equal(
        params.jitter_factors[~params.jitter], identity.expand(int((~params.jitter).sum()), 4)
    )
    # Each row is a permutation of the four operations, and all 24 orders turn up about equally.
    assert torch.equal(params.jitter_order.sort(dim=1).values, torch.arange(4).expand(4000, 4))
    _, counts = params.jitter_order.unique(dim=0, return_counts=True)
    assert len(counts) == 24 and counts.min() > 4000 / 24 * 0.7
    assert ((params.blur_sigma >= 0.1) & (params.blur_sigma <= 2.0)).all()


# -- photometric steps ---------------------------------------------------------------------------


def reference_jitter(x: torch.Tensor, factors: list[float], order: list[int]) -> torch.Tensor:
    """torchvision's ColorJitter on one RGB image, hue left out (factor 0 everywhere here)."""
    for op in order:
        f = factors[op]
        if op == A.BRIGHTNESS:
            x = (f * x).clamp(0, 1)
        elif op == A.CONTRAST:
            x = (f * x + (1 - f) * grey(x).mean()).clamp(0, 1)
        elif op == A.SATURATION:
            x = (f * x + (1 - f) * grey(x)).clamp(0, 1)
    return x


def test_brightness_contrast_saturation_follow_torchvision_per_sample():
    x = images((5, 3, 6, 7))
    factors = [
        [1.7, 1.0, 1.0, 0.0],  # brightness alone, clamped above
        [1.0, 0.3, 1.0, 0.0],  # contrast alone
        [1.0, 1.0, 1.8, 0.0],  # saturation alone
        [0.7, 1.4, 0.5, 0.0],  # all three
        [0.7, 1.4, 0.5, 0.0],  # all three, another order
    ]
    order = [[0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0], [0, 1, 2, 3], [2, 1, 3, 0]]
    params = make_params([[0, 0, 6, 7]] * 5, factors=factors, order=order)
    out = A.colour_jitter(x, params, with_hue=True)
    for n in range(5):
        expected = reference_jitter(x[n], factors[n], order[n])
        torch.testing.assert_close(out[n], expected, atol=1e-6, rtol=0, msg=f"sample {n}")
    # The order matters, so the two last samples differ although their factors are equal.
    assert not torch.allclose(reference_jitter(x[3], factors[3], order[3]), out[4])


def test_hue_is_a_shift_in_hsv():
    x = images((3, 3, 4, 5))
    shifts = [0.1, -0.3, 0.5]
    factors = [[1.0, 1.0, 1.0, s] for s in shifts]
    params = make_params([[0, 0, 4, 5]] * 3, factors=factors, order=[[3, 0, 1, 2]] * 3)
    out = A.colour_jitter(x, params, with_hue=True)
    expected = torch.empty_like(x)
    for n, shift in enumerate(shifts):
        for i in range(4):
            for j in range(5):
                h, s, v = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
                expected[n, :, i, j] = torch.tensor(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_jitter_on_one_channel_skips_saturation_and_hue_and_contrasts_with_the_image_mean():
    x = images((2, 1, 5, 5))
    factors = [[1.0, 1.0, 0.2, 0.4], [1.0, 0.5, 1.0, 0.0]]
    params = make_params([[0, 0, 5, 5]] * 2, factors=factors)
    out = A.colour_jitter(x, params, with_hue=True)
    torch.testing.assert_close(out[0], x[0], atol=0, rtol=0)
    torch.testing.assert_close(out[1], (0.5 * x[1] + 0.5 * x[1].mean()).clamp(0, 1))


def test_grayscale_is_luma_on_three_channels():
    x = images((2, 3, 8, 8))
    spec = CropSpec(size=8, grayscale_p=0.5, **PLAIN)
    out = A.apply_params(x, spec, make_params([[0, 0, 8, 8]] * 2, grayscale=[True, False]))
    torch.testing.assert_close(out[0], grey(x[0]).expand(3, -1, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-5, rtol=0)


def test_blur_is_a_reflect_padded_gaussian_that_keeps_constants():
    x = images((3, 2, 9, 11))
    sigma = torch.tensor([0.5, 1.5, 1.5])
    out = A.gaussian_blur(x, sigma, torch.tensor([True, True, False]), radius=3)
    taps = torch.arange(-3, 4, dtype=torch.float32)
    for n in range(2):
        line = torch.exp(-(taps**2) / (2 * sigma[n] ** 2))
        line = line / line.sum()
        kernel = (line[:, None] * line[None, :]).expand(2, 1, 7, 7)
        padded = F.pad(x[n : n + 1], (3, 3, 3, 3), mode="reflect")
        expected = F.conv2d(padded, kernel, groups=2)[0]
        torch.testing.assert_close(out[n], expected, atol=1e-6, rtol=0)
        assert out[n].var() < x[n].var()
    assert torch.equal(out[2], x[2])

    constant = torch.full((2, 3, 6, 6), 0.37)
    blurred = A.gaussian_blur(constant, torch.tensor([0.8, 2.0]), torch.tensor([True, True]), 9)
    torch.testing.assert_close(blurred, constant, atol=1e-6, rtol=0)


def test_solarize_inverts_only_pixels_at_or_above_the_threshold():
    x = torch.tensor([0.0, 0.2, 0.39, 0.4, 0.7, 1.0]).view(1, 1, 1, 6).repeat(2, 1, 1, 1)
    out = A.solarize(x, torch.tensor([True, False]), threshold=0.4)
    expected = torch.tensor([0.0, 0.2, 0.39, 0.6, 0.3, 0.0]).view(1, 1, 6)
    torch.testing.assert_close(out[0], expected, atol=1e-7, rtol=0)
    assert torch.equal(out[1], x[1])


@pytest.mark.parametrize(
    "spec,channels,mean,std",
    [
        (CropSpec(), 3, IMAGENET_MEAN, IMAGENET_STD),
        (CropSpec(), 1, IMAGENET_GREY_MEAN, IMAGENET_GREY_STD),
        (CropSpec(mean=(0.5,), std=(0.25,)), 3, (0.5,) * 3, (0.25,) * 3),
        (CropSpec(mean=(0.5,), std=(0.1, 0.2, 0.4)), 3, (0.5,) * 3, (0.1, 0.2, 0.4)),
    ],
)
def test_normalisation_statistics(spec, channels, mean, std):
    x = images((2, channels, 3, 3))
    expected = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(A.normalize(x, spec), expected)
    assert IMAGENET_GREY_MEAN[0] == pytest.approx(0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406)


def test_three_statistics_for_one_channel_are_refused():
    with pytest.raises(ValueError, match="mean"):
        CropSpec(mean=(0.1, 0.2, 0.3), std=(1.0,)).stats(1)
    with pytest.raises(ValueError, match="std"):
        CropSpec(mean=(0.5,), std=(0.1, 0.2, 0.3)).stats(1)


# -- recipes and specs ---------------------------------------------------------------------------


def test_byol_recipes_of_barlow_twins_and_vicreg():
    for method in ("barlow_twins", "vicreg"):
        first, second = method_views(method, 224).views
        assert (first.blur_p, first.solarize_p) == (1.0, 0.0)
        assert (second.blur_p, second.solarize_p) == (0.1, 0.2)
        for view in (first, second):
            assert view.scale == (0.08, 1.0) and view.flip_p == 0.5
            assert (view.jitter_p, view.grayscale_p) == (0.8, 0.2)
            assert (view.brightness, view.contrast, view.saturation, view.hue) == (
                0.4,
                0.4,
                0.2,
                0.1,
            )
            assert view.blur_sigma == pytest.approx((0.1, 2.0))
    small = method_views("vicreg", 28).views[0]
    assert small.size == 28 and small.blur_sigma == pytest.approx((0.0125, 0.25))


def test_single_view_recipes():
    (mae,) = method_views("mae", 32).views
    assert (mae.size, mae.scale, mae.flip_p, mae.jitter_p, mae.blur_p) == (
        32,
        (0.2, 1.0),
        0.5,
        0,
        0,
    )
    assert method_views("data2vec2", 32).views == (mae,)
    (ijepa,) = method_views("ijepa").views
    assert (ijepa.size, ijepa.scale, ijepa.flip_p) == (224, (0.3, 1.0), 0.0)
    (vjepa,) = method_views("vjepa2").views
    assert (vjepa.size, vjepa.scale, vjepa.ratio) == (256, (0.3, 1.0), (0.75, 1.35))


def test_dinov2_recipe_local_crops_count_and_size():
    recipe = method_views("dinov2")
    first, second = recipe.views
    assert (first.size, first.scale, first.blur_p, first.solarize_p) == (224, (0.32, 1.0), 1.0, 0)
    assert (second.blur_p, second.solarize_p) == (0.1, 0.2)
    assert (recipe.n_local, recipe.local.size, recipe.local.scale) == (8, 96, (0.05, 0.32))
    assert recipe.local.blur_p == 0.5
    assert method_views("dinov2", patch_size=14).local.size == 98
    small = method_views("dinov2", 28, patch_size=4, n_local=3)
    assert (small.views[0].size, small.local.size, small.n_local) == (28, 12, 3)
    assert method_views("dinov2", 32, patch_size=8).local.size == 16  # 13.7 rounds to 2 patches
    assert method_views("dinov2", 16, patch_size=8).local.size == 8  # never below one patch


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"size": 0}, "size"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"scale": (0.6, 0.2)}, "scale"),
        ({"ratio": (2.0, 1.0)}, "ratio"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"solarize_p": -0.1}, "solarize_p"),
        ({"brightness": -1.0}, "brightness"),
        ({"hue": 0.6}, "hue"),
        ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
        ({"blur_kernel_size": 4}, "blur_kernel_size"),
        ({"solarize_threshold": 2.0}, "solarize_threshold"),
        ({"mean": (0.1, 0.2), "std": (1.0, 1.0)}, "mean"),
        ({"mean": (0.5,)}, "std"),
        ({"mean": (0.5,), "std": (0.0,)}, "std"),
    ],
)
def test_crop_spec_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}="):
        CropSpec(**kwargs)


def test_method_views_errors_name_the_argument():
    with pytest.raises(ValueError, match="method"):
        method_views("simclr")
    with pytest.raises(ValueError, match="size"):
        method_views("mae", 0)
    with pytest.raises(ValueError, match="n_local"):
        method_views("dinov2", n_local=-1)


# -- entry points --------------------------------------------------------------------------------


def test_two_views_and_multi_crop_shapes():
    x = images((3, 3, 20, 20), dtype=torch.uint8)
    view1, view2 = A.two_views(x, method_views("barlow_twins", 16).views, seeded(0))
    assert view1.shape == view2.shape == (3, 3, 16, 16)
    assert not torch.allclose(view1, view2)

    recipe = method_views("dinov2", 16, patch_size=4, n_local=3)
    global_views, local_views = A.multi_crop(x, recipe.views, recipe.local, 3, seeded(0))
    assert [tuple(v.shape) for v in global_views] == [(3, 3, 16, 16)] * 2
    assert [tuple(v.shape) for v in local_views] == [(3, 3, 8, 8)] * 3
    assert all(v.dtype == torch.float32 for v in global_views + local_views)
    assert not torch.allclose(local_views[0], local_views[1])

    one_spec, no_locals = A.multi_crop(x, recipe.views[0], recipe.local, 0, seeded(0))
    assert [tuple(v.shape) for v in one_spec] == [(3, 3, 16, 16)] * 2 and no_locals == []
    with pytest.raises(ValueError, match="n_local"):
        A.multi_crop(x, recipe.views, recipe.local, -1)
    with pytest.raises(ValueError, match="specs"):
        A.two_views(x, recipe.views[:1])


def test_augment_clip_uses_one_crop_for_all_frames():
    frame = images((2, 3, 1, 14, 14), dtype=torch.uint8)
    clip = frame.expand(-1, -1, 4, -1, -1)  # four identical frames per clip
    spec = CropSpec(size=8, jitter_p=1.0, grayscale_p=0.5, blur_p=0.5, solarize_p=0.5)
    out = A.augment_clip(clip, spec, seeded(0))
    assert out.shape == (2, 3, 4, 8, 8) and out.dtype == torch.float32
    for t in range(1, 4):
        assert torch.equal(out[:, :, t], out[:, :, 0])
    # Each clip is the single-image view made with that clip's parameters.
    params = A.sample_params(spec, 2, 14, 14, seeded(0))
    torch.testing.assert_close(out[:, :, 0], A.apply_params(frame[:, :, 0], spec, params))
    with pytest.raises(ValueError, match="video"):
        A.augment_clip(frame[:, :, 0], spec)
