"""Features of a frozen encoder for evaluation: `model.encode` over a dataset, in batches."""

import torch
from torch import Tensor, nn


@torch.no_grad()
def extract_features(
    encode: nn.Module | object,
    images: Tensor,
    *,
    normalize: tuple[float, float] | None = (0.5, 0.5),
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """`encode(x)` over images (N, C, H, W) (uint8 in [0, 255] or float in [0, 1]), (N, D) float32.

    Args:
        encode: a model with `.encode(x)` (every nexus_fast method) or a callable.
        images: the dataset, on any device; moved batch by batch.
        normalize: (mean, std) applied to [0, 1] pixels, as the training pipeline does.
        batch_size: images per forward pass.
        device: where the encoder runs.
    """
    function = encode.encode if hasattr(encode, "encode") else encode
    was_training = getattr(encode, "training", False)
    if was_training:
        encode.eval()
    try:
        outputs = []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            batch = batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float()
            if normalize is not None:
                batch = (batch - normalize[0]) / normalize[1]
            outputs.append(function(batch).float().cpu())
        return torch.cat(outputs)
    finally:
        if was_training:
            encode.train()
