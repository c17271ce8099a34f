"""The official MAE formulation of the masking sequence, as facebookresearch/mae models_mae.py
writes it, for benchmarks: patch-embed every patch, add position embeddings, random_masking
(argsort twice, gather), decoder embedding, unshuffle (repeat mask tokens, cat, gather), and
forward_loss (patchify, normalise, masked mean)."""

import torch
import torch.nn.functional as F
from torch import Tensor


def patchify(imgs: Tensor, p: int) -> Tensor:
    n, c, h_pixels, w_pixels = imgs.shape
    h, w = h_pixels // p, w_pixels // p
    x = imgs.reshape(n, c, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, p * p * c)


def random_masking(x: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    n, length, dim = x.shape
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, dim))
    mask = torch.ones([n, length], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


def forward_loss(imgs: Tensor, pred: Tensor, mask: Tensor, p: int) -> Tensor:
    target = patchify(imgs, p)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def masking_sequence(
    imgs: Tensor,
    patch_weight: Tensor,  # (D, C, p, p), timm's patch_embed.proj.weight
    patch_bias: Tensor,
    pos_embed: Tensor,  # (1, L, D)
    decoder_weight: Tensor,  # (P, D): the decoder embedding, here straight to pixel space
    mask_token: Tensor,  # (1, 1, P)
    mask_ratio: float = 0.75,
) -> Tensor:
    p = patch_weight.shape[-1]
    x = F.conv2d(imgs, patch_weight, patch_bias, stride=p).flatten(2).transpose(1, 2)
    x = x + pos_embed
    x, mask, ids_restore = random_masking(x, mask_ratio)
    y = x @ decoder_weight.t()
    mask_tokens = mask_token.repeat(y.shape[0], ids_restore.shape[1] - y.shape[1], 1)
    y_ = torch.cat([y, mask_tokens], dim=1)
    y_ = torch.gather(y_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, y.shape[2]))
    return forward_loss(imgs, y_, mask, p)
