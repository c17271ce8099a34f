"""Linear probe on frozen features: BatchNorm without affine (it standardises each feature, as
MAE's linear probe does) followed by one Linear layer, trained with AdamW and cross-entropy."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Top-1 test accuracy (in [0, 1]) of BatchNorm1d(affine=False) + Linear trained on the
    training features (frozen: precomputed), with a cosine learning rate over `epochs`."""
    generator = torch.Generator().manual_seed(seed)
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    dim = train_features.shape[1]
    torch.manual_seed(seed)
    probe = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, classes))
    steps_per_epoch = max(1, -(-train_features.shape[0] // batch_size))
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    features, labels = train_features.float(), train_labels.long()
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(features.shape[0], generator=generator)
        for start in range(0, features.shape[0], batch_size):
            index = order[start : start + batch_size]
            if index.numel() < 2:
                continue  # BatchNorm needs two samples
            loss = F.cross_entropy(probe(features[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    probe.eval()
    with torch.no_grad():
        predictions = probe(test_features.float()).argmax(dim=1)
    return float((predictions == test_labels.long()).float().mean())
