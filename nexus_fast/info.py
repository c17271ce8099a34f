"""`nexus-fast info` / `python -m nexus_fast.info`: versions, and per operator each backend's state
on this machine (usable here, or why not)."""

import platform
import sys

import torch

from . import _extension
from . import triton_kernels as triton_support
from .ops import OPERATORS


def _triton_version() -> str:
    if triton_support.IMPORT_ERROR is not None:
        return f"not installed ({triton_support.IMPORT_ERROR})"
    import triton

    mode = " (interpreter: TRITON_INTERPRET=1)" if triton_support.INTERPRET else ""
    return f"{triton.__version__}{mode}"


def _cuda_line() -> str:
    if torch.version.cuda is None:
        return "torch built without CUDA"
    if not torch.cuda.is_available():
        return f"torch built with CUDA {torch.version.cuda}; no CUDA device visible"
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return f"CUDA {torch.version.cuda}; devices: {names}"


def report() -> str:
    """The text that `nexus-fast info` prints."""
    from . import __version__

    extension = "built" if _extension.is_built() else f"NOT BUILT: {_extension.LOAD_ERROR}"
    lines = [
        f"nexus_fast {__version__}",
        f"python     {platform.python_version()} ({sys.executable})",
        f"torch      {torch.__version__}",
        f"triton     {_triton_version()}",
        f"cuda       {_cuda_line()}",
        f"extension  nexus_fast._C {extension}",
        f"cpu        {torch.get_num_threads()} threads, {platform.machine()}",
        "",
        "operators (backends in the order they are tried; the first usable one runs):",
    ]
    for name, operator in OPERATORS.items():
        lines.append(f"  {name}")
        for backend in operator.backends:
            reason = backend.machine_reason()
            state = "usable here" if reason is None else f"unavailable: {reason}"
            lines.append(f"    {backend.name:<10} {state}")
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
