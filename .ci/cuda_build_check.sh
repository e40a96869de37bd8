#!/usr/bin/env bash
# Compile check of the CUDA kernels (csrc/cuda/*.cu) without a GPU.
#
# Builds janus_fast._C with FORCE_CUDA=1 against a CUDA build of torch in a separate venv, then
# loads the built library (no GPU code runs) and checks that janus_fast::mask_predict_step and
# janus_fast::speculative_accept have CUDA kernels registered. Exits 0 without doing anything when
# nvcc is absent; non-zero when the build or the check fails. Takes several minutes (the first run installs torch==2.14.1 with
# CUDA 13.0, several GB, into the venv; later runs reuse it).
#
# Environment: JANUS_CUDA_VENV (default /tmp/janus_cuda_venv), JANUS_CUDA_BUILD (default
# /tmp/janus_cuda_build), MAX_JOBS (default 2), TORCH_CUDA_ARCH_LIST (default "8.0;9.0").
set -euo pipefail

CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "cuda_build_check: no nvcc at $CUDA_HOME/bin/nvcc, skipping the CUDA build check"
  exit 0
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${JANUS_CUDA_VENV:-/tmp/janus_cuda_venv}
build_lib=${JANUS_CUDA_BUILD:-/tmp/janus_cuda_build}
started=$(date +%s)

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
python="$venv/bin/python"
export PATH="$venv/bin:$PATH"  # ninja from the venv

if ! "$python" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' 2>/dev/null; then
  echo "cuda_build_check: installing torch==2.14.1 (CUDA build) into $venv"
  "$python" -m pip install --quiet torch==2.14.1
fi
"$python" -c 'import torch
assert torch.version.cuda is not None, f"torch {torch.__version__} in the venv is not a CUDA build"
print(f"cuda_build_check: torch {torch.__version__}, CUDA {torch.version.cuda}")'
"$python" -m pip install --quiet setuptools ninja pybind11 numpy

# Build from a copy of the sources so that the working tree's CPU-only _C is left alone.
source_copy=$(mktemp -d /tmp/janus_cuda_src.XXXXXX)
trap 'rm -rf "$source_copy"' EXIT
cp -r "$repo/setup.py" "$repo/csrc" "$repo/janus_fast" "$source_copy/"
[ -d "$repo/kernels" ] && cp -r "$repo/kernels" "$source_copy/"
[ -f "$repo/pyproject.toml" ] && cp "$repo/pyproject.toml" "$source_copy/"
find "$source_copy/janus_fast" -name '_C*.so' -delete
rm -rf "$build_lib"

echo "cuda_build_check: building with nvcc ($("$CUDA_HOME/bin/nvcc" --version | tail -1))"
(
  cd "$source_copy"
  CUDA_HOME="$CUDA_HOME" FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}" \
    MAX_JOBS="${MAX_JOBS:-2}" "$python" setup.py build_ext --build-lib "$build_lib"
)

library=$(find "$build_lib/janus_fast" -name '_C*.so' | head -1)
if [ -z "$library" ]; then
  echo "cuda_build_check: FAILED, no janus_fast/_C*.so under $build_lib" >&2
  exit 1
fi
(
  cd /tmp
  "$python" - "$library" <<'PY'
import sys

import torch

torch.ops.load_library(sys.argv[1])
for name in ("mask_predict_step", "mask_predict_remask", "speculative_accept"):
    op = getattr(torch.ops.janus_fast, name)
    print("cuda_build_check: schema", op.default._schema)
    for key in ("CPU", "CUDA", "Meta"):
        has = torch._C._dispatch_has_kernel_for_dispatch_key(f"janus_fast::{name}", key)
        print(f"cuda_build_check: {name}: {key} kernel registered: {has}")
        if not has:
            sys.exit(f"cuda_build_check: FAILED, no {key} kernel for janus_fast::{name}")
PY
)
echo "cuda_build_check: OK in $(( $(date +%s) - started )) s"
