"""Pitfall guards (nexus_fast.train.guards): a collapsed embedding warns once with the
remedies; a batch too small for a batch-statistics loss warns; healthy runs stay silent."""

import warnings

import pytest
import torch

from nexus_fast.eval.collapse import embedding_std
from nexus_fast.models.ssl import MAE, DINOv2Model, VICRegModel
from nexus_fast.train.guards import (
    CollapseMonitor,
    TrainingWarning,
    check_statistics_batch,
)


def test_collapsed_embeddings_warn_once_with_the_remedies() -> None:
    collapsed = torch.randn(1, 64).repeat(32, 1) + 1e-6 * torch.randn(32, 64)
    spread = torch.randn(32, 64)
    monitor = CollapseMonitor(after_step=10)
    assert monitor.update(5, {"embedding_std": float(embedding_std(collapsed))}) is None
    assert monitor.update(11, {"embedding_std": float(embedding_std(spread))}) is None
    with pytest.warns(TrainingWarning, match="collapse at step 12") as caught:
        monitor.update(12, {"embedding_std": float(embedding_std(collapsed))})
    assert "learning rate" in str(caught[0].message) and "batch size" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor.update(13, {"embedding_std": 0.0}) is None  # once


def test_a_small_batch_for_batch_statistics_warns() -> None:
    vicreg = VICRegModel(VICRegModel.preset("tiny"))
    with pytest.warns(TrainingWarning, match="batch of 32"):
        check_statistics_batch(vicreg, forward_batch=16, world_size=2)  # gathered: 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_statistics_batch(vicreg, forward_batch=256, world_size=1) is None
        assert (
            check_statistics_batch(MAE(MAE.preset("tiny")), forward_batch=2, world_size=1) is None
        )
    dinov2 = DINOv2Model(DINOv2Model.preset("tiny"))
    with pytest.warns(TrainingWarning, match="KoLeo"):
        check_statistics_batch(dinov2, forward_batch=4, world_size=8)
