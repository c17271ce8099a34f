"""Triton kernels and their launchers, installed as `nexus_fast.triton_kernels`.

Launchers are plain Python functions over tensors: no autograd and no torch.library here
(nexus_fast.ops registers them). Each kernel module imports triton itself; this package imports
without it and says why the kernels are unavailable.

Triton decides at decoration time whether a kernel is compiled for a GPU or run by its CPU
interpreter (TRITON_INTERPRET=1), so INTERPRET is fixed when this package is first imported.
"""

import importlib.util
import os

import torch

IMPORT_ERROR: str | None = (
    None if importlib.util.find_spec("triton") is not None else "triton is not installed"
)
INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(device_type: str) -> str | None:
    """Why Triton kernels cannot run on tensors of `device_type` here, or None if they can."""
    if IMPORT_ERROR is not None:
        return IMPORT_ERROR
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device"
    if device_type == "cpu":
        if INTERPRET:
            return None
        return "Triton runs CPU tensors only through its interpreter (TRITON_INTERPRET=1)"
    return f"Triton does not run {device_type} tensors"


def machine_reason() -> str | None:
    """Why no Triton kernel can run on this machine at all, or None."""
    if IMPORT_ERROR is not None:
        return IMPORT_ERROR
    if torch.cuda.is_available() or INTERPRET:
        return None
    return "triton installed, but no CUDA device (TRITON_INTERPRET=1 runs kernels on CPU tensors)"
