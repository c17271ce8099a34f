"""k-nearest-neighbour evaluation of frozen features, as DINO does it (eval_knn.py): cosine
similarity to every training feature, the k most similar vote with weight exp(similarity / T)."""

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Predicted class of each test feature (N_test,).

    Args:
        train_features: (N_train, D); train_labels: (N_train,) int.
        test_features: (N_test, D).
        k: neighbours that vote (20, DINO's default).
        temperature: votes weigh exp(cosine / temperature) (0.07).
        num_classes: default max label + 1.
        chunk: test rows per similarity block (memory: chunk x N_train).
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(
            f"{train_features.shape[0]} training features but {train_labels.shape[0]} labels"
        )
    if not 0 < k <= train_features.shape[0]:
        raise ValueError(f"k={k} is not allowed: between 1 and {train_features.shape[0]}")
    classes = num_classes or int(train_labels.max()) + 1
    train = F.normalize(train_features.float(), dim=1)
    predictions = []
    for start in range(0, test_features.shape[0], chunk):
        test = F.normalize(test_features[start : start + chunk].float(), dim=1)
        similarity, index = (test @ train.T).topk(k, dim=1)
        votes = torch.zeros(test.shape[0], classes, device=test.device)
        votes.scatter_add_(1, train_labels[index], (similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    **options,
) -> float:
    """Top-1 accuracy (in [0, 1]) of knn_predict on the test set."""
    predictions = knn_predict(train_features, train_labels, test_features, **options)
    return float((predictions == test_labels.to(predictions.device)).float().mean())
