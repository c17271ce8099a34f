"""Datasets: the built-in animal-shapes (animal_shapes.py)."""

from .animal_shapes import CLASSES, animal_shapes_split, load_animal_shapes

__all__ = ["CLASSES", "animal_shapes_split", "load_animal_shapes"]
