"""Per-method recipes for the built-in data sets: the model at the CPU size, the optimisation
defaults, the training views, and the function that turns a step's sample indices into the
model's inputs.

The official hyperparameters (METHODS.md) are for ImageNet at batch 1024-4096 over hundreds of
epochs; here a run is a few hundred steps of batch 256 on 28 x 28 greyscale silhouettes (moving
32 x 32 clips for V-JEPA 2). What is scaled, and why (measurements in docs/results.md):
- the encoder: a ViT of width 128, depth 4, 4 heads. Patch 7 (4 x 4 = 16 patches), which
  reaches the same kNN per step as patch 4 3.5x faster, except I-JEPA (patch 4, 7 x 7 = 49
  patches: its block masks need a grid finer than 4 x 4; and its patch embedding drawn
  xavier-uniform, not the official std 0.02, which over 16 inputs drowns content in position).
  Features are mean-pooled, except DINOv2's (the teacher's cls token, as the official kNN);
- learning rates: AdamW at 1e-3 to 2e-3 with a short warmup (the official base lr x batch / 256
  rules give 1e-4-scale rates tuned for 100+ epochs; a short run needs a larger step), except
  the JEPAs (5e-4, below);
- teacher momentum: starts at 0.98-0.99 rather than 0.992-0.9999 (the teacher must move within
  a few hundred steps; DINOv2 0.98 -> 0.995), except I-JEPA and V-JEPA 2 (0.996, with lr 5e-4):
  at 0.99 and lr 1e-3 to 2e-3 their features collapsed (I-JEPA) or lost effective rank (V-JEPA 2);
- Barlow Twins and VICReg: LARS as in the official code is available (`--set optimizer=lars`);
  the default is AdamW, which trains ViTs better at this size;
- augmentations: crop (scale 0.3-1) and flip only (PLAIN_VIEW) for every image method but
  I-JEPA (its official crop + flip).
  The official colour jitter, blur and solarisation carry no information on greyscale
  silhouettes and cost 10-15 kNN points in short runs; `--set view.jitter_p=0.8` etc. bring them
  back. Images are normalised by mean 0.5, std 0.5 as the evaluation does.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..data.augment import augment, augment_clip, multi_crop, two_views
from ..data.views import CropSpec, method_views
from ..models import ssl

METHODS = ("mae", "ijepa", "vjepa2", "dinov2", "data2vec2", "barlow_twins", "vicreg")
# Pixels are mapped from [0, 1] to [-1, 1] for training and evaluation alike.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5

# Crop and flip only: see the module docstring.
PLAIN_VIEW = {"scale": (0.3, 1.0), "jitter_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}
# The joint-embedding methods' encoder changes: 16 patches, mean-pooled features.
_PATCH7 = {"patch_size": 7, "pool": "mean"}

_ENCODER = {
    "img_size": 28,
    "in_chans": 1,
    "patch_size": 4,
    "encoder_dim": 128,
    "encoder_depth": 4,
    "encoder_heads": 4,
}


@dataclass(frozen=True)
class Recipe:
    """What `nexus-fast pretrain --method M` trains by default.

    Attributes:
        method: the method's name.
        model_class: the SSL model class.
        model: the model config's overrides (merged over the class defaults).
        train: TrainConfig overrides.
        video: whether the method trains on clips (moving shapes) instead of images.
        view: CropSpec overrides applied to every global view of the method's official recipe
            (`--set view.scale=(0.3,1.0)`).
        local_view: CropSpec overrides for DINOv2's local crops (`--set local.scale=...`).
    """

    method: str
    model_class: type
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    video: bool = False
    view: dict = field(default_factory=dict)
    local_view: dict = field(default_factory=dict)


def _recipe(
    method: str,
    model_class: type,
    model: dict,
    train: dict,
    video: bool = False,
    view: dict | None = None,
    local_view: dict | None = None,
) -> Recipe:
    # steps_per_epoch follows the data set's size (settings.epoch_overrides).
    common = {"steps": 300, "batch_size": 256, "warmup_steps": 30}
    return Recipe(
        method,
        model_class,
        {**_ENCODER, **model},
        {**common, **train},
        video,
        view or {},
        local_view or {},
    )


RECIPES: dict[str, Recipe] = {
    "mae": _recipe(
        "mae",
        ssl.MAE,
        {**_PATCH7, "decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 4},
        # MAE's features improve slowly but steadily: kNN 69.2% at 300 steps, 78.85% at 1500
        # (a step is cheap: 1500 take about 5 minutes on 2 cores).
        {"lr": 2e-3, "weight_decay": 0.05, "betas": (0.9, 0.95), "steps": 1500},
        view=PLAIN_VIEW,
    ),
    "data2vec2": _recipe(
        "data2vec2",
        ssl.Data2VecModel,
        {
            "patch_size": 7,  # data2vec 2.0 always mean-pools
            "decoder_dim": 64,
            "decoder_layers": 2,
            # One group: the official 16 groups of 768 channels hold 48 channels each; 16 of 64
            # would leave 4 (79.55% kNN against 76.8% with this and cls_loss).
            "decoder_groups": 1,
            # The cls term sums over a device's B x M rows: the official 16 x 16 = 256 rows at
            # 0.01 weigh as our 256 x 4 = 1024 at 0.0025 (at 0.01 it dwarfed the patch term for
            # the first 250 steps).
            "cls_loss": 0.0025,
            "clone_batch": 4,
            "average_top_k_layers": 4,
            "ema_decay": 0.99,
            "ema_end_decay": 0.9999,
            "ema_anneal_end_step": 300,
            "mask_block_size": 2,
        },
        {"lr": 2e-3, "weight_decay": 0.05, "betas": (0.9, 0.95), "clip_grad": 4.0, "steps": 600},
        view=PLAIN_VIEW,
    ),
    "ijepa": _recipe(
        "ijepa",
        ssl.JEPAModel,
        {
            "predictor_dim": 64,
            "predictor_depth": 2,
            "min_keep": 4,
            "ema_momentum": (0.996, 1.0),
            # The official std-0.02 patch embedding over 4 x 4 greyscale patches leaves a token's
            # content 6x below its position: the targets are 96% position (50.05% kNN vs 41.5%).
            "patch_embed_init": "xavier",
        },
        # lr 2e-3 with a 0.99 teacher collapsed here (loss 8e-5, embedding_std 2e-4 by step 250)
        {"lr": 5e-4, "weight_decay": 0.04, "weight_decay_end": 0.4},
    ),
    "vjepa2": _recipe(
        "vjepa2",
        ssl.VJEPAModel,
        {
            "img_size": 32,
            "patch_size": 8,
            "num_frames": 8,
            "tubelet": 2,
            "predictor_dim": 64,
            "predictor_depth": 2,
            "predictor_heads": 4,
            # As I-JEPA's: at lr 1e-3 with a 0.99 -> 1.0 teacher the features lost effective
            # rank (31 -> 14 in 300 steps) and kNN fell after step 100; these kept rank 28 and
            # kNN rising (45.1% -> 50.9% at 300 steps, against 49.0%).
            "ema_momentum": (0.996, 1.0),
        },
        {"lr": 5e-4, "weight_decay": 0.04, "batch_size": 64},
        video=True,
    ),
    "dinov2": _recipe(
        "dinov2",
        ssl.DINOv2Model,
        {
            "patch_size": 7,
            "pool": "cls",  # the official kNN feature: the teacher's cls token
            # A faster teacher: with the official 0.992 -> 1.0 the teacher of a 400-step run
            # still holds a fifth of its random initial weights (78.0% kNN vs 65.65%).
            "momentum_teacher": 0.98,
            "final_momentum_teacher": 0.995,
            # Short runs (docs/results.md): no stochastic depth or LayerScale (which keep a fresh
            # encoder's output nearly constant); a sharp teacher (Sinkhorn-Knopp at temperature
            # 0.01 over 256 prototypes), else it stays near uniform and DINO teaches nothing.
            "drop_path": 0.0,
            "layer_scale_init": None,
            "centering": "sinkhorn_knopp",
            "warmup_teacher_temp": 0.01,
            "teacher_temp": 0.01,
            "local_crop_size": 14,
            "local_crops_number": 4,
            "dino_prototypes": 256,
            "dino_hidden_dim": 512,
            "dino_bottleneck_dim": 128,
            "ibot_prototypes": 256,
            "ibot_hidden_dim": 512,
            "ibot_bottleneck_dim": 128,
        },
        {"lr": 1e-3, "weight_decay": 0.04, "weight_decay_end": 0.2, "clip_grad": 3.0, "steps": 400},
        view=PLAIN_VIEW,
        local_view={"jitter_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0},
    ),
    "barlow_twins": _recipe(
        "barlow_twins",
        ssl.BarlowTwinsModel,
        {**_PATCH7, "projector_dims": (512, 512, 512)},
        {"lr": 2e-3, "weight_decay": 0.05, "steps": 600},
        view=PLAIN_VIEW,
    ),
    "vicreg": _recipe(
        "vicreg",
        ssl.VICRegModel,
        {**_PATCH7, "expander_dims": (512, 512, 512)},
        # The README's job, sized for 10 minutes on 2 slow cores: on 2026-12-07 600 steps took
        # 11.0 minutes in all, 400 took 9.1 (85.3% kNN), at 1.0-1.1 steps/s; on 2026-12-04 the
        # same machine ran 2.1 steps/s. A kNN score every 100 steps (a few seconds) for the plot.
        {"lr": 2e-3, "weight_decay": 0.05, "steps": 300, "eval_every": 100},
        view=PLAIN_VIEW,
    ),
}


def get_recipe(method: str) -> Recipe:
    """The recipe of a method; ValueError naming the allowed methods otherwise."""
    if method not in RECIPES:
        raise ValueError(f"method={method!r} is not allowed: one of {', '.join(METHODS)}")
    return RECIPES[method]


def training_views(recipe: Recipe, model: nn.Module):
    """The method's official views at the model's image size, normalised as the evaluation is."""
    config = model.config
    views = method_views(
        recipe.method,
        config.img_size,
        local_size=getattr(config, "local_crop_size", None),
        n_local=getattr(config, "local_crops_number", 8),
        patch_size=config.patch_size,
    )
    channels = config.in_chans

    def normalised(spec: CropSpec | None, changes: dict) -> CropSpec | None:
        if spec is None:
            return None
        fixed = sorted({"mean", "std"} & set(changes))
        if fixed:
            raise ValueError(
                f"view settings {fixed} are not allowed: training views are normalised by "
                f"mean {PIXEL_MEAN}, std {PIXEL_STD}, as the evaluation is"
            )
        try:
            return dataclasses.replace(
                spec, **changes, mean=(PIXEL_MEAN,) * channels, std=(PIXEL_STD,) * channels
            )
        except TypeError:
            allowed = sorted(f.name for f in dataclasses.fields(CropSpec))
            unknown = sorted(set(changes) - set(allowed))
            raise ValueError(
                f"view settings {unknown} are not allowed: view.<field> or local.<field> with "
                f"a field of {', '.join(allowed)}"
            ) from None

    return dataclasses.replace(
        views,
        views=tuple(normalised(spec, recipe.view) for spec in views.views),
        local=normalised(views.local, recipe.local_view),
    )


def make_inputs(
    recipe: Recipe, model: nn.Module, data: Tensor, device: torch.device
) -> Callable[[Tensor, torch.Generator], tuple[tuple, dict]]:
    """The Trainer's `inputs`: the augmented views of the samples at `indices` of `data` (uint8
    images (N, C, H, W) or clips (N, C, T, H, W), kept on `device`), drawn from the step's
    generator."""
    views = training_views(recipe, model)
    data = data.to(device)

    def inputs(indices: Tensor, generator: torch.Generator) -> tuple[tuple, dict]:
        batch = data[indices.to(device)]
        if recipe.video:
            return (augment_clip(batch, views.views[0], generator),), {}
        if recipe.method in ("barlow_twins", "vicreg"):
            return two_views(batch, views.views, generator), {}
        if recipe.method == "dinov2":
            global_crops, local_crops = multi_crop(
                batch, views.views, views.local, views.n_local, generator
            )
            return (global_crops, local_crops), {}
        return (augment(batch, views.views[0], generator),), {}

    return inputs
