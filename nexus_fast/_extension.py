"""Loads the compiled operators, nexus_fast._C, and says whether that worked.

The package imports without the extension (a pure-Python install, or a build that failed): every
operator then runs through its reference or Triton path, and `nexus-fast info` and the error of a
forced C++ backend say why the compiled kernels are missing.
"""

import importlib
import logging

import torch

_LOG = logging.getLogger("nexus_fast")


def _load() -> str | None:
    """Imports nexus_fast._C (registering its TORCH_LIBRARY ops); returns the error, if any."""
    try:
        importlib.import_module("nexus_fast._C")
    except ImportError as error:
        return f"nexus_fast._C is not built or does not load ({error})"
    return None


LOAD_ERROR: str | None = _load()


def is_built() -> bool:
    """True when nexus_fast._C loaded and its operators are registered."""
    return LOAD_ERROR is None


def has_kernel(op_name: str, dispatch_key: str) -> bool:
    """Whether the compiled op `nexus_fast::<op_name>` has a kernel for a dispatch key."""
    if LOAD_ERROR is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"nexus_fast::{op_name}", dispatch_key)


def missing_kernel_reason(op_name: str, dispatch_key: str) -> str | None:
    """Why the compiled kernel of an op for a device is unavailable, or None if it is there."""
    if LOAD_ERROR is not None:
        return LOAD_ERROR
    if has_kernel(op_name, dispatch_key):
        return None
    if dispatch_key == "CUDA":
        return (
            "nexus_fast._C was built without CUDA kernels (NEXUS_FAST_USE_CUDA=0, or no CUDA "
            "toolkit or no CUDA build of torch at build time)"
        )
    return f"nexus_fast._C has no {dispatch_key} kernel for {op_name}"


if LOAD_ERROR is not None:
    # Logged, not warned: importing a library should not print. `nexus-fast info` shows it too.
    _LOG.info("%s; using the reference and Triton paths", LOAD_ERROR)
