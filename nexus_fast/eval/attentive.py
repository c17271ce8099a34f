"""Attentive probe (V-JEPA's evaluation of frozen video features): a learned query attends over
the frozen encoder's tokens (cross-attention pooling on nexus_fast.ops.attention), then
LayerNorm and a Linear classifier; only the probe is trained."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops


class AttentivePooler(nn.Module):
    """One learned query cross-attends over (B, N, D) tokens -> (B, D)."""

    def __init__(self, dim: int, num_heads: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide dim {dim}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        batch, length, dim = tokens.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q(self.query).reshape(1, 1, heads, head_dim).transpose(1, 2)  # (1, H, 1, d)
        q = q.expand(batch, -1, -1, -1)
        k, v = self.kv(tokens).reshape(batch, length, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
        pooled = ops.attention(q, k, v)  # (B, H, 1, d)
        return self.proj(pooled.transpose(1, 2).reshape(batch, dim))


class AttentiveProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int, num_heads: int = 4) -> None:
        super().__init__()
        self.pool = AttentivePooler(dim, num_heads)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.norm(self.pool(tokens)))


def attentive_probe(
    train_tokens: Tensor,
    train_labels: Tensor,
    test_tokens: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 64,
    num_heads: int = 4,
    seed: int = 0,
) -> float:
    """Top-1 test accuracy (in [0, 1]) of an AttentiveProbe trained on frozen tokens (N, L, D)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    probe = AttentiveProbe(train_tokens.shape[-1], classes, num_heads)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-train_tokens.shape[0] // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(train_tokens.shape[0], generator=generator)
        for start in range(0, train_tokens.shape[0], batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(probe(train_tokens[index].float()), train_labels[index].long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    probe.eval()
    with torch.no_grad():
        predictions = torch.cat(
            [
                probe(test_tokens[start : start + batch_size].float()).argmax(dim=1)
                for start in range(0, test_tokens.shape[0], batch_size)
            ]
        )
    return float((predictions == test_labels.long()).float().mean())
