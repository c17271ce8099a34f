"""The one build of nexus_fast: the Python package plus its compiled operators, nexus_fast._C.

_C holds every operator schema (csrc/ops.cpp), the CPU kernels (csrc/cpu/*.cpp) and, when torch
was built with CUDA and a CUDA toolkit is present, the CUDA kernels (csrc/cuda/*.cu). No GPU is
needed at build time. Environment:

  NEXUS_FAST_USE_CUDA   auto (default) | 0 (CPU-only build) | 1 (CUDA build, error if impossible)
  NEXUS_FAST_BUILD_EXT  1 (default) | 0 (pure-Python install: reference paths and Triton only)
  TORCH_CUDA_ARCH_LIST  honoured as torch.utils.cpp_extension reads it (e.g. "9.0a" for H100/H200)
  MAX_JOBS              parallel compile jobs; by default bounded by free memory
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Memory one compiler process may need: nvcc with torch headers peaks near 3 GiB, g++ near 1.5.
GIB_PER_JOB = {"cuda": 3.0, "cpu": 1.5}


def read_flag(name: str, allowed: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name, default)
    if value not in allowed:
        raise SystemExit(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


def cuda_build_wanted() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    flag = read_flag("NEXUS_FAST_USE_CUDA", ("auto", "0", "1"), "auto")
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if flag == "1" and not possible:
        raise SystemExit(
            "NEXUS_FAST_USE_CUDA=1 but a CUDA build is impossible: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}"
        )
    return flag != "0" and possible


def available_memory_gib() -> float:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 4.0


def bound_parallel_jobs(kind: str) -> None:
    """Sets MAX_JOBS (read by torch's ninja build) so that parallel compilers fit in memory."""
    if "MAX_JOBS" in os.environ:
        return
    by_memory = int(available_memory_gib() // GIB_PER_JOB[kind])
    os.environ["MAX_JOBS"] = str(max(1, min(os.cpu_count() or 1, by_memory)))


def extension_modules() -> tuple[list, dict]:
    if read_flag("NEXUS_FAST_BUILD_EXT", ("0", "1"), "1") == "0":
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = ["csrc/python_module.cpp", "csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden"]
    link_flags = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline OpenMP in torch's Linux builds: without -fopenmp it runs on
        # one thread. The libgomp.so.1 that torch ships is already loaded, so ours resolves to it.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if cuda_build_wanted():
        bound_parallel_jobs("cuda")
        extension = CUDAExtension(
            "nexus_fast._C",
            sources + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=include_dirs,
            define_macros=[("NEXUS_FAST_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"],
            },
            extra_link_args=link_flags,
        )
    else:
        bound_parallel_jobs("cpu")
        extension = CppExtension(
            "nexus_fast._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()

setup(
    packages=[*find_packages(include=["nexus_fast", "nexus_fast.*"]), "nexus_fast.triton_kernels"],
    # Triton kernels live at the top of the repository (next to csrc/) but install inside the
    # package, so no generic top-level name lands in users' site-packages.
    package_dir={"nexus_fast.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
