"""DINOv2 (Oquab et al., 2023; facebookresearch/dinov2, dinov2/train/ssl_meta_arch.py):
self-distillation from an EMA teacher on the cls token (DINO) and on masked patch tokens (iBOT),
plus KoLeo to spread the student's features, over multi-crop views.

One training step, as `forward` runs it (B images, 2 global crops, n local crops):

    teacher (EMA of the student, eval mode, no gradient) on the 2 global crops:
        cls, patches = teacher.backbone(global crops)                  (2B, D), (2B, L, D)
        p_cls   = sharpen(dino_head(cls))                              (2B, K)
        p_patch = sharpen(ibot_head(patches[masks]))                   (n_masked, K)
        sharpen: softmax((t - center) / tau_t), then the center moves towards the batch mean
        (ops.DINOCenter); or ops.sinkhorn_knopp for the large models
    student, one packed variable-length batch (ViT blocks on cu_seqlens):
        the 2 global crops, their iBOT-masked patches replaced by a learned mask token
        (masking.block_mask: half the images, 10-50% of their patches, BEiT rectangles),
        and the n local crops
    dino  = cross-entropy of each student cls against the teacher probabilities of the other
            global crop (global crops) or of both (local crops), summed over these 2 + 2n terms
            and divided by their number                                 ops.dino_prototype_loss
    ibot  = cross-entropy of each masked student patch against the teacher's, each image
            weighted by 1 / its masked count, divided by 2B             ops.prototype_cross_entropy
    koleo = KoLeo of the student's cls tokens, each global crop on its own, summed
                                                                        ops.koleo_loss
    loss  = dino_loss_weight * dino + ibot_loss_weight * ibot + koleo_loss_weight * koleo

The student's head never forms its (rows, K) logits: the fused ops take the head's bottleneck
output and its prototypes (see _dino_head.py). Around the step the trainer calls
`set_epoch(epoch)` (teacher temperature, last-layer freeze), `cancel_last_layer_gradients()`
after the backward, and `update_teacher(momentum(step, total_steps))` after the optimizer step.

Deviations from the official code, and why:
- Last layer: weight_g fixed to 1 (official: a trained parameter), so logits are cosines and
  the fused kernels are safe in float32 (see _dino_head.py).
- DINO without local crops: the official divides by (2 + max(2 * 0, 1)) = 3 terms; here by the
  2 terms there are.
- iBOT rows: exactly the masked tokens (their count is read on the host, free for CPU masks, a
  device sync for masks handed in on a GPU). The official pads them to a host-side upper bound,
  and its Sinkhorn-Knopp includes those padding rows (zero tokens through the head) in the
  prototype sums; here only real rows enter them.
- KoLeo takes neighbours from the global batch under torch.distributed (DESIGN.md: every
  global-batch loss gathers; the official uses each GPU's batch, which gives inf on tiny or
  duplicate per-GPU batches, dinov2 #314). Single-process results are the official ones.
- Last-layer freeze: the official sets the last layers' learning rate to 0 in the first epoch
  (AdamW still accumulates their moments); here their gradients are dropped after the backward
  (DINO v1's cancel_gradients_last_layer), so AdamW skips them, and DDP sees every gradient.
- Teacher temperature: linear in (fractional) epochs; the official np.linspace over iterations
  reaches 0.07 one iteration earlier.
- With ibot_loss_weight = 0 the student's crops are not masked (the official masks them anyway).
- Local crops' position embeddings: vit.py resizes bicubically to the exact grid; the official
  uses a scale factor with a +0.1 offset (slightly different values).
"""

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ... import ops
from ...config import require
from ...eval.collapse import embedding_std
from ...masking import BlockMask, block_mask
from ..vit import VisionTransformer
from ._base import EncoderConfig, SSLModel, frozen_copy
from ._dino_head import DINOHead
from ._heads import pooled

# The released DINOv2 sizes, as overrides of DINOv2Config (DINOv2Model.preset("official",
# **OFFICIAL_SIZES["vitg14"])). ViT-L/14 and ViT-g/14 follow dinov2/configs/train/vitl14.yaml and
# vitg14.yaml (both train with SwiGLU); there is no training config for ViT-S/14 and ViT-B/14
# (the released ones were distilled from ViT-g/14), so they keep ssl_default_config.yaml's method
# settings, the class defaults.
_LARGE_RECIPE = {
    "ffn_layer": "swiglu",
    "drop_path": 0.4,
    "dino_prototypes": 131072,
    "dino_bottleneck_dim": 384,
    "ibot_separate_head": True,
    "ibot_prototypes": 131072,
    "centering": "sinkhorn_knopp",
    "momentum_teacher": 0.994,
}
# DINOv2's ffn_layer names -> the ViT's MLP kinds ("swiglu" is the official "swiglufused").
_FFN = {"mlp": "gelu", "swiglu": "swiglu"}
OFFICIAL_SIZES: dict[str, dict] = {
    "vits14": {"encoder_dim": 384, "encoder_depth": 12, "encoder_heads": 6},
    "vitb14": {"encoder_dim": 768, "encoder_depth": 12, "encoder_heads": 12},
    "vitl14": {"encoder_dim": 1024, "encoder_depth": 24, "encoder_heads": 16, **_LARGE_RECIPE},
    "vitg14": {"encoder_dim": 1536, "encoder_depth": 40, "encoder_heads": 24, **_LARGE_RECIPE},
}


@dataclass
class DINOv2Config(EncoderConfig):
    """DINOv2's settings, named after dinov2/configs/ssl_default_config.yaml (its defaults) on a
    ViT-B/14 encoder with learned position embeddings and a cls token.

    Encoder: the EncoderConfig fields; DINOv2 uses patch 14, stochastic depth 0.3 at every block
    (drop_path_uniform), LayerScale 1e-5, `ffn_layer` "mlp" or "swiglu" (ViT-L/g).
    Heads: dino_* (dino.head_*), ibot_* (ibot.head_*; used when ibot_separate_head, else iBOT
    shares the DINO head, as the official default).
    Teacher: centering "centering" (softmax with a running center, momentum center_momentum) or
    "sinkhorn_knopp" (sinkhorn_iterations); EMA momentum cosine momentum_teacher ->
    final_momentum_teacher; temperature warmup_teacher_temp -> teacher_temp, linear over
    warmup_teacher_temp_epochs, then constant. student_temp: tau_s.
    Masking: mask_probability of the global crops masked, each with a ratio in mask_ratio_range.
    Crops (what the data pipeline makes; see `crop_shapes`): 2 global crops of img_size and
    local_crops_number local crops of local_crop_size (96 officially; 98 with patch 14).
    encode_with: the network `encode` runs (DINOv2 evaluates the teacher).
    pool: the feature `encode` returns: "cls" (x_norm_clstoken, DINOv2's kNN feature), "mean"
        (the patch tokens' mean) or "cls+mean" (both concatenated, DINOv2's linear-probe
        feature).
    gather: centering, Sinkhorn-Knopp and KoLeo over the global batch under torch.distributed.
    """

    patch_size: int = 14
    drop_path: float = 0.3
    layer_scale_init: float | None = 1e-5
    ffn_layer: Literal["mlp", "swiglu"] = "mlp"
    dino_loss_weight: float = 1.0
    dino_prototypes: int = 65536
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256
    dino_head_layers: int = 3
    koleo_loss_weight: float = 0.1
    ibot_loss_weight: float = 1.0
    ibot_separate_head: bool = False
    ibot_prototypes: int = 65536
    ibot_hidden_dim: int = 2048
    ibot_bottleneck_dim: int = 256
    ibot_head_layers: int = 3
    mask_probability: float = 0.5
    mask_ratio_range: tuple[float, float] = (0.1, 0.5)
    centering: Literal["centering", "sinkhorn_knopp"] = "centering"
    center_momentum: float = 0.9
    sinkhorn_iterations: int = 3
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: float = 30.0
    momentum_teacher: float = 0.992
    final_momentum_teacher: float = 1.0
    freeze_last_layer_epochs: float = 1.0
    local_crops_number: int = 8
    local_crop_size: int = 98
    encode_with: Literal["teacher", "student"] = "teacher"
    pool: Literal["cls", "mean", "cls+mean"] = "cls"
    gather: bool = True

    def validate(self) -> None:
        super().validate()
        for key in (
            "dino_prototypes",
            "dino_hidden_dim",
            "dino_bottleneck_dim",
            "dino_head_layers",
            "ibot_prototypes",
            "ibot_hidden_dim",
            "ibot_bottleneck_dim",
            "ibot_head_layers",
            "sinkhorn_iterations",
            "local_crop_size",
        ):
            require(getattr(self, key) >= 1, key, getattr(self, key), "a positive integer")
        for key in (
            "dino_loss_weight",
            "koleo_loss_weight",
            "ibot_loss_weight",
            "warmup_teacher_temp_epochs",
            "freeze_last_layer_epochs",
            "local_crops_number",
        ):
            require(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        for key in ("student_temp", "warmup_teacher_temp", "teacher_temp"):
            require(getattr(self, key) > 0, key, getattr(self, key), "> 0")
        for key in ("center_momentum", "momentum_teacher", "final_momentum_teacher"):
            require(0.0 <= getattr(self, key) <= 1.0, key, getattr(self, key), "in [0, 1]")
        require(
            0.0 <= self.mask_probability <= 1.0,
            "mask_probability",
            self.mask_probability,
            "in [0, 1]",
        )
        low, high = self.mask_ratio_range
        require(
            0.0 <= low <= high <= 1.0,
            "mask_ratio_range",
            self.mask_ratio_range,
            "(low, high) with 0 <= low <= high <= 1",
        )
        if self.ibot_loss_weight > 0:
            # The official asserts these: iBOT without a masked patch has nothing to learn.
            require(high > 0, "mask_ratio_range", self.mask_ratio_range, "high > 0 with iBOT")
            require(
                self.mask_probability > 0,
                "mask_probability",
                self.mask_probability,
                "> 0 with iBOT (ibot_loss_weight > 0)",
            )
        require(
            self.local_crop_size % self.patch_size == 0,
            "local_crop_size",
            self.local_crop_size,
            f"a multiple of patch_size {self.patch_size}",
        )


class DINOv2Backbone(VisionTransformer):
    """DINOv2's student/teacher ViT: the VisionTransformer (mask token, uniform stochastic depth
    and packed multi-crop forward are ViT options) with DINOv2's initialisation.

    State-dict names: VisionTransformer's (timm's) plus DINOv2's `mask_token` (1, D).
    """

    @torch.no_grad()
    def init_weights(self) -> None:
        """DinoVisionTransformer.init_weights: position embeddings truncated normal (0.02), cls
        and register tokens N(0, 1e-6), linears timm's, the patch embedding a fresh Conv2d's
        (the official leaves it at PyTorch's default), the mask token 0."""
        super().init_weights()
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        self.patch_embed.proj.reset_parameters()


@dataclass(frozen=True)
class _MaskedRows:
    """The iBOT-masked patch tokens of the 2B global crops, as rows of the flattened tokens.

    Attributes:
        mask: (2B, L) bool on the model's device, True where the student sees the mask token.
        rows: (n_masked,) int64 indices into the (2B * L) flattened patch tokens, row-major.
        weights: (n_masked,) float32, 1 / (masked count of the row's image).
    """

    mask: Tensor
    rows: Tensor
    weights: Tensor

    @property
    def count(self) -> int:
        return self.rows.shape[0]


class DINOv2Model(SSLModel):
    """`loss, metrics = model(global_crops, local_crops, masks)`, or `model(view1, view2)`.

    Modules, in DINOv2's state-dict names: `student` and `teacher`, each a ModuleDict of
    `backbone` (DINOv2Backbone), `dino_head` and, with ibot_separate_head, `ibot_head`
    (DINOHead); `dino_center` and `ibot_center` (ops.DINOCenter, with centering "centering").

    Args:
        config: a DINOv2Config or a dict of its fields.
        device: where to build the parameters; "meta" builds without memory (then
            `to_empty(device=...)` and `init_weights()`).
    """

    config_class = DINOv2Config
    tiny_preset: ClassVar[dict] = {
        **SSLModel.tiny_preset,
        "local_crop_size": 16,
        "dino_prototypes": 256,
        "dino_hidden_dim": 64,
        "dino_bottleneck_dim": 32,
        "ibot_prototypes": 256,
        "ibot_hidden_dim": 64,
        "ibot_bottleneck_dim": 32,
    }

    def __init__(self, config: DINOv2Config | dict | None = None, device=None) -> None:
        super().__init__(config)
        config = self.config
        backbone = DINOv2Backbone(
            config.encoder_config(
                pos_embed="learned",
                mlp=_FFN[config.ffn_layer],
                mask_token=True,
                drop_path_uniform=True,
            ),
            device=device,
        )
        student = {"backbone": backbone, "dino_head": self._head("dino", device)}
        if config.ibot_separate_head:
            student["ibot_head"] = self._head("ibot", device)
        self.student = nn.ModuleDict(student)
        self.teacher = frozen_copy(self.student)  # the official copies the student's weights
        self.teacher.eval()
        if config.centering == "centering":
            ibot_prototypes = (
                config.ibot_prototypes if config.ibot_separate_head else config.dino_prototypes
            )
            self.dino_center = ops.DINOCenter(
                config.dino_prototypes, config.center_momentum, gather=config.gather
            )
            self.ibot_center = ops.DINOCenter(
                ibot_prototypes, config.center_momentum, gather=config.gather
            )
            if device is not None:
                self.dino_center.to(device)
                self.ibot_center.to(device)
        self.epoch = 0.0

    def _head(self, kind: Literal["dino", "ibot"], device) -> DINOHead:
        config = self.config
        return DINOHead(
            config.encoder_dim,
            getattr(config, f"{kind}_prototypes"),
            getattr(config, f"{kind}_hidden_dim"),
            getattr(config, f"{kind}_bottleneck_dim"),
            getattr(config, f"{kind}_head_layers"),
            device=device,
        )

    def _ibot_head_of(self, network: nn.ModuleDict) -> DINOHead:
        return network["ibot_head"] if self.config.ibot_separate_head else network["dino_head"]

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialises the student (DINOv2's scheme), copies it into the teacher, zeroes the
        centers: after building on the meta device and `to_empty`."""
        self.student["backbone"].init_weights()
        for name, module in self.student.items():
            if name != "backbone":
                module.reset_parameters()
        self.teacher.load_state_dict(self.student.state_dict())
        for name in ("dino_center", "ibot_center"):
            center = getattr(self, name, None)
            if center is not None:
                center.center.zero_()

    def train(self, mode: bool = True) -> "DINOv2Model":
        """The student follows `mode`; the teacher stays in eval mode (no stochastic depth), as
        SSLMetaArch.train keeps it."""
        super().train(mode)
        self.teacher.eval()
        return self

    # --- schedules and the trainer's hooks ----------------------------------------------------

    def teacher_pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        """(teacher, student) backbone (with its mask token) and heads, as the official
        update_teacher."""
        return ((self.teacher[name], self.student[name]) for name in self.student)

    def momentum(self, step: int, total_steps: int) -> float:
        """The official cosine schedule from momentum_teacher (step 0) to final_momentum_teacher
        (step total_steps and after): final + (base - final) (1 + cos(pi step / total)) / 2."""
        base, final = self.config.momentum_teacher, self.config.final_momentum_teacher
        progress = min(max(step, 0) / max(total_steps, 1), 1.0)
        return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))

    def teacher_temp(self, epoch: float) -> float:
        """tau_t at a (fractional) epoch: warmup_teacher_temp -> teacher_temp linearly over
        warmup_teacher_temp_epochs, then teacher_temp."""
        config = self.config
        if epoch >= config.warmup_teacher_temp_epochs:
            return config.teacher_temp
        progress = max(epoch, 0.0) / config.warmup_teacher_temp_epochs
        return config.warmup_teacher_temp + progress * (
            config.teacher_temp - config.warmup_teacher_temp
        )

    def set_epoch(self, epoch: float) -> None:
        """Where training is, in (fractional) epochs: step / steps_per_epoch. It sets the teacher
        temperature forward uses and whether the last layers are frozen."""
        self.epoch = float(epoch)

    @property
    def last_layer_frozen(self) -> bool:
        """True during the first freeze_last_layer_epochs epochs (see set_epoch)."""
        return self.epoch < self.config.freeze_last_layer_epochs

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The student heads' prototypes (official parameter names containing "last_layer")."""
        return [
            module.last_layer.weight_v
            for name, module in self.student.items()
            if name != "backbone"
        ]

    def cancel_last_layer_gradients(self) -> bool:
        """Drops the gradients of the last layers while they are frozen; call after the backward
        (and gradient clipping), before the optimizer step. Returns whether it dropped them."""
        frozen = self.last_layer_frozen
        if frozen:
            for parameter in self.last_layer_parameters():
                parameter.grad = None
        return frozen

    def crop_shapes(self, batch_size: int) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
        """The shapes of one step's inputs under this config: the global crops (2, B, C, H, W)
        and each local crop (B, C, h, w)."""
        config = self.config
        channels, size, local = config.in_chans, config.img_size, config.local_crop_size
        return (2, batch_size, channels, size, size), [
            (batch_size, channels, local, local)
        ] * config.local_crops_number

    @property
    def encoder(self) -> VisionTransformer:
        """The backbone that `encode` evaluates (the teacher's by default): the seed's
        `model.encoder`, e.g. to freeze or unfreeze it for a linear probe or fine-tuning."""
        network = self.teacher if self.config.encode_with == "teacher" else self.student
        return network["backbone"]

    def encode(self, x: Tensor) -> Tensor:
        """The evaluation features (B, D), or (B, 2D) for pool="cls+mean": the teacher's (or,
        with encode_with="student", the student's) cls token after the final LayerNorm (DINOv2's
        x_norm_clstoken), the mean of its patch tokens, or both."""
        return pooled(self.encoder.forward_features(x), self.config.pool)

    # --- one training step --------------------------------------------------------------------

    def forward(
        self,
        global_crops: Tensor | Sequence[Tensor],
        local_crops: Tensor | Sequence[Tensor] | None = None,
        masks: BlockMask | Tensor | None = None,
        *,
        teacher_temp: float | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """DINOv2's loss of one batch (see the module docstring).

        Args:
            global_crops: (2, B, C, H, W) or a list of two (B, C, H, W); or, in the seed's
                two-view form `model(view1, view2)`, one (B, C, H, W) view here and the other in
                local_crops (no local crops then).
            local_crops: a list of (B, C, h, w) (or a (n, B, C, h, w) tensor); None for none.
            masks: the iBOT masks of the 2B global crops, crop 0's images first: a BlockMask or
                a (2B, L) bool tensor (e.g. from the data loader); None draws them here with
                masking.block_mask (torch's default CPU generator).
            teacher_temp: tau_t; default teacher_temp(epoch) of the last set_epoch.

        Returns:
            (loss, metrics): metrics hold the detached parts "dino", "ibot", "koleo" (before
            their weights), "teacher_entropy" (mean entropy of the teacher's cls
            probabilities), "center_norm" (with centering), "masked_patches" and
            "embedding_std" (of the student's global cls tokens).
        """
        config = self.config
        views, locals_ = _split_crops(global_crops, local_crops)
        global_batch = torch.cat(views)  # (2B, C, H, W), crop 0's images first
        tau_t = self.teacher_temp(self.epoch) if teacher_temp is None else float(teacher_temp)
        masked = self._ibot_masks(masks, global_batch) if config.ibot_loss_weight > 0 else None

        teacher_cls, teacher_patch, teacher_metrics = self._teacher_targets(
            global_batch, masked, tau_t
        )

        backbone = self.student["backbone"]
        tokens = backbone.forward_packed(
            [global_batch, *locals_],
            [None if masked is None else masked.mask] + [None] * len(locals_),
        )
        prefix = backbone.num_prefix_tokens
        global_cls = tokens[0][:, 0]  # (2B, D)
        local_cls = [t[:, 0] for t in tokens[1:]]  # n x (B, D)
        patch_rows = None
        if masked is not None and masked.count:
            patches = tokens[0][:, prefix:].flatten(0, 1)  # (2B * L, D)
            patch_rows = patches.index_select(0, masked.rows)  # (n_masked, D)

        dino_features, ibot_features = self._student_bottlenecks(global_cls, local_cls, patch_rows)
        zero = global_cls.sum() * 0.0
        dino = zero
        if config.dino_loss_weight > 0:
            weight = self.student["dino_head"].prototypes
            dino = ops.dino_prototype_loss(
                [*dino_features[0].chunk(2), *dino_features[1:]],
                weight,
                list(teacher_cls.chunk(2)),
                config.student_temp,
            )
        ibot = zero
        if ibot_features is not None:
            # iBOT's per-image weights go into the targets (the loss is linear in them), and
            # prototype_cross_entropy's mean over the n_masked rows becomes a sum over 2B images.
            targets = teacher_patch * masked.weights.unsqueeze(-1)
            weight = self._ibot_head_of(self.student).prototypes
            ibot = ops.prototype_cross_entropy(
                ibot_features, weight, targets, config.student_temp
            ) * (masked.count / global_batch.shape[0])
        koleo = zero
        if config.koleo_loss_weight > 0:
            koleo = sum(ops.koleo_loss(cls, gather=config.gather) for cls in global_cls.chunk(2))

        loss = (
            config.dino_loss_weight * dino
            + config.ibot_loss_weight * ibot
            + config.koleo_loss_weight * koleo
        )
        metrics = {
            "dino": dino.detach(),
            "ibot": ibot.detach(),
            "koleo": koleo.detach(),
            **teacher_metrics,
            "masked_patches": global_cls.new_tensor(0 if masked is None else masked.count),
            "embedding_std": embedding_std(global_cls),
        }
        return loss, metrics

    def _ibot_masks(self, masks: BlockMask | Tensor | None, global_batch: Tensor) -> _MaskedRows:
        """The masks of the global crops, their masked rows and per-row iBOT weights."""
        images = global_batch.shape[0]
        grid = self.student["backbone"].grid_of(global_batch)
        length = grid[0] * grid[1]
        if masks is None:
            masks = block_mask(
                images,
                grid,
                masked_fraction=self.config.mask_probability,
                ratio_range=self.config.mask_ratio_range,
            )
        mask = masks.mask if isinstance(masks, BlockMask) else masks
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(
                f"masks must be a BlockMask or a bool tensor, got {type(masks).__name__}"
            )
        if tuple(mask.shape) != (images, length):
            raise ValueError(
                f"masks has shape {tuple(mask.shape)}; the {images} global crops (2 x batch) of "
                f"{length} patches each need ({images}, {length})"
            )
        # Index arithmetic where the mask lives: on the host for a CPU mask (drawn here or by a
        # data loader), so the device only receives the indices.
        rows = mask.flatten().nonzero().squeeze(1)
        weights = 1.0 / mask.sum(dim=1).clamp(min=1).float()
        device = global_batch.device
        return _MaskedRows(
            mask=mask.to(device, non_blocking=True),
            rows=rows.to(device, non_blocking=True),
            weights=weights[rows // length].to(device, non_blocking=True),
        )

    @torch.no_grad()
    def _teacher_targets(
        self, global_batch: Tensor, masked: _MaskedRows | None, temperature: float
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """The teacher's probabilities: (2B, K) for the cls tokens, (n_masked, K') for the masked
        patch tokens (None without iBOT rows), and the teacher's metrics."""
        teacher = self.teacher
        features = teacher["backbone"].forward_features(global_batch)
        cls = features.cls  # (2B, D)
        patch_rows = None
        if masked is not None and masked.count:
            patch_rows = features.patch_tokens.flatten(0, 1).index_select(0, masked.rows)
        if patch_rows is not None and not self.config.ibot_separate_head:
            # One head call over cls and masked patch tokens (the official shared-head path).
            logits = teacher["dino_head"](torch.cat([cls, patch_rows]))
            cls_logits, patch_logits = logits.split([cls.shape[0], patch_rows.shape[0]])
        else:
            cls_logits = teacher["dino_head"](cls)
            patch_logits = None if patch_rows is None else teacher["ibot_head"](patch_rows)

        metrics = {}
        if self.config.centering == "centering":
            cls_probs = self.dino_center.softmax_center(cls_logits, temperature)
            self.dino_center.update(cls_logits)
            patch_probs = None
            if patch_logits is not None:
                patch_probs = self.ibot_center.softmax_center(patch_logits, temperature)
                self.ibot_center.update(patch_logits)
            metrics["center_norm"] = self.dino_center.center.norm()
        else:
            iterations, gather = self.config.sinkhorn_iterations, self.config.gather
            cls_probs = ops.sinkhorn_knopp(cls_logits, temperature, iterations, gather=gather)
            patch_probs = None
            if patch_logits is not None:
                patch_probs = ops.sinkhorn_knopp(
                    patch_logits, temperature, iterations, gather=gather
                )
        metrics["teacher_entropy"] = torch.special.entr(cls_probs).sum(dim=-1).mean()
        return cls_probs, patch_probs, metrics

    def _student_bottlenecks(
        self, global_cls: Tensor, local_cls: list[Tensor], patch_rows: Tensor | None
    ) -> tuple[list[Tensor], Tensor | None]:
        """The student heads' MLP outputs: [global (2B, D'), local_1 (B, D'), ...] for DINO, and
        (n_masked, D'') for iBOT. With a shared head one MLP call takes every row, as the
        official runs one head call over them."""
        head = self.student["dino_head"]
        pieces = [global_cls, *local_cls]
        if patch_rows is not None and not self.config.ibot_separate_head:
            pieces.append(patch_rows)
        outputs = list(head.bottleneck(torch.cat(pieces)).split([p.shape[0] for p in pieces]))
        if patch_rows is None:
            return outputs, None
        if self.config.ibot_separate_head:
            return outputs, self.student["ibot_head"].bottleneck(patch_rows)
        return outputs[:-1], outputs[-1]


def _split_crops(
    global_crops: Tensor | Sequence[Tensor], local_crops: Tensor | Sequence[Tensor] | None
) -> tuple[list[Tensor], list[Tensor]]:
    """The two global views and the local crops from forward's accepted forms."""
    if isinstance(global_crops, Tensor) and global_crops.dim() == 4:
        if not (isinstance(local_crops, Tensor) and local_crops.shape == global_crops.shape):
            raise ValueError(
                "model(view1, view2) needs two (B, C, H, W) views of one shape; got "
                f"{tuple(global_crops.shape)} and "
                f"{tuple(local_crops.shape) if isinstance(local_crops, Tensor) else local_crops!r}"
            )
        return [global_crops, local_crops], []
    if isinstance(global_crops, Tensor):
        views = list(global_crops.unbind(0)) if global_crops.dim() == 5 else []
    else:
        views = list(global_crops)
    if len(views) != 2 or any(not isinstance(v, Tensor) or v.dim() != 4 for v in views):
        raise ValueError(
            "global_crops must be (2, B, C, H, W) or a list of two (B, C, H, W) tensors, got "
            f"{_describe(global_crops)}"
        )
    if views[0].shape != views[1].shape:
        raise ValueError(
            f"the global crops differ in shape: {tuple(views[0].shape)} and {tuple(views[1].shape)}"
        )
    if local_crops is None:
        locals_ = []
    elif isinstance(local_crops, Tensor) and local_crops.dim() == 5:
        locals_ = list(local_crops.unbind(0))
    elif isinstance(local_crops, (list, tuple)):
        locals_ = list(local_crops)
    else:
        raise ValueError(
            "local_crops must be a list of (B, C, h, w) tensors or a (n, B, C, h, w) tensor, got "
            f"{_describe(local_crops)}"
        )
    batch, channels = views[0].shape[:2]
    for i, crop in enumerate(locals_):
        if (
            not isinstance(crop, Tensor)
            or crop.dim() != 4
            or tuple(crop.shape[:2])
            != (
                batch,
                channels,
            )
        ):
            raise ValueError(
                f"local_crops[{i}] is {_describe(crop)}; every local crop holds the batch's "
                f"{batch} images with {channels} channels: ({batch}, {channels}, h, w)"
            )
    return views, locals_


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    return type(value).__name__


__all__ = ["OFFICIAL_SIZES", "DINOv2Backbone", "DINOv2Config", "DINOv2Model"]
