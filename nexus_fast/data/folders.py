"""Folder datasets: one sub-folder per class, decoded file by file (ImageFolder here, VideoFolder
in video.py), both built on ClassFolder.

    root/
      cat/ 001.png 002.png ...
      dog/ 001.png ...

Classes are the sub-folder names in sorted order (label i is `classes[i]`); the files of a class
are found recursively, sorted, and kept when their suffix is one of the dataset's extensions.
Hidden files and folders (a leading ".") are ignored.

An unreadable file never stops an epoch: decoding is checked lazily, in `__getitem__`. A file that
fails is reported once (an UnreadableFileWarning naming the file and the decoder's reason, and an
entry in `dataset.unreadable`) and the next readable sample is returned in its place, so a
DataLoader keeps going and every batch is full. Checking every file at construction would mean
decoding the whole dataset (every frame of every video) before the first step. With DataLoader
workers, each worker process reports the files it meets.
"""

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from nexus_fast.config import require

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)


class UnreadableFileWarning(UserWarning):
    """A file of a folder dataset could not be decoded and is skipped."""


def as_size(size: int | tuple[int, int] | None, name: str = "size") -> tuple[int, int] | None:
    """`size` as (height, width): an int is a square, None stays None (keep the file's size).

    Raises:
        ValueError: size is not a positive int, a pair of positive ints or None.
    """
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        require(size > 0, name, size, "a positive int, a (height, width) pair or None")
        return size, size
    pair = tuple(size) if isinstance(size, (tuple, list)) else ()
    require(
        len(pair) == 2 and all(isinstance(s, int) and s > 0 for s in pair),
        name,
        size,
        "a positive int, a (height, width) pair of positive ints or None",
    )
    return pair[0], pair[1]


def scan_class_folders(
    root: str | Path, extensions: Iterable[str]
) -> tuple[list[str], list[tuple[Path, int]]]:
    """The classes (sorted sub-folder names) of `root` and its (file, label) samples.

    Raises:
        FileNotFoundError: root does not exist.
        NotADirectoryError: root is not a folder.
        ValueError: root has no class sub-folder, or no file with one of the extensions.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset root {root} is not a folder")
    suffixes = {e.lower() for e in extensions}
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"dataset root {root} has no class sub-folder (expected root/<class>/...)")
    samples = []
    for label, name in enumerate(classes):
        folder = root / name
        for path in sorted(folder.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
            if path.is_file() and not hidden and path.suffix.lower() in suffixes:
                samples.append((path, label))
    if not samples:
        raise ValueError(
            f"dataset root {root} has no file ending in {', '.join(sorted(suffixes))} "
            f"in its class folders {classes}"
        )
    return classes, samples


class ClassFolder(torch.utils.data.Dataset):
    """A dataset of `root/<class>/<file>`; a subclass defines `read(path) -> Tensor`.

    Subclasses give the extensions and the decoder; this class finds the files, gives the labels
    and skips unreadable files (see the module docstring). `read` raises OSError or ValueError
    for a file it cannot decode.

    Attributes:
        root: the dataset folder.
        classes: class names, sorted; label i is classes[i].
        samples: (path, label) of every file found, unreadable ones included.
        unreadable: path -> reason of every file found unreadable so far (in this process).
    """

    def __init__(self, root: str | Path, extensions: Iterable[str]) -> None:
        self.root = Path(root)
        self.classes, self.samples = scan_class_folders(self.root, extensions)
        self.unreadable: dict[Path, str] = {}

    def read(self, path: Path) -> Tensor:
        """One file decoded; OSError or ValueError when it cannot be."""
        raise NotImplementedError(f"{type(self).__name__} must define read(path)")

    def __len__(self) -> int:
        return len(self.samples)

    def try_read(self, path: Path) -> Tensor | None:
        """The decoded file, or None (reported once) when it cannot be decoded."""
        if path in self.unreadable:
            return None
        try:
            return self.read(path)
        except (OSError, ValueError) as error:
            self.unreadable[path] = str(error)
            warnings.warn(
                f"skipping unreadable file {path}: {error}", UnreadableFileWarning, stacklevel=3
            )
            return None

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """(decoded file, label) of sample `index`, or of the next readable sample after it.

        Raises:
            IndexError: index outside [-len, len).
            RuntimeError: no file of the dataset is readable.
        """
        count = len(self.samples)
        if not -count <= index < count:
            raise IndexError(f"index {index} is out of range for a dataset of {count} samples")
        for step in range(count):
            path, label = self.samples[(index + step) % count]
            value = self.try_read(path)
            if value is not None:
                return value, label
        raise RuntimeError(
            f"no file of {self.root} could be read ({count} tried); "
            f"first failure: {next(iter(self.unreadable.items()))}"
        )

    def load_all(self) -> tuple[Tensor, Tensor]:
        """Every readable sample decoded and stacked, for small datasets held in memory.

        Unreadable files are reported and left out (no stand-in is repeated).

        Returns:
            values (N, ...) uint8 stacked along a new first dimension, and labels (N,) int64.

        Raises:
            ValueError: the decoded files differ in shape (give the dataset a `size`).
            RuntimeError: no file of the dataset is readable.
        """
        values, labels, paths = [], [], []
        for path, label in self.samples:
            value = self.try_read(path)
            if value is not None:
                values.append(value)
                labels.append(label)
                paths.append(path)
        if not values:
            raise RuntimeError(f"no file of {self.root} could be read ({len(self.samples)} tried)")
        for path, value in zip(paths, values):
            if value.shape != values[0].shape:
                raise ValueError(
                    f"{path} decodes to shape {tuple(value.shape)} but {paths[0]} to "
                    f"{tuple(values[0].shape)}: give the dataset a size to stack them"
                )
        return torch.stack(values), torch.tensor(labels, dtype=torch.int64)


def read_image(
    path: str | Path, *, size: int | tuple[int, int] | None = None, channels: int = 3
) -> Tensor:
    """One image file decoded with Pillow.

    Args:
        path: the image file.
        size: resize to (size, size) or (height, width), bilinear with Pillow's antialiasing;
            None keeps the file's size.
        channels: 1 (greyscale, Pillow's "L" luma) or 3 (RGB).

    Returns:
        uint8 (channels, height, width).

    Raises:
        FileNotFoundError: no file at path.
        ValueError: Pillow cannot decode the file (the message names it), or a bad argument.
    """
    require(channels in (1, 3), "channels", channels, "1 (greyscale) or 3 (RGB)")
    target = as_size(size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if target is not None:
                image = image.resize((target[1], target[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    # Pillow signals malformed data with several types (truncated files raise OSError, some
    # plugins SyntaxError, huge headers DecompressionBombError); one ValueError names the file.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image {path}: {error}") from error
    if channels == 1:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class ImageFolder(ClassFolder):
    """Images in `root/<class>/<file>`, decoded with Pillow as uint8 (C, H, W).

    Args:
        root: the dataset folder, one sub-folder per class.
        size: resize every image to (size, size) or (height, width); None keeps each file's size
            (then load_all needs images of one size).
        channels: 1 (greyscale) or 3 (RGB); every file is converted to it.
        extensions: the file suffixes that count as images (case-insensitive).

    Raises:
        FileNotFoundError, NotADirectoryError: root is missing or not a folder.
        ValueError: no class folder or no image in root, or a bad size or channels.

    Example:
        >>> data = ImageFolder("pets", size=64, channels=3)
        >>> image, label = data[0]                   # (3, 64, 64) uint8, int
        >>> images, labels = data.load_all()          # (N, 3, 64, 64) uint8, (N,) int64
    """

    def __init__(
        self,
        root: str | Path,
        *,
        size: int | tuple[int, int] | None = None,
        channels: int = 3,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
    ) -> None:
        require(channels in (1, 3), "channels", channels, "1 (greyscale) or 3 (RGB)")
        self.size = as_size(size)
        self.channels = channels
        super().__init__(root, extensions)

    def read(self, path: Path) -> Tensor:
        """One file of the dataset, decoded with the dataset's size and channels."""
        return read_image(path, size=self.size, channels=self.channels)
