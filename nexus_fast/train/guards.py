"""Guards against the seed's "Common Pitfalls" that a trainer can see coming: representation
collapse (complete, or dimensional: the features keep their spread but lose directions), and a
batch too small for a loss built on batch statistics. Each warns once, with the remedies, as a
`TrainingWarning`; the NaN/inf guard lives in the Trainer's step (it must skip the update, not
only warn).
"""

import math
import warnings

from torch import nn

from ..models.ssl import BarlowTwinsModel, DINOv2Model, VICRegModel

# embedding_std (nexus_fast.eval.collapse) of normalised embeddings is about 1 / sqrt(D) when
# they spread over the sphere; below this it means every image maps to (nearly) one point.
COLLAPSE_STD = 1e-3
# The smallest batch (per forward pass, over every rank) for the batch-statistics losses: their
# D x D correlation / covariance estimates have rank <= batch, and the official runs use
# 2048 (Barlow Twins, VICReg). KoLeo's nearest neighbours are taken within one rank's batch.
MIN_STATISTICS_BATCH = 128
# A dimensional collapse keeps embedding_std but loses effective rank. Seen here (docs/results.md,
# V-JEPA 2 at lr 1e-3): 31.5 at random init -> 15.7 -> 14.4 while kNN fell, and 4.9 when run
# longer; the healthy runs of every recipe kept more than 0.58 of their highest rank.
RANK_DROP = 0.5
MIN_KOLEO_BATCH = 16

COLLAPSE_REMEDIES = (
    "lower the learning rate or lengthen its warmup; for teacher methods raise the teacher "
    "momentum and check the centering / Sinkhorn-Knopp and the teacher temperature; for Barlow "
    "Twins / VICReg raise the batch size and check the variance (std) term's weight; use "
    "stronger augmentations so the two views differ"
)


class TrainingWarning(UserWarning):
    """A training run is likely to go wrong (collapse, a batch too small for its loss)."""


class CollapseMonitor:
    """Warns once when the model's `embedding_std` metric falls below COLLAPSE_STD after the
    warmup (a fresh DINOv2 encoder's cls tokens are nearly constant by design: LayerScale 1e-5).

    Args:
        after_step: the first step checked (the end of the learning-rate warmup).
        threshold: the embedding_std under which the embeddings count as collapsed.
    """

    def __init__(self, after_step: int, threshold: float = COLLAPSE_STD) -> None:
        self.after_step = after_step
        self.threshold = threshold
        self.warned = False

    def update(self, step: int, metrics: dict[str, float]) -> str | None:
        """The warning's message the first time the embeddings look collapsed, else None."""
        value = metrics.get("embedding_std")
        if self.warned or value is None or step < self.after_step or not math.isfinite(value):
            return None
        if value >= self.threshold:
            return None
        self.warned = True
        message = (
            f"possible representation collapse at step {step}: embedding_std={value:.2e} "
            f"(< {self.threshold:g}; spread-out embeddings of width D give about 1/sqrt(D)). "
            f"Remedies: {COLLAPSE_REMEDIES}"
        )
        warnings.warn(message, TrainingWarning, stacklevel=2)
        return message


class RankMonitor:
    """Warns once when an evaluation's `effective_rank` of the features falls below `drop` x the
    highest seen so far (the random-init encoder's, when the caller shows it first): a
    dimensional collapse, which embedding_std does not see. After a resume it compares with
    the evaluations since the resume only.

    Args:
        drop: the fraction of the highest effective rank under which the run warns.
    """

    def __init__(self, drop: float = RANK_DROP) -> None:
        if not 0.0 < drop < 1.0:
            raise ValueError(f"drop={drop!r} is not allowed: a fraction in (0, 1)")
        self.drop = drop
        self.highest: float | None = None
        self.warned = False

    def update(self, step: int, metrics: dict[str, float]) -> str | None:
        """The warning's message the first time the rank has dropped, else None."""
        value = metrics.get("effective_rank")
        if value is None or not math.isfinite(value):
            return None
        if self.highest is None or value > self.highest:
            self.highest = value
            return None
        if self.warned or value >= self.drop * self.highest:
            return None
        self.warned = True
        message = (
            f"possible dimensional collapse at step {step}: effective_rank={value:.1f} of the "
            f"features, under {self.drop:g} x its highest {self.highest:.1f}; the embeddings "
            f"span fewer and fewer directions (embedding_std can stay normal). "
            f"Remedies: {COLLAPSE_REMEDIES}"
        )
        warnings.warn(message, TrainingWarning, stacklevel=2)
        return message


def check_statistics_batch(model: nn.Module, forward_batch: int, world_size: int) -> str | None:
    """Warns (once per call) when a loss built on batch statistics sees too few samples.

    Args:
        model: the SSL model (its config names the method's loss options).
        forward_batch: samples per forward pass on one rank (batch_size / world / accumulation).
        world_size: ranks whose samples the statistics gather (gather=True).

    Returns:
        The warning's message, or None when the batch is large enough.
    """
    config = getattr(model, "config", None)
    name = type(model).__name__
    message = None
    if isinstance(model, (BarlowTwinsModel, VICRegModel)):
        seen = forward_batch * (world_size if config.gather else 1)
        if seen < MIN_STATISTICS_BATCH:
            message = (
                f"{name}: its loss standardises / correlates each of the projector's features "
                f"over a batch of {seen} samples (< {MIN_STATISTICS_BATCH}); the D x D estimate "
                "then has rank <= that batch and the loss is noisy. Raise batch_size (gradient "
                "accumulation does not help: each forward pass has its own statistics) or run "
                "on more ranks with gather=True"
            )
    koleo = isinstance(model, DINOv2Model) and config.koleo_loss_weight > 0
    if koleo and forward_batch < MIN_KOLEO_BATCH:
        message = (
            f"DINOv2Model: the KoLeo regulariser finds nearest neighbours among the "
            f"{forward_batch} images of one rank's forward pass (< {MIN_KOLEO_BATCH}): its "
            "estimate is noisy. Raise batch_size, or set model.koleo_loss_weight=0"
        )
    if message is not None:
        warnings.warn(message, TrainingWarning, stacklevel=2)
    return message
