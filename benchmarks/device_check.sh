#!/usr/bin/env bash
# The one prepared run for a lent GPU (an H200, sm_90): build the CUDA kernels, run the GPU
# benchmarks and tests; everything lands in $OUT as three files (summary.txt, logs.tar.gz,
# results.tar.gz), since the device tool brings back only a few files.
#
#   bash benchmarks/device_check.sh [STEP ...]   # steps: train_step tests train kernels (default: all)
#
# Seen on the H200 (2026-12-04): build 35-40 s; the GPU tests 175-180 s with -n 16 (Triton compiles
# dominate); train_step 96 s for five methods, ~85 s per ViT-H/ViT-B pair in a cold process
# (attention autotuning); the kernel benchmarks never got their turn. A 15-minute lease fits
# about two runs of DEADLINE=400.
#
# DEADLINE (seconds, default 400) bounds the whole run: each step gets at most its own cap and
# what is left before the deadline, and a step with under 20 s left is skipped, so the files
# always come back inside the device tool's limit. The GPU image has torch, triton, pytest,
# pytest-xdist and pytest-timeout but not expecttest (torch.library.opcheck needs it): carry its
# wheel in .whl (pip download --no-deps -d .whl expecttest animal-shape-mnist).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-400}
mkdir -p "$OUT/logs" "$OUT/results"
SUMMARY="$OUT/summary.txt"
started=$(date +%s)
status=0
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(train_step tests train kernels)

step() {  # step NAME CAP COMMAND...: runs under min(CAP, time left), logs to $OUT/logs/NAME.log
  local name=$1 cap=$2
  shift 2
  local left=$((DEADLINE - ($(date +%s) - started)))
  if [ $left -lt 20 ]; then
    echo "$(printf '%-22s' "$name") skipped (${left}s left)" | tee -a "$SUMMARY"
    status=1
    return 1
  fi
  local begin
  begin=$(date +%s)
  timeout $((cap < left ? cap : left)) "$@" > "$OUT/logs/$name.log" 2>&1
  local rc=$?
  echo "$(printf '%-22s' "$name") rc=$rc $(($(date +%s) - begin))s" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || status=1
  return $rc
}

finish() {
  tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
  tar -czf "$OUT/results.tar.gz" -C "$OUT" results && rm -rf "$OUT/results"
  echo "total $(($(date +%s) - started))s, status $status" | tee -a "$SUMMARY"
}
trap finish EXIT

{
  echo "device check $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD 2>/dev/null) steps ${steps[*]}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$SUMMARY" 2>&1
cat "$SUMMARY"

if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >> "$SUMMARY" 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} NEXUS_FAST_USE_CUDA=1 PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-16}
step build 150 $PY -m pip install --no-build-isolation --no-deps -e . || {
  tail -n 40 "$OUT/logs/build.log"
  exit 1
}
step info 30 $PY -m nexus_fast.info

for name in "${steps[@]}"; do
  case $name in
    train_step)
      step bench-train_step 170 $PY benchmarks/run.py train_step --device cuda --out "$OUT/results"
      ;;
    tests)
      # The files holding GPU and Triton tests (the other files need packages the image lacks).
      files=$(grep -lE "mark\.(gpu|interpret)|triton_device" tests/test_*.py)
      step gpu-tests 240 $PY -m pytest -q -rfE -m "gpu or interpret" -p no:cacheprovider \
        -v -n 16 --timeout 120 $files
      ;;
    train)
      # The trainer on the GPU in bf16: the README's job with the CUDA device (animal-shapes
      # needs the animal-shape-mnist wheel in .whl).
      for method in vicreg dinov2; do
        step "train-$method" 90 $PY -m nexus_fast.cli pretrain --method $method --device cuda \
          --steps 200 --set precision=bf16 --no-linear --out "$OUT/logs/run-$method"
      done
      ;;
    kernels)
      for bench in ema patches masked_patch_loss masking mae_sequence attention regression \
        redundancy dino; do
        step "bench-$bench" 60 $PY benchmarks/run.py "$bench" --quick --device cuda \
          --out "$OUT/results"
      done
      ;;
    *) echo "unknown step $name" | tee -a "$SUMMARY" ;;
  esac
done
exit $status
