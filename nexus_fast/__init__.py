"""nexus_fast: a compiled, high-performance PyTorch engine for self-supervised learning."""

from . import masking, ops
from ._extension import is_built as extension_is_built

__version__ = "0.1.0"
__all__ = ["__version__", "extension_is_built", "masking", "ops"]
