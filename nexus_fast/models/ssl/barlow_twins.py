"""Barlow Twins (Zbontar et al., 2021; facebookresearch/barlowtwins main.py): two augmented views
through one encoder and a BatchNorm MLP projector; the cross-correlation of the standardised
projections pushed to the identity.

    z1, z2 = projector(encoder(view1)), projector(encoder(view2))
    loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2,   C = z1n^T z2n / N

The loss runs through nexus_fast.ops.barlow_twins_loss: no D x D matrix (8192 x 8192 is 256 MiB),
and with `gather` the exact global-batch gradient under torch.distributed.
"""

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from ... import ops
from ...eval.collapse import embedding_std
from ..vit import VisionTransformer
from ._base import EncoderConfig, SSLModel
from ._heads import pooled, projector


@dataclass
class BarlowTwinsConfig(EncoderConfig):
    projector_dims: tuple[int, int, int] = (8192, 8192, 8192)
    lambd: float = 0.0051  # official; lightly and solo-learn use 5e-3
    pool: Literal["cls", "mean"] = "cls"
    gather: bool = True  # the global batch under torch.distributed (a no-op otherwise)

    def validate(self) -> None:
        super().validate()
        if self.lambd < 0:
            raise ValueError(f"lambd={self.lambd} is not allowed: >= 0")
        if min(self.projector_dims) <= 0:
            raise ValueError(f"projector_dims={self.projector_dims} is not allowed: positive")


class BarlowTwinsModel(SSLModel):
    """`loss, metrics = model(view1, view2)`; `model.encode(images)` gives the encoder features."""

    config_class = BarlowTwinsConfig
    tiny_preset: ClassVar[dict] = {**SSLModel.tiny_preset, "projector_dims": (128, 128, 128)}

    def __init__(self, config: BarlowTwinsConfig | dict | None = None) -> None:
        super().__init__(config)
        self.encoder = VisionTransformer(self.config.encoder_config())
        self.projector = projector(self.config.encoder_dim, self.config.projector_dims, False)

    def encode(self, x: Tensor) -> Tensor:
        return pooled(self.encoder.forward_features(x), self.config.pool)

    def forward(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z1 = self.projector(self.encode(view1))
        z2 = self.projector(self.encode(view2))
        loss = ops.barlow_twins_loss(z1, z2, self.config.lambd, gather=self.config.gather)
        return loss, {"barlow_twins": loss.detach(), "embedding_std": embedding_std(z1)}
