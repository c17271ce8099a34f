"""Pitfall guards (nexus_fast.train.guards): a collapsed embedding, or one that lost half its
effective rank, warns once with the remedies; a batch too small for a batch-statistics loss
warns; healthy runs stay silent."""

import warnings

import pytest
import torch

from nexus_fast.eval.collapse import effective_rank, embedding_std
from nexus_fast.models.ssl import MAE, DINOv2Model, VICRegModel
from nexus_fast.train.guards import (
    CollapseMonitor,
    RankMonitor,
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


def test_a_dimensional_collapse_warns_once_though_the_spread_stays() -> None:
    """Embeddings squeezed onto 4 of 64 directions keep their per-dimension spread (so the
    embedding_std alarm stays silent) but lose most of their effective rank."""
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(256, 64, generator=generator)
    squeezed = torch.randn(256, 4, generator=generator) @ torch.randn(4, 64, generator=generator)
    assert (
        CollapseMonitor(after_step=0).update(5, {"embedding_std": float(embedding_std(squeezed))})
        is None
    )
    full, low = float(effective_rank(spread)), float(effective_rank(squeezed))
    assert low < RankMonitor().drop * full
    monitor = RankMonitor()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor.update(0, {"effective_rank": full}) is None  # the reference
        assert monitor.update(1, {"effective_rank": 0.6 * full}) is None  # healthy runs dip
        assert monitor.update(2, {"knn": 0.5}) is None  # an evaluation without the indicator
    with pytest.warns(TrainingWarning, match="dimensional collapse at step 3") as caught:
        monitor.update(3, {"effective_rank": low})
    assert f"highest {full:.1f}" in str(caught[0].message)
    assert "learning rate" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor.update(4, {"effective_rank": 1.0}) is None  # once


def test_the_rank_drop_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match=r"drop=1\.5 .*\(0, 1\)"):
        RankMonitor(drop=1.5)


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
