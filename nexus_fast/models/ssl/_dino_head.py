"""DINOv2's projection head (dinov2/layers/dino_head.py `DINOHead`), used for the image-level
(DINO) and, shared or separate, the patch-level (iBOT) loss:

    bottleneck = mlp(x)                       Linear -> GELU -> Linear -> GELU -> Linear
    logits = normalize(bottleneck) @ normalize(weight_v)^T          (rows, K): cosines

The last layer is a weight-normalised Linear without bias whose magnitude g is fixed to 1, so
each logit is the cosine between a bottleneck vector and a prototype. The student never forms
its logits: its losses (nexus_fast.ops.dino_prototype_loss, prototype_cross_entropy) take
`bottleneck(x)` and `last_layer.weight_v` and fuse the last layer into the cross-entropy chunk by
chunk, so no rows x K tensor is kept for the backward. The teacher calls the head for its
logits, which its centering or Sinkhorn-Knopp needs whole.

Deviation from the official head: DINOv2's `weight_g` is an ordinary parameter (initialised to
1, then trained and weight-decayed with the last layer; DINO v1 froze it with
norm_last_layer=True). Here g is 1 for good: the logits stay cosines, so |logit / tau| <= 1 / tau
and the fused kernels' single-pass exponential sums are safe in float32 (PERF.md). The state dict
keeps the official `last_layer.weight_v`; an official `last_layer.weight_g` is accepted when it is
all ones (as at initialisation) and refused otherwise, since a learned g cannot be represented.
"""

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_


def normalize_rows(x: Tensor) -> Tensor:
    """L2-normalised rows with DINOHead's eps (1e-6 for float16, whose 1e-12 would underflow)."""
    eps = 1e-6 if x.dtype == torch.float16 else 1e-12
    return F.normalize(x, dim=-1, p=2, eps=eps)


class PrototypeLayer(nn.Module):
    """weight_norm(Linear(bottleneck_dim, prototypes, bias=False)) with g = 1: the prototypes
    are the rows of weight_v, normalised on use.

    Args:
        bottleneck_dim: D, the width of the (normalised) inputs.
        prototypes: K.
    """

    def __init__(self, bottleneck_dim: int, prototypes: int, device=None, dtype=None) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(
            torch.empty(prototypes, bottleneck_dim, device=device, dtype=dtype)
        )
        if self.weight_v.device.type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        # The official v is the weight of a freshly built nn.Linear (weight_norm keeps it).
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        """(rows, K) logits of normalised inputs x (rows, D)."""
        weight = self.weight_v / self.weight_v.norm(dim=1, keepdim=True)  # weight_norm: no eps
        return F.linear(x, weight.to(x.dtype))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        magnitude = state_dict.pop(prefix + "weight_g", None)
        if magnitude is not None and not torch.allclose(
            magnitude.float(), torch.ones_like(magnitude, dtype=torch.float32)
        ):
            raise ValueError(
                f"{prefix}weight_g holds a learned magnitude (range "
                f"[{float(magnitude.min()):.4g}, {float(magnitude.max()):.4g}]); this head fixes "
                "g = 1, so only weight_g == 1 (the official initialisation) can be loaded"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        prototypes, width = self.weight_v.shape
        return f"bottleneck_dim={width}, prototypes={prototypes}, g=1"


def head_mlp(
    in_dim: int, hidden_dim: int, bottleneck_dim: int, layers: int, bias: bool, factory: dict
) -> nn.Module:
    """The official _build_mlp without BatchNorm: `layers` Linear layers with GELU between them
    (state-dict names mlp.0, mlp.2, mlp.4 for three layers), or one Linear for layers = 1."""
    if layers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias, **factory)
    widths = [in_dim] + [hidden_dim] * (layers - 1)
    modules: list[nn.Module] = []
    for width_in, width_out in itertools.pairwise(widths):
        modules += [nn.Linear(width_in, width_out, bias=bias, **factory), nn.GELU()]
    modules.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias, **factory))
    return nn.Sequential(*modules)


class DINOHead(nn.Module):
    """MLP -> bottleneck -> L2 normalisation -> prototypes (see the module docstring).

    Args:
        in_dim: the encoder width.
        prototypes: K (DINOv2: 65536; 131072 for ViT-L/14 and ViT-g/14).
        hidden_dim: the MLP's hidden width (2048).
        bottleneck_dim: the MLP's output width (256; 384 for ViT-L/14 and ViT-g/14's DINO head).
        layers: Linear layers of the MLP (3).
        bias: biases in the MLP (DINOv2's mlp_bias, True).
        device, dtype: where to build the parameters ("meta": no memory, no initialisation).
    """

    def __init__(
        self,
        in_dim: int,
        prototypes: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.mlp = head_mlp(in_dim, hidden_dim, bottleneck_dim, layers, bias, factory)
        self.last_layer = PrototypeLayer(bottleneck_dim, prototypes, **factory)
        if self.last_layer.weight_v.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation: MLP weights truncated normal (std 0.02), biases 0; the
        prototypes as a fresh nn.Linear's weight."""
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.last_layer.reset_parameters()

    @property
    def prototypes(self) -> Tensor:
        """(K, D) the last layer's weight_v (g = 1), as the fused losses take it."""
        return self.last_layer.weight_v

    def bottleneck(self, x: Tensor) -> Tensor:
        """(rows, D) the MLP's output, before the normalisation: the fused losses' input."""
        return self.mlp(x)

    def forward(self, x: Tensor) -> Tensor:
        """(rows, K) logits: cosines between the normalised bottleneck and the prototypes."""
        return self.last_layer(normalize_rows(self.mlp(x)))
