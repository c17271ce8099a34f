"""Fine-tuning: the pre-trained encoder unfrozen, with a linear classifier on its `encode`
features, trained end to end (the seed's "Fine-tuning" protocol).

What MAE, BEiT and DINOv2 do, scaled to small data: AdamW with layer-wise learning-rate decay
(block i of L gets lr * layer_decay ** (L + 1 - i): the patch embedding moves least, the head
most), a warmup + cosine schedule, stochastic depth rising linearly to `drop_path` over the
blocks, label smoothing, crop + flip augmentation, no weight decay on biases, norms and tokens.
The model passed in is copied: its weights stay as they were.
"""

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import require
from ..data.augment import augment, augment_clip
from ..data.views import CropSpec
from ..layers import DropPath
from ..models.vit import VisionTransformer
from ..train.schedules import cosine_schedule_with_warmup
from .features import extract_features

PIXEL_MEAN, PIXEL_STD = 0.5, 0.5  # as the pre-training views and the kNN / linear probes


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (`nexus-fast eval finetune --set key=value`).

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step.
        lr: the head's peak learning rate; encoder layers get lr * layer_decay ** distance.
        layer_decay: layer-wise decay (0.65-0.75 in MAE / BEiT; 1.0 turns it off).
        weight_decay: AdamW weight decay (not on biases, norms, tokens, position embeddings).
        warmup_epochs: linear warmup before the cosine decay.
        drop_path: the last block's stochastic-depth rate (the first block's is 0).
        label_smoothing: cross-entropy label smoothing.
        crop_scale: area range of the random resized crop (with a horizontal flip).
        seed: the seed of the head's initialisation, the batch order and the augmentation.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    crop_scale: tuple[float, float] = (0.3, 1.0)
    seed: int = 0

    def __post_init__(self) -> None:
        def number(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        def whole(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        require(whole(self.epochs) and self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        require(
            whole(self.batch_size) and self.batch_size >= 1,
            "batch_size",
            self.batch_size,
            "an integer >= 1",
        )
        require(number(self.lr) and self.lr > 0, "lr", self.lr, "a number > 0")
        require(
            number(self.layer_decay) and 0 < self.layer_decay <= 1,
            "layer_decay",
            self.layer_decay,
            "a number in (0, 1]",
        )
        require(
            number(self.weight_decay) and self.weight_decay >= 0,
            "weight_decay",
            self.weight_decay,
            "a number >= 0",
        )
        require(
            number(self.warmup_epochs) and 0 <= self.warmup_epochs <= self.epochs,
            "warmup_epochs",
            self.warmup_epochs,
            f"a number in [0, epochs={self.epochs}]",
        )
        require(
            number(self.drop_path) and 0 <= self.drop_path < 1,
            "drop_path",
            self.drop_path,
            "a number in [0, 1)",
        )
        require(
            number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            "label_smoothing",
            self.label_smoothing,
            "a number in [0, 1)",
        )
        scale = self.crop_scale
        require(
            isinstance(scale, (tuple, list))
            and len(scale) == 2
            and all(number(v) for v in scale)
            and 0 < scale[0] <= scale[1] <= 1,
            "crop_scale",
            scale,
            "a pair (low, high) with 0 < low <= high <= 1",
        )
        object.__setattr__(self, "crop_scale", tuple(scale))


def layer_index(name: str, depth: int) -> int:
    """The layer of an encoder parameter for layer-wise decay: 0 for the embeddings (patch
    embedding, cls / register tokens, position embedding), i + 1 for blocks.i, depth + 1 for
    the rest (the final norm)."""
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("patch_embed", "cls_token", "reg_token", "pos_embed", "mask_token")):
        return 0
    return depth + 1


def _parameter_groups(
    encoder: VisionTransformer, head: nn.Module, config: FinetuneConfig
) -> list[dict]:
    """AdamW groups: one per (layer, decays or not), each with its lr scale."""
    depth = len(encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    named = [(f"encoder.{n}", layer_index(n, depth), p) for n, p in encoder.named_parameters()]
    named += [(f"head.{n}", depth + 1, p) for n, p in head.named_parameters()]
    for name, layer, parameter in named:
        if not parameter.requires_grad:
            continue  # e.g. a fixed sin-cos position embedding
        decays = parameter.ndim > 1 and not name.endswith(("_token", "pos_embed"))
        group = groups.setdefault(
            (layer, decays),
            {
                "params": [],
                "weight_decay": config.weight_decay if decays else 0.0,
                "lr_scale": config.layer_decay ** (depth + 1 - layer),
            },
        )
        group["params"].append(parameter)
    return list(groups.values())


def _stochastic_depth(encoder: VisionTransformer, rate: float) -> None:
    """Block i drops its residual branches with probability rate * i / (L - 1)."""
    depth = len(encoder.blocks)
    for index, block in enumerate(encoder.blocks):
        block_rate = rate * index / max(depth - 1, 1)
        block.drop_path = DropPath(block_rate) if block_rate > 0 else nn.Identity()


class _Classifier(nn.Module):
    def __init__(self, model: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.model.encode(x))


def finetune(
    model: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    config: FinetuneConfig | None = None,
    *,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Fine-tunes a copy of `model`'s evaluation encoder with a linear head; top-1 on the test
    split.

    Args:
        model: a nexus_fast SSL model (anything with `encode` and `evaluation_encoder()`).
        train_images, test_images: uint8 (N, C, H, W) images or (N, C, T, H, W) clips.
        train_labels, test_labels: (N,) integer classes.
        config: the settings (FinetuneConfig defaults when None).
        device: where to train.

    Returns:
        {"top1": test accuracy in [0, 1], "train_loss": the last epoch's mean loss}.
    """
    config = config or FinetuneConfig()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    work = copy.deepcopy(model).to(device)
    work.requires_grad_(False)
    encoder = work.evaluation_encoder()
    encoder.requires_grad_(True)
    _stochastic_depth(encoder, config.drop_path)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    channels, size = train_images.shape[1], train_images.shape[-1]
    spec = CropSpec(
        size=size,
        scale=config.crop_scale,
        mean=(PIXEL_MEAN,) * channels,
        std=(PIXEL_STD,) * channels,
    )
    view = augment_clip if train_images.dim() == 5 else augment
    with torch.no_grad():
        work.eval()
        width = work.encode(view(train_images[:2].to(device), spec, generator)).shape[-1]
    head = nn.Linear(width, classes).to(device)
    nn.init.trunc_normal_(head.weight, std=2e-5)  # MAE's head init: start from the features
    nn.init.zeros_(head.bias)
    classifier = _Classifier(work, head)

    groups = _parameter_groups(encoder, head, config)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999))
    steps_per_epoch = -(-train_images.shape[0] // config.batch_size)
    schedule = cosine_schedule_with_warmup(
        config.lr, config.warmup_epochs, config.epochs, steps_per_epoch, final_lr=1e-6
    )
    labels = train_labels.long()
    step, epoch_loss = 0, float("nan")
    for _ in range(config.epochs):
        classifier.train()
        order = torch.randperm(train_images.shape[0], generator=generator)
        total, batches = 0.0, 0
        for start in range(0, order.numel(), config.batch_size):
            index = order[start : start + config.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = float(schedule[step]) * group["lr_scale"]
            images = view(train_images[index].to(device), spec, generator)
            loss = F.cross_entropy(
                classifier(images), labels[index].to(device), label_smoothing=config.label_smoothing
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches, step = total + float(loss.detach()), batches + 1, step + 1
        epoch_loss = total / max(batches, 1)
    logits = extract_features(
        classifier, test_images, normalize=(PIXEL_MEAN, PIXEL_STD), batch_size=256, device=device
    )
    top1 = float((logits.argmax(dim=1) == test_labels.long()).float().mean())
    return {"top1": top1, "train_loss": epoch_loss}


def finetune_config(values: dict) -> FinetuneConfig:
    """A FinetuneConfig from `--set` values; ValueError naming unknown keys and the valid ones."""
    fields = {field.name for field in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"fine-tuning settings {unknown} are not allowed: one of {', '.join(sorted(fields))}"
        )
    return FinetuneConfig(**values)
