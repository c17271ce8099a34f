"""data2vec 2.0 for images (Baevski et al., 2022; fairseq examples/data2vec/models/data2vec2.py,
modalities/images.py, modalities/modules.py; config v2/base_images_only_task.yaml).

    targets = layer_norm(mean_k instance_norm(FFN_k(teacher(image))))   # top-K blocks, once
    for each of M clones of an image, with its own inverse block mask:
        x = student(visible patches of the clone)                       # cls token in front
        pred = conv_decoder(x at kept positions, N(0, 0.01) noise at masked ones)
    loss = mean over masked tokens of |pred - target|^2 / sqrt(D)
           + cls_loss * sum over clones of |x_cls - mean_l target|^2 / sqrt(D)
    teacher <- EMA of the student, momentum 0.9998 -> 0.99999 linearly over 100k updates

The teacher encodes each image once and its targets serve all M clones by index
(nexus_fast.ops.data2vec_targets, ops.data2vec_loss); the student embeds each image's patches
once and gathers every clone's visible tokens from them (ops.gather_tokens), where the official
code clones the embedded batch M times before masking.

Deviations from the official code (and why):
- Pre-norm blocks with a final LayerNorm (nexus_fast's ViT, timm's layout) where the official
  image model uses post-norm blocks (`layer_norm_first=False`: a LayerNorm on the embedded
  tokens, then x = norm1(x + attn(x)); x = norm2(x + ffn(x)), no final norm). The parameter
  count is the same (one extra LayerNorm either way); the FFN outputs taken as targets are the
  MLP's output before its residual in both. The ViT layers do not offer the post-norm order.
- The cls term, as the official criterion has it: a sum over the B*M clone rows of a device
  (fairseq multiplies it by the masked-token count that the criterion then divides by), while
  the patch term is a mean over masked tokens; nexus_fast.ops.data2vec_loss does the same.
- The masks come from nexus_fast.masking.inverse_block_mask (the official algorithm, with the
  per-row correction done on the whole batch at once).
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import ops
from ...config import require
from ...eval.collapse import embedding_std
from ...masking import MaskedIndices, inverse_block_mask
from ..vit import VisionTransformer
from ._base import EncoderConfig, SSLModel, frozen_copy
from ._decoders import ConvDecoder2d


@dataclass
class Data2VecConfig(EncoderConfig):
    """data2vec 2.0's config (official defaults: ViT-B/16, base_images_only_task.yaml; the
    official names in brackets).

    Attributes:
        mask_ratio: masked fraction per clone [mask_prob] (0.8 for B, 0.75 for L and H).
        mask_block_size: side of the kept square blocks [mask_length].
        mask_adjust: extra kept fraction for the blocks [mask_prob_adjust] (0.07 B, 0.1 L/H).
        clone_batch: masks (clones) per image, M.
        average_top_k_layers: K, the teacher blocks whose FFN outputs make the targets.
        decoder_dim: width of the convolutional decoder.
        decoder_layers: its convolution blocks (6 for B, 3 for L and H).
        decoder_kernel: odd kernel size (3 for B, 5 for L and H).
        decoder_groups: groups of every convolution.
        mask_noise_std: std of the noise at masked positions of the decoder's input.
        cls_loss: weight of the cls-token regression per clone row.
        ema_decay, ema_end_decay: the teacher momentum at the start and after the anneal.
        ema_anneal_end_step: updates over which the momentum rises linearly, then stays;
            None: over the whole training (the `total_steps` given to `momentum`).
    """

    mask_ratio: float = 0.8
    mask_block_size: int = 3
    mask_adjust: float = 0.07
    clone_batch: int = 16
    average_top_k_layers: int = 10
    decoder_dim: int = 768
    decoder_layers: int = 6
    decoder_kernel: int = 3
    decoder_groups: int = 16
    mask_noise_std: float = 0.01
    cls_loss: float = 0.01
    ema_decay: float = 0.9998
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int | None = 100_000

    def validate(self) -> None:
        super().validate()
        depth, _ = self._encoder_shape()
        require(0.0 <= self.mask_ratio < 1.0, "mask_ratio", self.mask_ratio, "in [0, 1)")
        num_patches = self.encoder_config().num_patches
        require(
            int(num_patches * (1 - self.mask_ratio)) >= 1,
            "mask_ratio",
            self.mask_ratio,
            f"a ratio that keeps at least one of the {num_patches} patches",
        )
        require(self.mask_block_size >= 1, "mask_block_size", self.mask_block_size, ">= 1")
        require(0.0 <= self.mask_adjust < 1.0, "mask_adjust", self.mask_adjust, "in [0, 1)")
        require(self.clone_batch >= 1, "clone_batch", self.clone_batch, ">= 1")
        require(
            1 <= self.average_top_k_layers <= depth,
            "average_top_k_layers",
            self.average_top_k_layers,
            f"in [1, {depth}] (the encoder's depth)",
        )
        require(self.decoder_dim > 0, "decoder_dim", self.decoder_dim, "a positive integer")
        require(self.decoder_layers >= 1, "decoder_layers", self.decoder_layers, ">= 1")
        require(
            self.decoder_kernel > 0 and self.decoder_kernel % 2 == 1,
            "decoder_kernel",
            self.decoder_kernel,
            "a positive odd integer",
        )
        require(
            self.decoder_groups > 0
            and self.encoder_dim % self.decoder_groups == 0
            and self.decoder_dim % self.decoder_groups == 0,
            "decoder_groups",
            self.decoder_groups,
            f"a positive divisor of encoder_dim {self.encoder_dim} and decoder_dim "
            f"{self.decoder_dim}",
        )
        require(self.mask_noise_std >= 0, "mask_noise_std", self.mask_noise_std, ">= 0")
        require(self.cls_loss >= 0, "cls_loss", self.cls_loss, ">= 0")
        for key in ("ema_decay", "ema_end_decay"):
            require(0.0 <= getattr(self, key) <= 1.0, key, getattr(self, key), "in [0, 1]")
        require(
            self.ema_anneal_end_step is None or self.ema_anneal_end_step > 0,
            "ema_anneal_end_step",
            self.ema_anneal_end_step,
            "a positive number of updates, or None (the whole training)",
        )

    def encoder_config(self, **overrides):
        return super().encoder_config(cls_token=True, **overrides)


class Data2VecModel(SSLModel):
    """`loss, metrics = model(images)`; `model.encode(images)` gives (B, D) features.

    Modules: `encoder` (the student ViT, trained by the optimizer), `decoder` (ConvDecoder2d),
    `teacher` (an EMA copy of the whole student encoder, never trained; update it after each
    optimizer step with `model.update_teacher(model.momentum(step, total_steps))`).
    """

    config_class = Data2VecConfig
    tiny_preset: ClassVar[dict] = {
        **SSLModel.tiny_preset,
        "decoder_dim": 64,
        "decoder_layers": 2,
        "clone_batch": 2,
        "average_top_k_layers": 2,
    }

    def __init__(
        self,
        config: Data2VecConfig | dict | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        """Builds the model from a config (a dict or Data2VecConfig); device="meta" builds it
        without memory and uninitialised (then `to_empty(device=...)` and `init_weights()`)."""
        super().__init__(config)
        config = self.config
        self.encoder = VisionTransformer(config.encoder_config(), device=device)
        self.decoder = ConvDecoder2d(
            config.encoder_dim,
            config.decoder_dim,
            config.decoder_layers,
            config.decoder_kernel,
            config.decoder_groups,
            grad_checkpointing=config.grad_checkpointing,
            device=device,
        )
        if device is None or torch.device(device).type != "meta":
            self._init_cls_token()
        self.teacher = frozen_copy(self.encoder).eval()

    def init_weights(self) -> None:
        """Initialises every parameter as the official code, the teacher a copy of the student
        (e.g. after building on the meta device and `to_empty`)."""
        self.encoder.init_weights()
        self._init_cls_token()
        for module in self.decoder.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.reset_parameters()  # the official decoder keeps PyTorch's defaults
        with torch.no_grad():
            for teacher, student in zip(self.teacher.parameters(), self.encoder.parameters()):
                teacher.copy_(student)

    def _init_cls_token(self) -> None:
        # The official extra (cls) token starts N(0, 1) (init_extra_token_zero=False).
        nn.init.normal_(self.encoder.cls_token)

    def train(self, mode: bool = True) -> "Data2VecModel":
        """The teacher always runs in eval mode (no stochastic depth), as the official."""
        super().train(mode)
        self.teacher.eval()
        return self

    def encode(self, images: Tensor) -> Tensor:
        """(B, D): the mean of the student's normalised patch tokens over all patches.

        The student, because it is what the official code keeps: fine-tuning and linear probes
        start from the student (`remove_pretraining_modules` drops the EMA teacher) and pool
        the patch tokens without the cls token.
        """
        return self.encoder.forward_features(images).patch_tokens.mean(dim=1)

    # --- the EMA teacher ----------------------------------------------------------------------

    def teacher_pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        yield self.teacher, self.encoder

    def momentum(self, step: int, total_steps: int) -> float:
        """ema_decay + (ema_end_decay - ema_decay) * step / anneal_steps, then ema_end_decay
        from anneal_steps on (fairseq's get_annealed_rate; `step` counts the updates done)."""
        config = self.config
        anneal_steps = config.ema_anneal_end_step or total_steps
        if step >= anneal_steps:
            return config.ema_end_decay
        return config.ema_decay + (config.ema_end_decay - config.ema_decay) * step / anneal_steps

    # --- one training step --------------------------------------------------------------------

    @torch.no_grad()
    def targets(self, images: Tensor) -> Tensor:
        """(B, L, D) float32: the teacher's FFN outputs of its top K blocks on the full images,
        each instance-normalised over the patch tokens, averaged, then layer-normed."""
        features = self.teacher.forward_features(images, collect="ffn")
        prefix = features.num_prefix_tokens
        top_k = features.layers[-self.config.average_top_k_layers :]
        return ops.data2vec_targets([layer[:, prefix:] for layer in top_k])

    def encode_clones(self, images: Tensor, masks: MaskedIndices) -> Tensor:
        """The student's normalised tokens (B*M, prefix + K, D) of the visible patches of every
        clone; row b*M + m is clone m of image b."""
        encoder = self.encoder
        batch, rows = images.shape[0], masks.ids_keep.shape[0]
        tokens = encoder.embed(images)  # (B, prefix + L, D), positions added
        prefix = encoder.num_prefix_tokens
        patches = tokens[:, prefix:]
        length, dim = patches.shape[1:]
        # Each clone reads its image's rows of the (B*L, D) table: no M-fold copy of the batch.
        image_of_row = torch.arange(rows, device=images.device) // (rows // batch)
        ids = masks.ids_keep + (image_of_row * length)[:, None]  # (B*M, K)
        visible = ops.gather_tokens(patches.reshape(1, batch * length, dim), ids)
        # The prefix (cls + registers, with their positions) is the same for every image.
        x = torch.cat([tokens[:1, :prefix].expand(rows, -1, -1), visible], dim=1)
        prenorm, _ = encoder.run_blocks(x)
        return encoder.norm(prenorm)

    def decoder_input(self, kept: Tensor, masks: MaskedIndices) -> Tensor:
        """(B*M, L, D): the kept tokens at their positions, N(0, mask_noise_std) noise at the
        masked ones (the official fills masked positions with noise, not a learned token)."""
        filled = ops.scatter_tokens(kept, masks.ids_restore, kept.new_zeros(kept.shape[-1]))
        noise = torch.randn_like(filled) * self.config.mask_noise_std
        return torch.where(masks.mask.unsqueeze(-1), noise, filled)

    def forward(
        self, images: Tensor, *, masks: MaskedIndices | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One data2vec 2.0 step.

        Args:
            images: (B, C, H, W).
            masks: B*M precomputed masks (inverse_block_mask with num_clones=M, clone-major);
                drawn here from torch's default generator when None.

        Returns:
            loss (0-dim float32) and metrics (detached): "regression" and "cls", the two parts
            of the loss; "pred_var" and "target_var", the official collapse checks (mean over
            channels of the std of the predictions at masked positions and of the targets);
            "embedding_std" of the student's mean visible token per clone.
        """
        config = self.config
        batch, clones = images.shape[0], config.clone_batch
        grid = self.encoder.grid_of(images)
        if len(grid) != 2:
            raise ValueError(f"Data2VecModel takes images (B, C, H, W), got {tuple(images.shape)}")
        targets = self.targets(images)  # (B, L, D), the teacher runs once per image
        if masks is None:
            masks = inverse_block_mask(
                batch,
                grid,
                mask_ratio=config.mask_ratio,
                num_clones=clones,
                block_size=config.mask_block_size,
                adjust=config.mask_adjust,
                device=images.device,
            )
        if masks.mask.shape[0] != batch * clones:
            raise ValueError(
                f"masks must hold B * clone_batch = {batch * clones} rows, got "
                f"{masks.mask.shape[0]}"
            )
        x = self.encode_clones(images, masks)  # (B*M, prefix + K, D)
        prefix = self.encoder.num_prefix_tokens
        pred = self.decoder(self.decoder_input(x[:, prefix:], masks), grid)  # (B*M, L, D)
        cls_pred = x[:, 0]
        loss = ops.data2vec_loss(
            pred, targets, masks.mask, clones, cls_pred=cls_pred, cls_weight=config.cls_loss
        )
        return loss, self._metrics(loss, pred, targets, masks.mask, cls_pred, x[:, prefix:])

    @torch.no_grad()
    def _metrics(
        self,
        loss: Tensor,
        pred: Tensor,
        targets: Tensor,
        mask: Tensor,
        cls_pred: Tensor,
        visible: Tensor,
    ) -> dict[str, Tensor]:
        config = self.config
        dim = targets.shape[-1]
        cls_target = targets.mean(dim=1).repeat_interleave(config.clone_batch, dim=0)
        cls_errors = F.mse_loss(cls_pred.float(), cls_target, reduction="none").sum(dim=-1)
        cls_term = config.cls_loss * cls_errors.sum() / dim**0.5
        return {
            "regression": loss.detach() - cls_term,
            "cls": cls_term,
            "pred_var": _channel_std(pred, mask),
            "target_var": _channel_std(targets),
            "embedding_std": embedding_std(visible.mean(dim=1)),
        }


def _channel_std(values: Tensor, mask: Tensor | None = None) -> Tensor:
    """fairseq's compute_var: the mean over channels of sqrt(var + 1e-6), the variance taken
    over the tokens of (R, L, D) values (only those where mask is True). Weighted sums instead
    of `values[mask]`, whose size a GPU would have to report to the host."""
    values = values.float()
    weights = values.new_ones(values.shape[:2]) if mask is None else mask.float()
    weights = weights.unsqueeze(-1)
    count = weights.sum()
    mean = (values * weights).sum(dim=(0, 1)) / count
    var = ((values - mean).square() * weights).sum(dim=(0, 1)) / (count - 1)
    return torch.sqrt(var + 1e-6).mean()
