#!/usr/bin/env bash
# janus_fast --compat fairseq vs fairseq-generate on the same fairseq checkpoint, same machine.
#
#   bash scripts/fairseq_fixtures/bench_vs_fairseq.sh FAIRSEQ_VENV JANUS_PYTHON CHECKPOINT.pt DICT.txt \
#       DATA_BIN DATA_BIN_100 RAW_DIR WORK
#
# DATA_BIN / DATA_BIN_100: fairseq-preprocess'd test set (all 1,000 lines / the first 100) with
# DICT.txt; RAW_DIR: the same text as test_2016_flickr.{de,en} (tokenised as the model's data).
# Both run on one thread (OMP_NUM_THREADS=1), --iter-decode-max-iter 4, length beam 3, adaptive.
# fairseq's time is the one fairseq-generate reports for generation ("Translated N sentences ...
# in Xs"): batch 1 on the first 100 sentences, large batch (--max-tokens 4096) on all 1,000.
# janus_fast's is `janus-fast bench --compat fairseq` (batch 1: the first 100 sentences one per
# call; large batch: all 1,000, 4,096 source tokens per batch). Also checks that both give the
# same translations of the 1,000 sentences.
set -euo pipefail
VENV=$1 JPY=$2 CKPT=$3 DICT=$4 BIN=$5 BIN100=$6 RAW=$7 WORK=$8
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$WORK"
rm -rf "$WORK/converted"
$JPY -m janus_fast.cli convert --fairseq "$CKPT" --dict "$DICT" --output "$WORK/converted"
generate() {  # data-bin, batching options...
    local bin=$1; shift
    "$VENV/bin/fairseq-generate" "$bin" --gen-subset test --task translation_lev --path "$CKPT" \
        --model-overrides "{'checkpoint_activations': True}" --iter-decode-max-iter 4 \
        --iter-decode-with-beam 3 "$@" --cpu --seed 1 > "$WORK/gen.txt" 2> "$WORK/gen.log"
    echo "fairseq-generate max-iter 4 lb 3 $*: $(grep -o 'Translated.*' "$WORK/gen.log")"
}
generate "$BIN100" --batch-size 1
$JPY -m janus_fast.cli bench --model "$WORK/converted" --compat fairseq --data-dir "$RAW" --limit 1000 \
    --batch1 100 --repeats 1 --plot ""
generate "$BIN" --max-tokens 4096
grep '^H-' "$WORK/gen.txt" | sed 's/^H-//' | sort -n | cut -f3 > "$WORK/fairseq.txt"
$JPY -m janus_fast.cli translate --model "$WORK/converted" --compat fairseq --iterations 4 --length-beam 3 \
    -i "$RAW/test_2016_flickr.de" -o "$WORK/janus.txt" --no-progress
cmp "$WORK/fairseq.txt" "$WORK/janus.txt" && echo "same translations: $(wc -l < "$WORK/janus.txt") lines"
