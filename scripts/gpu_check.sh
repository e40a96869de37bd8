#!/usr/bin/env bash
# The GPU visit: build the package with the CUDA extension against the torch that is there (no
# download), then run janus_fast.gpu_check (GPU tests, kernel and decoding benchmarks, optional
# training) writing everything to --out. On a machine without a GPU: --dry-run (no CUDA build).
#
#   bash scripts/gpu_check.sh --out DIR --data-dir DIR [--train MINUTES] [--dry-run]
#
# PYTHON (default python3: the GPU image's python3 holds its torch, and it may have no `python`).
# The visit's time budget (gpu_check's --budget-seconds, 480 s on a GPU) counts from here, the
# build included.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
started_at=$(date +%s)
if [[ " $* " != *" --dry-run "* ]]; then
  "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  MAX_JOBS=${MAX_JOBS:-16} FORCE_CUDA=1 "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e . \
    > /tmp/janus_gpu_build.log 2>&1 || { tail -40 /tmp/janus_gpu_build.log; exit 1; }
fi
exec "$PYTHON" -m janus_fast.gpu_check --started-at "$started_at" "$@"
