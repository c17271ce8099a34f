"""The seven self-supervised methods, with the seed document's API:

loss, reconstructed, mask = MAE(config)(images)
loss, metrics = VICRegModel(config)(view1, view2)      # and BarlowTwinsModel, DINOv2Model
loss, metrics = JEPAModel(config)(images)              # and Data2VecModel
loss, metrics = VJEPAModel(config)(video)              # video (B, C, T, H, W)
features = model.encode(images)                        # every method
"""

from ._base import EncoderConfig, SSLModel
from .barlow_twins import BarlowTwinsConfig, BarlowTwinsModel
from .vicreg import VICRegConfig, VICRegModel

__all__ = [
    "BarlowTwinsConfig",
    "BarlowTwinsModel",
    "EncoderConfig",
    "SSLModel",
    "VICRegConfig",
    "VICRegModel",
]
