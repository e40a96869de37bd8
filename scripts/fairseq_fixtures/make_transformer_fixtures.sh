#!/usr/bin/env bash
# The plain-transformer golden fixtures (fairseq 0.12.2, torch 2.4.1, CPU, one thread):
# python_tests/data/fairseq/{transformer.pt, ar_transformer_greedy.txt, ar_transformer_beam5.txt}.
#   [VENV=..] [DATA_BIN=..] [DATA_BIN20=..] [WORK=..] bash make_transformer_fixtures.sh
# DATA_BIN / DATA_BIN20: the binarised 2,000 training pairs and the first 20 test sentences of
# make_janus_fixtures.sh (same joined dictionary, python_tests/data/fairseq/dict.txt).
set -euo pipefail
VENV=${VENV:-$HOME/fairseq-venv}
DATA_BIN=${DATA_BIN:-/tmp/janus-plugin-work/data-bin}
DATA_BIN20=${DATA_BIN20:-/tmp/janus-plugin-work/data-bin20}
WORK=${WORK:-/tmp/fq-transformer}
HERE=$(cd "$(dirname "$0")" && pwd)
FIX=$(cd "$HERE/../.." && pwd)/python_tests/data/fairseq
. "$VENV/bin/activate"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$WORK"
# 1. a tiny post-norm transformer (sinusoidal positions, relu, shared embeddings): 800 updates, ~2 minutes
rm -rf "$WORK/run"
fairseq-train "$DATA_BIN" --task translation --arch transformer -s de -t en \
  --share-all-embeddings --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 64 --decoder-embed-dim 64 \
  --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128 --encoder-attention-heads 4 --decoder-attention-heads 4 \
  --max-source-positions 256 --max-target-positions 256 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
  --optimizer adam --adam-betas '(0.9,0.98)' --lr 0.002 --lr-scheduler inverse_sqrt --warmup-updates 40 \
  --warmup-init-lr 1e-07 --weight-decay 0.01 --dropout 0.1 --max-tokens 2048 --max-update 800 --seed 1 --cpu \
  --num-workers 0 --save-dir "$WORK/run" --no-epoch-checkpoints --disable-validation \
  --log-interval 50 --no-progress-bar > "$WORK/train.log" 2>&1
python "$HERE/strip_checkpoint.py" "$WORK/run/checkpoint_last.pt" "$WORK/transformer.pt"
# 2. fairseq-generate, greedy and beam 5 (checkpoint_activations keeps fairseq 0.12.2 off torch's
#    fused encoder path, which fails on padded batches)
for beam in 1 5; do
  fairseq-generate "$DATA_BIN20" --task translation -s de -t en --gen-subset test --path "$WORK/transformer.pt" \
      --model-overrides "{'checkpoint_activations': True}" --beam $beam --batch-size 20 --cpu --seed 1 \
      > "$WORK/gen_beam$beam.txt" 2> "$WORK/gen_beam$beam.log"
done
cp "$WORK/transformer.pt" "$FIX/transformer.pt"
grep -E '^(H|P)-' "$WORK/gen_beam1.txt" > "$FIX/ar_transformer_greedy.txt"
grep -E '^(H|P)-' "$WORK/gen_beam5.txt" > "$FIX/ar_transformer_beam5.txt"
