"""VICReg (Bardes et al., 2022; facebookresearch/vicreg main_vicreg.py): two augmented views
through one encoder and a BatchNorm MLP expander; invariance (MSE between the views), variance
(a hinge on each dimension's std) and covariance (off-diagonal covariances to zero).

    loss = 25 * MSE(x, y) + 25 * (mean relu(1 - std_x) + mean relu(1 - std_y)) / 2
           + 1 * (sum offdiag(cov_x)^2 + sum offdiag(cov_y)^2) / D

The loss runs through nexus_fast.ops.vicreg_loss: the covariance term through N x N Gram matrices
when cheaper, and with `gather` over the global batch under torch.distributed.
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
class VICRegConfig(EncoderConfig):
    expander_dims: tuple[int, int, int] = (8192, 8192, 8192)
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    pool: Literal["cls", "mean"] = "cls"
    gather: bool = True

    def validate(self) -> None:
        super().validate()
        for key in ("sim_coeff", "std_coeff", "cov_coeff"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)} is not allowed: >= 0")
        if min(self.expander_dims) <= 0:
            raise ValueError(f"expander_dims={self.expander_dims} is not allowed: positive")


class VICRegModel(SSLModel):
    """`loss, metrics = model(view1, view2)`; metrics hold the three parts and the std."""

    config_class = VICRegConfig
    tiny_preset: ClassVar[dict] = {**SSLModel.tiny_preset, "expander_dims": (128, 128, 128)}

    def __init__(self, config: VICRegConfig | dict | None = None) -> None:
        super().__init__(config)
        self.encoder = VisionTransformer(self.config.encoder_config())
        self.expander = projector(self.config.encoder_dim, self.config.expander_dims, True)

    def encode(self, x: Tensor) -> Tensor:
        return pooled(self.encoder.forward_features(x), self.config.pool)

    def forward(self, view1: Tensor, view2: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x = self.expander(self.encode(view1))
        y = self.expander(self.encode(view2))
        config = self.config
        loss, parts = ops.vicreg_loss(
            x, y, config.sim_coeff, config.std_coeff, config.cov_coeff, gather=config.gather
        )
        return loss, {**parts, "embedding_std": embedding_std(x)}
