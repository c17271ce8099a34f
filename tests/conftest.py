"""Test setup shared by every test.

Without a GPU, Triton kernels run through the Triton interpreter on CPU tensors. Triton decides at
decoration time, so TRITON_INTERPRET is set here, before any nexus_fast module is imported.
With a GPU, the same tests run the compiled kernels on CUDA tensors (`triton_device`).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device: run by benchmarks/device_check.sh")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def triton_device() -> str:
    """Where Triton kernels run in this session: the GPU, else CPU tensors in the interpreter."""
    from nexus_fast import triton_kernels

    if triton_kernels.IMPORT_ERROR is not None:
        pytest.fail(f"the test environment must have triton: {triton_kernels.IMPORT_ERROR}")
    if HAS_CUDA:
        return "cuda"
    assert triton_kernels.INTERPRET, "conftest sets TRITON_INTERPRET=1 on machines without CUDA"
    return "cpu"


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose backends explicitly; a NEXUS_FAST_BACKEND from the shell must not leak in."""
    monkeypatch.delenv("NEXUS_FAST_BACKEND", raising=False)
