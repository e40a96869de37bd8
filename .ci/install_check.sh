#!/usr/bin/env bash
# Install janus_fast the way the README tells users to, in a fresh virtual environment under /tmp:
# `pip install torch==2.13.0`, then a plain `pip install <checkout>` (pip's isolated build, no
# --no-build-isolation), and check that the installed package works with its native op: the op is
# compiled against the installed torch on first use (into a fresh cache directory, so the build
# really runs), janus_fast.ops.uses_native_ops() is True, the op agrees with the PyTorch reference,
# and `janus-fast translate` (run without activating the environment) translates a sentence.
#
# Takes a couple of minutes, most of it the first-use compile. Environment: MAX_JOBS (compile jobs,
# default 2), JANUS_INSTALL_CHECK_DIR (default: a new temporary directory, removed afterwards).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
if [ -n "${JANUS_INSTALL_CHECK_DIR:-}" ]; then
  work=$JANUS_INSTALL_CHECK_DIR
  rm -rf "$work" && mkdir -p "$work"
else
  work=$(mktemp -d /tmp/janus_install_check.XXXXXX)
  trap 'rm -rf "$work"' EXIT
fi
started=$(date +%s)

"$PYTHON" -m venv "$work/venv"
python="$work/venv/bin/python"
export JANUS_FAST_CACHE_DIR="$work/cache"  # a fresh cache: the first-use build runs here
export MAX_JOBS=${MAX_JOBS:-2}
unset JANUS_FAST_NO_EXTENSION JANUS_FAST_FORCE_REFERENCE

echo "install_check: pip install torch==2.13.0, then pip install $repo (in $work/venv)"
"$python" -m pip install --quiet torch==2.13.0
"$python" -m pip install --quiet "$repo"
installed=$(date +%s)
echo "install_check: installed in $(( installed - started )) s"

cd "$work"  # not the checkout: the installed package is imported
"$python" - <<'PY'
import time

import torch

assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__}: the install changed torch"
start = time.perf_counter()
import janus_fast._C  # noqa: E402,F401  (the first-use build)
import janus_fast.ops as ops  # noqa: E402

assert ops.uses_native_ops(), f"native op not used: {ops.NATIVE_IMPORT_ERROR}"
library = getattr(janus_fast._C, "LIBRARY", janus_fast._C.__file__)
print(f"install_check: janus_fast._C ready in {time.perf_counter() - start:.0f} s: {library}")
torch.manual_seed(0)
logits = torch.randn(3, 9, 17)
lengths = torch.tensor([9, 5, 2])
tokens = torch.full((3, 9), 4, dtype=torch.int64)
tokens[:, 0] = 0
out = []
for step in (ops.mask_predict_step, ops.mask_predict_step_reference):
    state = (tokens.clone(), torch.zeros(3, 9))
    out.append((step(logits, *state, lengths, 0, 3, 4), *state))
(native_mask, native_tokens, native_scores), (mask, tokens, scores) = out
assert torch.equal(native_mask, mask) and torch.equal(native_tokens, tokens), "native op and reference disagree"
torch.testing.assert_close(native_scores, scores, rtol=1e-5, atol=1e-4)
print("install_check: native op matches the reference")
PY

translation=$(echo "Zwei Hunde spielen im Schnee." | "$work/venv/bin/janus-fast" translate)
echo "install_check: janus-fast translate -> $translation"
[ -n "$translation" ] || { echo "install_check: FAILED, empty translation" >&2; exit 1; }
echo "install_check: OK in $(( $(date +%s) - started )) s"
