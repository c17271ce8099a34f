"""Compiles every Triton kernel for sm_90a (Hopper) without a GPU and reports its resources.

Run with TRITON_INTERPRET unset (the interpreter replaces kernels by Python functions):
    python -m nexus_fast.triton_kernels.sm90_check [--json]
Exit status 1 when a kernel spills registers to local memory at its default configuration.
"""

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

# Kernel modules whose COMPILE_SPECS are checked; a new kernel module adds itself here.
KERNEL_MODULES = (
    "ema",
    "patches",
    "tokens",
    "masked_patch_loss",
    "attention",
    "regression",
    "redundancy",
    "sinkhorn",
    "prototype_loss",
)
HOPPER = ("cuda", 90, 32)


@dataclass(frozen=True)
class Resources:
    module: str
    label: str
    registers: int
    shared_bytes: int
    local_bytes: int  # register spills (Triton kernels keep no other local arrays)
    stack_bytes: int

    @property
    def spills(self) -> bool:
        return self.local_bytes > 0 or self.stack_bytes > 0


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _resources(module: str, label: str, cubin: bytes) -> Resources:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        report = subprocess.run(
            [_cuobjdump(), "--dump-resource-usage", handle.name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", report))
    return Resources(
        module,
        label,
        registers=int(fields["REG"]),
        shared_bytes=int(fields["SHARED"]),
        local_bytes=int(fields["LOCAL"]),
        stack_bytes=int(fields["STACK"]),
    )


def check_all() -> list[Resources]:
    """Compiles every spec of every kernel module for sm_90a."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    results = []
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(f"nexus_fast.triton_kernels.{module_name}")
        for spec in module.COMPILE_SPECS:
            source = ASTSource(spec.kernel, spec.signature, spec.constexprs)
            compiled = triton.compile(
                source,
                target=GPUTarget(*HOPPER),
                options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
            )
            results.append(_resources(module_name, spec.label, compiled.asm["cubin"]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    results = check_all()
    if args.json:
        print(json.dumps([asdict(r) | {"spills": r.spills} for r in results], indent=1))
    else:
        print(f"{'kernel':48} {'regs':>5} {'shared':>7} {'local':>6}")
        for r in results:
            flag = "  SPILLS" if r.spills else ""
            print(f"{r.label:48} {r.registers:5d} {r.shared_bytes:7d} {r.local_bytes:6d}{flag}")
    return 1 if any(r.spills for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
