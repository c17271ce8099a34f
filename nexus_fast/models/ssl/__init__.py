"""The seven self-supervised methods, with the seed document's API:

loss, reconstructed, mask = MAE(config)(images)
loss, metrics = VICRegModel(config)(view1, view2)      # and BarlowTwinsModel, DINOv2Model
loss, metrics = JEPAModel(config)(images)              # and Data2VecModel
loss, metrics = VJEPAModel(config)(video)              # video (B, C, T, H, W)
features = model.encode(images)                        # every method
"""

from ._base import EncoderConfig, SSLModel
from .barlow_twins import BarlowTwinsConfig, BarlowTwinsModel
from .data2vec import Data2VecConfig, Data2VecModel
from .dinov2 import DINOv2Config, DINOv2Model
from .ijepa import JEPAConfig, JEPAModel
from .mae import MAE, MAEConfig
from .vicreg import VICRegConfig, VICRegModel
from .vjepa2 import VJEPAConfig, VJEPAModel

__all__ = [
    "MAE",
    "BarlowTwinsConfig",
    "BarlowTwinsModel",
    "DINOv2Config",
    "DINOv2Model",
    "Data2VecConfig",
    "Data2VecModel",
    "EncoderConfig",
    "JEPAConfig",
    "JEPAModel",
    "MAEConfig",
    "SSLModel",
    "VICRegConfig",
    "VICRegModel",
    "VJEPAConfig",
    "VJEPAModel",
]
