#!/usr/bin/env bash
# The test command (CI runs it through .ci/run): formatting and lint (Python and C++), the sm_90a compile check of
# the CUDA sources and the C++ unit tests of the CPU kernels (CMake), then the pytest suite.
# Run scripts/setup.sh first. Extra arguments go to pytest (e.g. -m "not slow" while iterating).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate

echo "== ruff, clang-format"
ruff format --check .
ruff check .
git ls-files --cached --others --exclude-standard '*.cpp' '*.cu' '*.h' '*.cuh' \
  | xargs --no-run-if-empty clang-format --dry-run --Werror

echo "== cmake: CUDA sources for sm_90a (object files) and C++ unit tests of the CPU kernels"
cuda_check=ON
if ! command -v nvcc >/dev/null; then
  cuda_check=OFF
  echo "WARNING: nvcc not found: the sm_90a compile check of csrc/cuda/*.cu is skipped here"
fi
cmake -S . -B build-cmake -G Ninja -DPython_EXECUTABLE="$(command -v python)" \
  -DNEXUS_FAST_CUDA_CHECK="$cuda_check" > build-cmake.log 2>&1 || { cat build-cmake.log; exit 1; }
cmake --build build-cmake >> build-cmake.log 2>&1 || { tail -n 60 build-cmake.log; exit 1; }
grep -E "spill|Used [0-9]+ registers" build-cmake.log | sort | uniq -c || true
ctest --test-dir build-cmake --output-on-failure

echo "== pytest"
python -m pytest "$@"
