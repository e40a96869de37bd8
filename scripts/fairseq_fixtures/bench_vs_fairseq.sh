#!/usr/bin/env bash
# janus_fast --compat fairseq vs fairseq-generate on the same fairseq checkpoint, same machine.
#
#   [KIND=cmlm|transformer] bash scripts/fairseq_fixtures/bench_vs_fairseq.sh FAIRSEQ_VENV JANUS_PYTHON \
#       CHECKPOINT.pt DICT.txt DATA_BIN DATA_BIN_100 RAW_DIR WORK
#
# DATA_BIN / DATA_BIN_100: fairseq-preprocess'd test set (all 1,000 lines / the first 100) with
# DICT.txt; RAW_DIR: the same text as test_2016_flickr.{de,en} (tokenised as the model's data).
# Both run on one thread (OMP_NUM_THREADS=1). KIND=cmlm (default): a cmlm_transformer,
# --iter-decode-max-iter 4, length beam 3, adaptive. KIND=transformer: a plain transformer, AR
# greedy and beam 5 (fairseq's --task translation).
# fairseq's time is the one fairseq-generate reports for generation ("Translated N sentences ...
# in Xs"): batch 1 on the first 100 sentences, large batch (--max-tokens 4096) on all 1,000.
# janus_fast's is `janus-fast bench --compat fairseq` (batch 1: the first 100 sentences one per
# call; large batch: all 1,000, 4,096 source tokens per batch). Also checks that both give the
# same translations of the 1,000 sentences.
set -euo pipefail
VENV=$1 JPY=$2 CKPT=$3 DICT=$4 BIN=$5 BIN100=$6 RAW=$7 WORK=$8
KIND=${KIND:-cmlm}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$WORK"
rm -rf "$WORK/converted"
$JPY -m janus_fast.cli convert --fairseq "$CKPT" --dict "$DICT" --output "$WORK/converted"
case $KIND in
  cmlm) SETTINGS=("--task translation_lev --iter-decode-max-iter 4 --iter-decode-with-beam 3")
        JANUS=("--mode nar --iterations 4 --length-beam 3") ;;
  transformer) SETTINGS=("--task translation --beam 1" "--task translation --beam 5")
        JANUS=("--mode ar --beam 1" "--mode ar --beam 5") ;;
  *) echo "KIND must be cmlm or transformer" >&2; exit 2 ;;
esac
generate() {  # data-bin, settings, batching options...
    local bin=$1 setting=$2; shift 2
    # shellcheck disable=SC2086  # $setting is a list of options
    "$VENV/bin/fairseq-generate" "$bin" --gen-subset test $setting --path "$CKPT" \
        --model-overrides "{'checkpoint_activations': True}" "$@" --cpu --seed 1 > "$WORK/gen.txt" 2> "$WORK/gen.log"
    echo "fairseq-generate $setting $*: $(grep -o 'Translated.*' "$WORK/gen.log")"
}
for setting in "${SETTINGS[@]}"; do generate "$BIN100" "$setting" --batch-size 1; done
$JPY -m janus_fast.cli bench --model "$WORK/converted" --compat fairseq --data-dir "$RAW" --limit 1000 \
    --batch1 100 --repeats 1 --plot ""
for i in "${!SETTINGS[@]}"; do
    generate "$BIN" "${SETTINGS[$i]}" --max-tokens 4096
    grep '^H-' "$WORK/gen.txt" | sed 's/^H-//' | sort -n | cut -f3 > "$WORK/fairseq.txt"
    # shellcheck disable=SC2086
    $JPY -m janus_fast.cli translate --model "$WORK/converted" --compat fairseq ${JANUS[$i]} \
        -i "$RAW/test_2016_flickr.de" -o "$WORK/janus.txt" --no-progress
    cmp "$WORK/fairseq.txt" "$WORK/janus.txt" && echo "same translations (${JANUS[$i]}): $(wc -l < "$WORK/janus.txt") lines"
done
