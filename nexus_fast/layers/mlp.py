"""The transformer's feed-forward networks: GELU MLP (ViT) and SwiGLU (DINOv2 giant), both with
timm's `fc1` / `fc2` names."""

import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(
        self, dim: int, hidden_dim: int, bias: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """fc1 (to 2 x hidden, packed) -> silu(gate) * value -> fc2.

    hidden_dim is the width of each half; DINOv2 sizes it as int(2/3 * 4 * dim) rounded up to a
    multiple of 8, so the parameter count matches a GELU MLP's.
    """

    def __init__(
        self, dim: int, hidden_dim: int, bias: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * value)
