"""The built-in dataset: animal-shapes (Animal-MNIST), 10,000 greyscale 28x28 silhouettes of ten
animals, shipped as gzip pickles inside the PyPI package `animal-shape-mnist` (MIT). No download.

The pickles are read with a restricted unpickler that resolves only the numpy globals an array
needs: a pickle from anywhere else cannot run code. The file is sorted by class, so the split
shuffles with a fixed seed first, as METHODS.md's baselines do (numpy default_rng(0).permutation,
the first 8,000 for training, the last 2,000 for testing).
"""

import gzip
import importlib.util
import io
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
DATA_FILE = "animal_data_version_3.gz"
LABEL_FILE = "animal_label_version_3.gz"
TRAIN_SIZE = 8000


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global is refused by name."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed"
            )
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own array reconstructor
        return getattr(np, name)


def load_array(path: Path) -> np.ndarray:
    """One gzip-pickled numpy array, through ArrayUnpickler."""
    with gzip.open(path, "rb") as handle:
        value = ArrayUnpickler(io.BytesIO(handle.read())).load()
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a numpy array")
    return value


def data_dir() -> Path:
    """The folder of the pickles inside the installed package (a namespace package: no
    __init__.py, so it is found through its search locations)."""
    spec = importlib.util.find_spec("animal_shape_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the built-in dataset needs the package animal-shape-mnist "
            "(pip install animal-shape-mnist; scripts/setup.sh installs it)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal Shape"


def load_animal_shapes(root: Path | None = None) -> tuple[Tensor, Tensor]:
    """All 10,000 images (N, 28, 28) uint8 and labels (N,) int64, in the file's (class) order."""
    folder = Path(root) if root is not None else data_dir()
    images = load_array(folder / DATA_FILE)
    labels = load_array(folder / LABEL_FILE)
    images = images.reshape(-1, 28, 28)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels in {folder}")
    return torch.from_numpy(images.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64))


def animal_shapes_split(
    split: str, root: Path | None = None, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """The "train" (8,000) or "test" (2,000) split: a fixed permutation, then a fixed cut."""
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not allowed: 'train' or 'test'")
    images, labels = load_animal_shapes(root)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    chosen = order[:TRAIN_SIZE] if split == "train" else order[TRAIN_SIZE:]
    return images[chosen], labels[chosen]
