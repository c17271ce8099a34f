"""The fused operators of nexus_fast: thin public wrappers that choose a backend per call.

Every operator has a plain-PyTorch reference (nexus_fast.ops.reference) and, where it pays,
compiled kernels (C++ CPU, CUDA C++, Triton). `nexus-fast info` shows which backends run here.
"""

from ._dispatch import BACKEND_ENV, OPERATORS, Backend, BackendError, Operator
from .attention import attention
from .ema import ema_update_
from .masked_patch_loss import masked_patch_loss
from .patches import gather_patches, patchify, unpatchify
from .redundancy import barlow_twins_loss, vicreg_loss
from .regression import data2vec_loss, data2vec_targets, jepa_loss
from .tokens import gather_tokens, scatter_tokens

__all__ = [
    "BACKEND_ENV",
    "OPERATORS",
    "Backend",
    "BackendError",
    "Operator",
    "attention",
    "barlow_twins_loss",
    "data2vec_loss",
    "data2vec_targets",
    "ema_update_",
    "gather_patches",
    "gather_tokens",
    "jepa_loss",
    "masked_patch_loss",
    "patchify",
    "scatter_tokens",
    "unpatchify",
    "vicreg_loss",
]
