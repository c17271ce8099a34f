"""Atomic checkpoints of a training run.

A run folder holds

    step_00000200/model.safetensors   the model's state dict (student, teacher, buffers)
    step_00000200/state.pt            the training state (torch.save of plain containers)
    step_00000400/...
    latest                            one line: the name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder of the run folder, its files and the
folder are fsync-ed, and only then is it renamed to `step_{N:08d}`; the `latest` pointer is then
replaced atomically (temporary file, fsync, os.replace, fsync of the folder). A crash at any
moment therefore leaves either the previous checkpoint or the new one as `latest`, never a
partial one: a half-written folder keeps its temporary name and is ignored (and removed by the
next save). Only the last `keep` checkpoints are kept.

Loading reads the training state with `torch.load(weights_only=True)`, so a checkpoint can hold
tensors and plain Python containers but never runs code.
"""

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
LATEST_FILE = "latest"
FORMAT_VERSION = 1
_NAME = re.compile(r"step_(\d{8,})")
_TEMPORARY_PREFIX = ".tmp-"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its folder, its step (optimizer steps done), the model's state dict
    (CPU tensors) and the training state written beside it."""

    path: Path
    step: int
    weights: dict[str, Tensor]
    state: dict


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint taken after `step` optimizer steps."""
    return f"step_{step:08d}"


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    weights: dict[str, Tensor],
    state: dict,
    keep: int = 2,
) -> Path:
    """Writes a checkpoint atomically, points `latest` at it and keeps the newest `keep`.

    Args:
        out_dir: the run folder (created if missing).
        step: optimizer steps done; names the folder.
        weights: the model's state dict; written as safetensors (moved to the CPU, shared
            storage copied, so tied or aliased tensors are written whole).
        state: the training state; plain containers, numbers, strings and tensors only (what
            `torch.load(weights_only=True)` accepts).
        keep: how many checkpoints to keep (the newest; at least the one just written).

    Returns:
        The checkpoint's folder.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_temporary_folders(out_dir)
    final = out_dir / checkpoint_name(step)
    if not final.exists():
        temporary = out_dir / f"{_TEMPORARY_PREFIX}{checkpoint_name(step)}-{os.getpid()}"
        temporary.mkdir()
        save_file(
            _safetensors_ready(weights),
            temporary / WEIGHTS_FILE,
            metadata={"format": f"nexus_fast.train/{FORMAT_VERSION}", "step": str(step)},
        )
        _fsync_file(temporary / WEIGHTS_FILE)
        torch.save({"format": FORMAT_VERSION, "step": step, **state}, temporary / STATE_FILE)
        _fsync_file(temporary / STATE_FILE)
        _fsync_dir(temporary)
        os.rename(temporary, final)
        _fsync_dir(out_dir)
    # A folder of that name is complete (only finished folders are renamed into place): re-saving
    # the same step, e.g. at the end of a run resumed at its last step, only moves the pointer.
    _write_pointer(out_dir, final.name)
    _prune(out_dir, keep, final.name)
    return final


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """The complete checkpoint folders of a run, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in out_dir.iterdir()
        if path.is_dir() and (match := _NAME.fullmatch(path.name))
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The folder `latest` points to; the newest complete folder if the pointer is missing or
    stale (a crash between renaming a folder and moving the pointer); None when there is none."""
    out_dir = Path(out_dir)
    pointer = out_dir / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text().strip()
        if _NAME.fullmatch(name) and (out_dir / name).is_dir():
            return out_dir / name
    folders = list_checkpoints(out_dir)
    return folders[-1] if folders else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Loads one checkpoint folder (weights with safetensors, state with weights_only=True).

    Raises:
        FileNotFoundError: the folder lacks one of its two files (it is not a checkpoint).
        ValueError: its format version is not one this code reads.
    """
    path = Path(path)
    for name in (WEIGHTS_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint: {name} is missing")
    state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path / STATE_FILE}: format={state.get('format')!r} is not allowed: this version "
            f"of nexus_fast reads format {FORMAT_VERSION}"
        )
    weights = load_file(path / WEIGHTS_FILE, device=str(map_location))
    return Checkpoint(path=path, step=int(state["step"]), weights=weights, state=state)


def load_latest(out_dir: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """The newest checkpoint of a run folder (see latest_checkpoint), loaded; None if none."""
    path = latest_checkpoint(out_dir)
    return None if path is None else load_checkpoint(path, map_location)


def _safetensors_ready(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors with no two sharing storage (safetensors refuses aliases)."""
    ready, storages = {}, set()
    for name, tensor in weights.items():
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        ready[name] = tensor
    return ready


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _fsync_dir(path: Path) -> None:
    """Makes a folder's entries (a new file, a rename) durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_pointer(out_dir: Path, name: str) -> None:
    temporary = out_dir / f"{_TEMPORARY_PREFIX}{LATEST_FILE}-{os.getpid()}"
    with open(temporary, "w") as file:
        file.write(name + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, out_dir / LATEST_FILE)
    _fsync_dir(out_dir)


def _prune(out_dir: Path, keep: int, current: str) -> None:
    """Deletes all but the newest `keep` checkpoints, never the current one."""
    folders = [path for path in list_checkpoints(out_dir) if path.name != current]
    for path in folders[: max(len(folders) - (max(keep, 1) - 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)


def _remove_temporary_folders(out_dir: Path) -> None:
    """Removes what crashed writers left behind (only one process writes a run's checkpoints)."""
    for path in out_dir.iterdir():
        if path.name.startswith(_TEMPORARY_PREFIX):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
