"""What the offline sm_90a compile check builds: each kernel at the configurations it runs with.

Every kernel module lists its specs in COMPILE_SPECS; `python -m
nexus_fast.triton_kernels.sm90_check` compiles them all for Hopper without a GPU and reports
registers, shared memory and spills.
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CompileSpec:
    """One kernel at one launch configuration.

    Attributes:
        label: how the report names it, e.g. "ema_kernel[bf16, aligned]".
        kernel: the @triton.jit function.
        signature: Triton type of each runtime argument ("*fp32", "i64", "fp32", ...).
        constexprs: value of each constexpr argument.
        num_warps, num_stages: the launch options the launcher uses.
    """

    label: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
