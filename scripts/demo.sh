#!/usr/bin/env bash
# Set everything up and translate sample German sentences to English, non-autoregressively
# (mask-predict, 4 iterations) and autoregressively (greedy), with the shipped model. If no model
# is shipped in this checkout, a small one is trained first (a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
MODEL_ARGS=()
if [ ! -f janus_fast/pretrained/multi30k-de-en/config.json ]; then
  if [ ! -f runs/demo/last/config.json ] || [ ! -f runs/demo/.done ]; then
    echo "no shipped model: training a small demo model into runs/demo (resumable)"
    janus-fast train --output-dir runs/demo --data-dir ../shared/data/multi30k --max-updates 600 \
      --epochs 100 --valid-limit 200 --d-model 256 --encoder-layers 3 --decoder-layers 3 --lr 1e-3
    touch runs/demo/.done
  fi
  MODEL_ARGS=(--model runs/demo/last)
fi
SAMPLES=$'Ein Mann fährt mit dem Fahrrad eine Straße entlang.\nZwei Hunde spielen im Schnee.\n\nEine Frau in einem roten Kleid singt auf einer Bühne.'
echo "--- NAR (mask-predict, 4 iterations, length beam 3)"
printf '%s\n' "$SAMPLES" | janus-fast translate "${MODEL_ARGS[@]}" --mode nar --iterations 4
echo "--- AR (greedy)"
printf '%s\n' "$SAMPLES" | janus-fast translate "${MODEL_ARGS[@]}" --mode ar
