#!/usr/bin/env bash
# Create (or reuse) .venv with torch 2.13.0 (the CPU build where TORCH_INDEX_URL names the CPU index
# or the index holds only that; from PyPI on Linux the CUDA build) and install janus_fast in editable mode,
# building its C++ extension (and the CUDA one where a toolkit and a CUDA torch are present).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip "setuptools>=69" wheel
# a pinned torch (an open version range would pull a multi-GB CUDA build); TORCH_INDEX_URL (e.g.
# https://download.pytorch.org/whl/cpu) chooses the CPU build where the index would give the CUDA one
python -m pip install --quiet "torch==2.13.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
python -m pip install --quiet ninja pybind11 numpy
MAX_JOBS=${MAX_JOBS:-2} python -m pip install --quiet --no-build-isolation -e ".[dev,triton]"
python -c "import janus_fast.ops as ops; print('janus_fast installed; native ops:', ops.HAS_NATIVE_OPS)"
