"""Models: the ViT family (vit.py), checkpoint loading (checkpoints.py) and the seven SSL methods
(ssl/)."""

from .vit import PRESETS, VisionTransformer, ViTConfig, ViTFeatures, vit_config

__all__ = ["PRESETS", "ViTConfig", "ViTFeatures", "VisionTransformer", "vit_config"]
