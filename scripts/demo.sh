#!/usr/bin/env bash
# Set everything up and translate sample German sentences to English, non-autoregressively
# (mask-predict, 4 iterations) and autoregressively (greedy), with the shipped model. If no model
# is shipped in this checkout, a small one is trained first on the corpus in DATA_DIR (a folder
# with Multi30k's train/val .de/.en files; about 5 minutes on 2 cores; rough translations).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
MODEL_ARGS=()
if [ ! -f janus_fast/pretrained/multi30k-de-en/config.json ]; then
  if [ ! -f runs/demo/last/config.json ] || [ ! -f runs/demo/.done ]; then
    echo "no shipped model: training a small demo model into runs/demo (resumable)"
    : "${DATA_DIR:?no shipped model here: set DATA_DIR to a Multi30k folder to train a demo model}"
    janus-fast train --output-dir runs/demo --data-dir "$DATA_DIR" --vocab-size 4000 \
      --d-model 128 --ffn-dim 512 --encoder-layers 2 --decoder-layers 2 --max-tokens 3000 \
      --max-updates 120 --warmup-updates 40 --lr 3e-3 --save-every 40 --valid-limit 100 --valid-iterations 2
    touch runs/demo/.done
  fi
  MODEL_ARGS=(--model runs/demo/last)
fi
SAMPLES=$'Ein Mann fährt mit dem Fahrrad eine Straße entlang.\nZwei Hunde spielen im Schnee.\n\nEine Frau in einem roten Kleid singt auf einer Bühne.'
echo "--- NAR (mask-predict, 4 iterations, length beam 3)"
printf '%s\n' "$SAMPLES" | janus-fast translate "${MODEL_ARGS[@]}" --mode nar --iterations 4
echo "--- AR (greedy)"
printf '%s\n' "$SAMPLES" | janus-fast translate "${MODEL_ARGS[@]}" --mode ar
echo "--- speculative (NAR drafts, AR verifies: AR greedy's output)"
printf '%s\n' "$SAMPLES" | janus-fast translate "${MODEL_ARGS[@]}" --mode spec
