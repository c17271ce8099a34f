#!/usr/bin/env bash
# The one prepared run for a lent GPU (an H200, sm_90): build the CUDA kernels, run the GPU tests,
# run the benchmarks; everything it writes lands in $OUT (fetched back by the device tool) and in
# benchmarks/results/. Budget: under 8 minutes. Later issues add their tests and benchmarks here.
#
#   bash benchmarks/device_check.sh            # OUT defaults to a fresh temporary folder
#
# The GPU image has torch and triton but no network. If pytest is missing there, put its wheels in
# .device/wheels (pip download pytest pluggy iniconfig packaging -d .device/wheels) and carry
# .device with the run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
started=$(date +%s)
status=0

step() {  # step NAME COMMAND...: runs, logs to $OUT/NAME.log, records the outcome in the summary
  local name=$1
  shift
  local begin=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$(printf '%-12s' "$name") rc=$rc $(( $(date +%s) - begin ))s" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || status=1
  return $rc
}

{
  echo "device check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$SUMMARY" 2>&1

if ! python -c "import pytest" 2>/dev/null && [ -d .device/wheels ]; then
  python -m pip install --quiet --no-index --find-links .device/wheels pytest >> "$SUMMARY" 2>&1
fi

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export NEXUS_FAST_USE_CUDA=1
step build python -m pip install --no-build-isolation --no-deps -e . || {
  tail -n 40 "$OUT/build.log"
  exit 1
}
step info python -m nexus_fast.info
# GPU tests, and the Triton tests, which run the compiled kernels on CUDA tensors here.
step gpu-tests python -m pytest -q -m "gpu or interpret" -p no:cacheprovider
step bench python benchmarks/run.py --device cuda --out benchmarks/results
cp -r benchmarks/results "$OUT/results-tree"
tar -czf "$OUT/results.tar.gz" -C benchmarks results && rm -rf "$OUT/results-tree"
echo "total $(( $(date +%s) - started ))s, status $status" | tee -a "$SUMMARY"
exit $status
