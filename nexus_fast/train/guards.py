"""Guards against the seed's "Common Pitfalls" that a trainer can see coming: representation
collapse, and a batch too small for a loss built on batch statistics. Each warns once, with the
remedies, as a `TrainingWarning`; the NaN/inf guard lives in the Trainer's step (it must skip
the update, not only warn).
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
