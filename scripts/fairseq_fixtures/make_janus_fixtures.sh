#!/usr/bin/env bash
# Reproduce the JANUS-plugin golden fixtures (fairseq 0.12.2, torch 2.4.1, CPU, one thread).
#   [TRAIN=0] [VENV=..] [PLUGIN=..] [ARFIX=..] [DICT=..] [RAW=..] [WORK=..] [OUT=..] bash make_janus_fixtures.sh
# VENV: a virtual environment with fairseq 0.12.2. DICT and RAW: the dictionary and text of
# make_fixtures.sh (its WORK directory).
# Plugin: github dropreg/JANUS (commit 116039b), directory janus/src used as --user-dir, unpatched.
# ARFIX: a copy of janus/src whose query-stream pass of an incremental AR step attends to the self-attention
# cache as it is (the content pass of the step already appended its key/value) instead of appending the
# same key/value again; used only for the *_arfix outputs (python_tests/data/fairseq/README.md explains why).
set -euo pipefail
. "${VENV:-$HOME/fairseq-venv}/bin/activate"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PLUGIN=${PLUGIN:-$HOME/janus-plugin/src/janus/src}
ARFIX=${ARFIX:-$HOME/janus-plugin/src-arfix/janus_arfix}
WORK=${WORK:-/tmp/janus-plugin-work}
OUT=${OUT:-/tmp/janus-plugin-fixtures}
DICT=${DICT:-$HOME/fq-out/dict.txt}  # joined dictionary (2,652 lines -> 2,656 types)
RAW=${RAW:-$HOME/fq-work/raw}        # lower-cased, punctuation-split Multi30k text (prepare_text.py)
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$WORK" "$OUT"

if [ "${TRAIN:-1}" = 1 ]; then
  # 1. binarise: 2,000 training pairs, 200 valid, and the first 20 test sentences
  rm -rf "$WORK/data-bin" "$WORK/data-bin20" "$WORK/raw20"; mkdir -p "$WORK/raw20"
  fairseq-preprocess --source-lang de --target-lang en --trainpref "$RAW/train" --validpref "$RAW/valid" \
      --testpref "$RAW/test" --destdir "$WORK/data-bin" --srcdict "$DICT" --tgtdict "$DICT" --workers 1 > "$WORK/preprocess.log"
  head -20 "$RAW/test.de" > "$WORK/raw20/test.de"; head -20 "$RAW/test.en" > "$WORK/raw20/test.en"
  fairseq-preprocess --source-lang de --target-lang en --testpref "$WORK/raw20/test" --destdir "$WORK/data-bin20" \
      --srcdict "$DICT" --tgtdict "$DICT" --workers 1 >> "$WORK/preprocess.log"
  # 2. train the tiny JANUS model: 1,200 updates (about 13 minutes on one busy CPU core)
  rm -rf "$WORK/run"; mkdir -p "$WORK/run"
  nice -n 19 fairseq-train "$WORK/data-bin" --user-dir "$PLUGIN" --task janus_translation --arch janus_transformer -s de -t en \
   --share-all-embeddings --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 64 --decoder-embed-dim 64 \
   --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128 --encoder-attention-heads 4 --decoder-attention-heads 4 \
   --encoder-learned-pos --decoder-learned-pos --apply-bert-init --max-source-positions 256 --max-target-positions 256 \
   --criterion janus_loss --optimizer adam --adam-betas '(0.9,0.98)' --lr 0.002 --lr-scheduler inverse_sqrt \
   --warmup-updates 40 --warmup-init-lr 1e-07 --weight-decay 0.01 --dropout 0.1 --max-tokens 2048 \
   --max-update 1200 --seed 1 --cpu --num-workers 0 --save-dir "$WORK/run" --no-epoch-checkpoints \
   --disable-validation --save-interval-updates 100 --keep-interval-updates 1 --log-interval 10 --no-progress-bar \
   > "$WORK/train.log" 2>&1
  # (the run that made janus_trained.pt was 300 updates, then resumed from checkpoint_last.pt with
  #  --max-update 1200 -- same command otherwise; a single 1,200-update run will differ in the weights)
  python "$HERE/strip_checkpoint.py" "$WORK/run/checkpoint_last.pt" "$OUT/janus_trained.pt"
  cp "$DICT" "$OUT/dict.txt"; cp "$WORK/raw20/test.de" "$OUT/test20.de"; cp "$WORK/raw20/test.en" "$OUT/test20.en"
fi

gen() {  # name user-dir checkpoint mode options...
  local name=$1 udir=$2 ckpt=$3 mode=$4; shift 4
  nice -n 19 fairseq-generate "$WORK/data-bin20" --user-dir "$udir" --task janus_translation -s de -t en \
      --gen-subset test --path "$ckpt" --model-overrides "{'checkpoint_activations': True}" \
      --inference-mode "$mode" --batch-size 20 --cpu --seed 1 "$@" > "$OUT/generate_${name}.txt" 2> "$WORK/gen_${name}.log"
  grep -o 'Translated.*' "$WORK/gen_${name}.log" | sed "s/^/$name: /"
}
for model in janus_trained ${EXTRA_MODELS:-}; do
  C="$OUT/$model.pt"
  # NAR: mask-predict on the content stream (length beam, adaptive or forced iterations)
  gen ${model}_nar_iter4_beam3_adaptive  "$PLUGIN" "$C" nar --iter-decode-max-iter 4 --iter-decode-with-beam 3 --print-step
  gen ${model}_nar_iter4_beam3_force     "$PLUGIN" "$C" nar --iter-decode-max-iter 4 --iter-decode-with-beam 3 --iter-decode-force-max-iter --print-step
  gen ${model}_nar_iter4_beam3_force_history "$PLUGIN" "$C" nar --iter-decode-max-iter 4 --iter-decode-with-beam 3 --iter-decode-force-max-iter --print-step --retain-iter-history
  gen ${model}_nar_iter9_beam5_adaptive  "$PLUGIN" "$C" nar --iter-decode-max-iter 9 --iter-decode-with-beam 5 --print-step
  gen ${model}_nar_iter10_beam3_force    "$PLUGIN" "$C" nar --iter-decode-max-iter 10 --iter-decode-with-beam 3 --iter-decode-force-max-iter --print-step
  gen ${model}_nar_iter0_beam1           "$PLUGIN" "$C" nar --iter-decode-max-iter 0 --iter-decode-with-beam 1 --print-step
  # AR: the plugin's own SequenceGenerator (incremental decoding); --print-step is not supported there
  gen ${model}_ar_beam1                  "$PLUGIN" "$C" ar --beam 1
  gen ${model}_ar_beam5                  "$PLUGIN" "$C" ar --beam 5
  # AR with the ARFIX copy (incremental decoding made equal to the full-sequence forward_ar)
  gen ${model}_ar_beam1_arfix            "$ARFIX"  "$C" ar --beam 1
  gen ${model}_ar_beam5_arfix            "$ARFIX"  "$C" ar --beam 5
done
# the files python_tests/data/fairseq/ keeps: the trained model, its NAR outputs, its AR greedy and beam 5 (ARFIX)
REPO=$(cd "$HERE/../.." && pwd); FIX="$REPO/python_tests/data/fairseq"
cp "$OUT/janus_trained.pt" "$FIX/janus.pt"
for s in "nar_iter4_beam3_adaptive iter4_beam3_adaptive" "nar_iter4_beam3_force iter4_beam3_force" \
         "nar_iter9_beam5_adaptive iter9_beam5_adaptive" "nar_iter10_beam3_force iter10_beam3_force" \
         "nar_iter0_beam1 iter0_beam1_adaptive"; do
  set -- $s; grep -E '^(H|P)-' "$OUT/generate_janus_trained_$1.txt" > "$FIX/generate_janus_$2.txt"
done
grep -E '^(H|P)-' "$OUT/generate_janus_trained_ar_beam1_arfix.txt" > "$FIX/ar_janus_greedy.txt"
grep -E '^(H|P)-' "$OUT/generate_janus_trained_ar_beam5_arfix.txt" > "$FIX/ar_janus_beam5.txt"
ls -la "$OUT"
