"""ImageFolder: classes sorted, images decoded by Pillow to uint8 (C, H, W), an unreadable file
reported by name and skipped, a bad root refused with its path in the message."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nexus_fast.data import ImageFolder, UnreadableFileWarning, read_image


def _folder(root: Path) -> Path:
    """zebra/ (2 grey 12x10), ant/ (1 RGB 12x10), cat/ (1 RGB 20x16, a corrupt PNG, a hidden file
    and a text file): created in that order, so sorting is what puts ant first."""
    for name in ("zebra", "ant", "cat"):
        (root / name).mkdir(parents=True)
    Image.fromarray(np.full((12, 10), 100, np.uint8), "L").save(root / "zebra" / "a.png")
    Image.fromarray(np.full((12, 10), 200, np.uint8), "L").save(root / "zebra" / "b.png")
    Image.fromarray(np.full((12, 10, 3), (255, 0, 0), np.uint8), "RGB").save(root / "ant" / "a.png")
    Image.fromarray(np.full((20, 16, 3), 50, np.uint8), "RGB").save(root / "cat" / "a.png")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_classes_are_sorted_and_samples_load(tmp_path: Path) -> None:
    data = ImageFolder(_folder(tmp_path), size=8, channels=1)
    assert data.classes == ["ant", "cat", "zebra"]
    assert [(path.name, label) for path, label in data.samples] == [
        ("a.png", 0),
        ("a.png", 1),
        ("broken.png", 1),
        ("a.png", 2),
        ("b.png", 2),
    ]
    image, label = data[3]
    assert image.shape == (1, 8, 8) and image.dtype == torch.uint8 and label == 2
    assert torch.equal(image, torch.full((1, 8, 8), 100, dtype=torch.uint8))
    red = data[0][0]  # Pillow's luma of pure red: 255 * 299 / 1000
    assert torch.equal(red, torch.full((1, 8, 8), 76, dtype=torch.uint8))


def test_an_unreadable_file_is_named_once_and_the_next_sample_stands_in(tmp_path: Path) -> None:
    data = ImageFolder(_folder(tmp_path), size=8, channels=3)
    with pytest.warns(UnreadableFileWarning, match=r"broken\.png"):
        image, label = data[2]
    assert label == 2 and torch.equal(image, torch.full((3, 8, 8), 100, dtype=torch.uint8))
    assert list(data.unreadable) == [tmp_path / "cat" / "broken.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once: a second visit is silent
        assert data[2][1] == 2
        batches = list(torch.utils.data.DataLoader(data, batch_size=5))
    assert len(batches) == 1 and batches[0][0].shape == (5, 3, 8, 8)
    assert batches[0][1].tolist() == [0, 1, 2, 2, 2]


def test_load_all_leaves_unreadable_files_out(tmp_path: Path) -> None:
    with pytest.warns(UnreadableFileWarning, match=r"broken\.png"):
        images, labels = ImageFolder(_folder(tmp_path), size=(6, 4)).load_all()
    assert images.shape == (4, 3, 6, 4) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2, 2] and labels.dtype == torch.int64
    with pytest.warns(UnreadableFileWarning), pytest.raises(ValueError, match="give the dataset"):
        ImageFolder(tmp_path).load_all()  # 12x10 and 20x16 files do not stack without a size


def test_read_image_keeps_pixels_exactly(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(tmp_path / "noise.png")
    image = read_image(tmp_path / "noise.png")
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")


def test_bad_roots_and_arguments_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolder(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"file\.png"):
        ImageFolder(tmp_path / "file.png")
    with pytest.raises(ValueError, match="no class sub-folder"):
        ImageFolder(tmp_path)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no file ending in .*\.png"):
        ImageFolder(tmp_path / "empty")
    _folder(tmp_path / "ok")
    with pytest.raises(ValueError, match="channels=2"):
        ImageFolder(tmp_path / "ok", channels=2)
    with pytest.raises(ValueError, match="size=0"):
        ImageFolder(tmp_path / "ok", size=0)
    with pytest.raises(IndexError, match="index 5"):
        ImageFolder(tmp_path / "ok")[5]


def test_a_folder_of_unreadable_files_raises_rather_than_loops(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "x.png").write_bytes(b"junk")
    data = ImageFolder(tmp_path)
    with pytest.warns(UnreadableFileWarning), pytest.raises(RuntimeError, match="could be read"):
        data[0]
