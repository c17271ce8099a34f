#!/usr/bin/env bash
# Sets up .venv for nexus_fast: torch (the CPU wheel by default), the package built in place with
# its compiled kernels, and the development tools. Safe to run again: it only adds what is missing.
#   NEXUS_FAST_TORCH  the torch requirement to install when torch is absent (default torch==2.13.0;
#                     without a pin pip would fetch a multi-GB CUDA build)
#   PYTHON            the interpreter that creates .venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade "pip>=23" "setuptools>=70" wheel
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "${NEXUS_FAST_TORCH:-torch==2.13.0}"
fi
# --no-build-isolation: compile against the torch installed above, not a fresh download.
python -m pip install --quiet --no-build-isolation -e ".[dev]"
python -c "import nexus_fast; print('nexus_fast', nexus_fast.__version__, 'ready in .venv;',
      'compiled kernels:', 'yes' if nexus_fast.extension_is_built() else 'NO (see nexus-fast info)')"
