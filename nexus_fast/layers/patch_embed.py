"""Patch embedding for images (2D) and video tubelets (3D), applied to gathered patches.

The weight is kept as the convolution weight timm and the official repositories store
(`proj.weight`, (D, C, p, p) or (D, C, t, p, p)). On gathered patches (nexus_fast.ops
.gather_patches, elements in (t, p, q, C) order) it runs as one linear layer with the weight
permuted to that order, which equals the convolution on those patches (DESIGN.md, "Patch order");
on a whole image or clip the convolution itself runs.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops


class PatchEmbed(nn.Module):
    def __init__(
        self,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        tubelet: int = 1,
        video: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.patch_size, self.tubelet, self.video = patch_size, tubelet, video
        if video:
            kernel = (tubelet, patch_size, patch_size)
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel, kernel, device=device, dtype=dtype)
        else:
            self.proj = nn.Conv2d(
                in_chans, embed_dim, patch_size, patch_size, device=device, dtype=dtype
            )

    def linear_weight(self) -> Tensor:
        """The conv weight as a (D, t*p*p*C) matrix in the (t, p, q, C) patch order."""
        weight = self.proj.weight
        order = (0, 2, 3, 4, 1) if self.video else (0, 2, 3, 1)
        return weight.permute(*order).reshape(weight.shape[0], -1)

    def forward(self, x: Tensor, ids: Tensor | None = None) -> Tensor:
        """Embeds the patches `ids` (B, K) of x, or every patch when ids is None: (B, K or L, D)."""
        if ids is None:
            return self.proj(x).flatten(2).transpose(1, 2)
        patches = ops.gather_patches(x, self.patch_size, ids, self.tubelet)
        return F.linear(patches, self.linear_weight().to(patches.dtype), self.proj.bias)
