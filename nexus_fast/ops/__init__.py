"""The fused operators of nexus_fast: thin public wrappers that choose a backend per call.

Every operator has a plain-PyTorch reference (nexus_fast.ops.reference) and, where it pays,
compiled kernels (C++ CPU, CUDA C++, Triton). `nexus-fast info` shows which backends run here.
"""

from ._dispatch import BACKEND_ENV, OPERATORS, Backend, BackendError, Operator
from .attention import attention
from .dino import DINOCenter, dino_loss, dino_prototype_loss, ibot_patch_loss
from .ema import ema_update_
from .koleo import koleo_loss
from .masked_patch_loss import masked_patch_loss
from .patches import gather_patches, patchify, unpatchify
from .prototype_loss import prototype_cross_entropy
from .redundancy import barlow_twins_loss, vicreg_loss
from .regression import data2vec_loss, data2vec_targets, jepa_loss
from .sinkhorn import sinkhorn_knopp
from .tokens import gather_tokens, scatter_tokens

__all__ = [
    "BACKEND_ENV",
    "OPERATORS",
    "Backend",
    "BackendError",
    "DINOCenter",
    "Operator",
    "attention",
    "barlow_twins_loss",
    "data2vec_loss",
    "data2vec_targets",
    "dino_loss",
    "dino_prototype_loss",
    "ema_update_",
    "gather_patches",
    "gather_tokens",
    "ibot_patch_loss",
    "jepa_loss",
    "koleo_loss",
    "masked_patch_loss",
    "patchify",
    "prototype_cross_entropy",
    "scatter_tokens",
    "sinkhorn_knopp",
    "unpatchify",
    "vicreg_loss",
]
