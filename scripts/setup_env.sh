#!/usr/bin/env bash
# Create (or reuse) .venv with the CPU build of torch and install janus_fast in editable mode,
# building its C++ extension (and the CUDA one where a toolkit and a CUDA torch are present).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip "setuptools>=69" wheel
# the CPU wheel of torch (an open version range would pull a multi-GB CUDA build)
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet ninja pybind11 numpy
MAX_JOBS=${MAX_JOBS:-2} python -m pip install --quiet --no-build-isolation -e ".[dev,triton]"
python -c "import janus_fast.ops as ops; print('janus_fast installed; native ops:', ops.HAS_NATIVE_OPS)"
