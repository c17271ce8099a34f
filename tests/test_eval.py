"""Evaluation helpers: kNN (DINO's weighted votes), linear probe, attentive probe, collapse
indicators, feature extraction."""

import pytest
import torch

from nexus_fast.eval import (
    attentive_probe,
    effective_rank,
    embedding_std,
    extract_features,
    knn_accuracy,
    knn_predict,
    linear_probe,
)


def _clusters(n: int, dim: int, classes: int, seed: int, spread: float = 0.3):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + spread * torch.randn(n, dim, generator=generator), labels


def test_knn_votes_weigh_exp_similarity_over_t() -> None:
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[0.6, 0.8]])  # nearer to class 1's point, but two class-0 votes
    # cosine: 0.6, ~0.69, 0.8 -> weights exp(s / T): with T = 0.07 the single nearest wins,
    # with T = 10 the two class-0 votes win.
    assert knn_predict(train, labels, query, k=3, temperature=0.07).item() == 1
    assert knn_predict(train, labels, query, k=3, temperature=10.0).item() == 0
    with pytest.raises(ValueError, match="k=4"):
        knn_predict(train, labels, query, k=4)


def test_knn_and_linear_probe_separate_clusters() -> None:
    train, train_labels = _clusters(600, 16, 4, 0)
    test, test_labels = _clusters(200, 16, 4, 0)
    assert knn_accuracy(train, train_labels, test, test_labels, k=10) > 0.95
    assert linear_probe(train, train_labels, test, test_labels, epochs=20) > 0.95


def test_attentive_probe_finds_the_informative_token() -> None:
    generator = torch.Generator().manual_seed(0)
    n, length, dim = 400, 10, 16
    labels = torch.randint(0, 2, (n,), generator=generator)
    tokens = torch.randn(n, length, dim, generator=generator)
    where = torch.randint(0, length, (n,), generator=generator)
    tokens[torch.arange(n), where, 0] += 4.0 * (2 * labels - 1)  # one token carries the class
    accuracy = attentive_probe(tokens[:300], labels[:300], tokens[300:], labels[300:], epochs=30)
    assert accuracy > 0.8


def test_collapse_indicators() -> None:
    torch.manual_seed(0)
    assert embedding_std(torch.ones(8, 5)).item() == 0.0
    assert embedding_std(torch.randn(512, 64)).item() == pytest.approx(64**-0.5, rel=0.1)
    assert effective_rank(torch.randn(500, 1) @ torch.randn(1, 16)).item() == pytest.approx(
        1.0, abs=0.05
    )
    assert effective_rank(torch.randn(2000, 16)).item() > 14


def test_extract_features_batches_and_normalises() -> None:
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    seen = []

    def encode(x):
        seen.append(x.shape[0])
        return x.flatten(1)

    features = extract_features(encode, images, batch_size=4)
    assert seen == [4, 4, 2]
    torch.testing.assert_close(features, (images.float().flatten(1) / 255 - 0.5) / 0.5)
