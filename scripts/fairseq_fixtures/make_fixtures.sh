#!/usr/bin/env bash
# Make the golden fixtures of python_tests/test_fairseq.py with real fairseq 0.12.2.
#
#   bash scripts/fairseq_fixtures/make_fixtures.sh FAIRSEQ_VENV MULTI30K_DIR TRAINED_CMLM.pt DICT.txt WORK OUT
#
# FAIRSEQ_VENV: a Python 3.10 venv with torch==2.4.1 fairseq==0.12.2 'numpy<2' (pip<24.1 to install).
# TRAINED_CMLM.pt: a small trained fairseq cmlm_transformer over DICT.txt (joined dictionary; here
# a 400-update model trained with fairseq-train on the same 2,000 pairs),
# trained on to 1,600 updates here. Writes to OUT: the two checkpoints (trained, prenorm), dict.txt, test.de and one fairseq-generate output per (model, --iter-decode-max-iter,
# --iter-decode-with-beam, adaptive/force). Takes about 20 minutes on 2 CPU cores.
set -euo pipefail
VENV=$1 DATA=$2 TRAINED=$3 DICT=$4 WORK=$5 OUT=$6
HERE=$(cd "$(dirname "$0")" && pwd)
PY=$VENV/bin/python
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$WORK/raw" "$OUT"

# 1. text: lower-cased, punctuation split off words (as the trained model's data)
$PY "$HERE/prepare_text.py" "$DATA" "$WORK/raw"
# 2. binarise with the model's dictionary
rm -rf "$WORK/data-bin"
"$VENV/bin/fairseq-preprocess" --source-lang de --target-lang en --trainpref "$WORK/raw/train" \
    --validpref "$WORK/raw/valid" --testpref "$WORK/raw/test" --destdir "$WORK/data-bin" \
    --srcdict "$DICT" --tgtdict "$DICT" --workers 1 > "$WORK/preprocess.log"
# 3. train TRAINED on to 1,600 updates (its optimizer state was dropped: a fresh Adam and schedule);
#    KEEP_TRAINED=1 reuses WORK/longer from an earlier run of this script
if [ "${KEEP_TRAINED:-0}" != 1 ]; then
rm -rf "$WORK/longer"; mkdir -p "$WORK/longer"
cp "$TRAINED" "$WORK/longer/checkpoint_last.pt"; chmod u+w "$WORK/longer/checkpoint_last.pt"
"$VENV/bin/fairseq-train" "$WORK/data-bin" --task translation_lev --noise random_mask --arch cmlm_transformer \
    --share-all-embeddings --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 64 --decoder-embed-dim 64 \
    --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128 --encoder-attention-heads 4 --decoder-attention-heads 4 \
    --encoder-learned-pos --decoder-learned-pos --apply-bert-init --max-source-positions 256 \
    --max-target-positions 256 --criterion nat_loss --label-smoothing 0.1 --optimizer adam --adam-betas '(0.9,0.98)' \
    --lr 0.002 --lr-scheduler inverse_sqrt --warmup-updates 40 --warmup-init-lr 1e-07 --weight-decay 0.01 \
    --dropout 0.1 --max-tokens 2048 --max-update 1600 --seed 1 --cpu --num-workers 0 --save-dir "$WORK/longer" \
    --reset-optimizer --reset-lr-scheduler --no-epoch-checkpoints --disable-validation \
    --save-interval-updates 200 --keep-interval-updates 1 > "$WORK/train_longer.log"
fi
# 4. a freshly initialised pre-norm variant (sinusoidal positions, length offset, gelu), built and
#    saved by fairseq itself: one update at a negligible learning rate
rm -rf "$WORK/prenorm"
"$VENV/bin/fairseq-train" "$WORK/data-bin" --task translation_lev --noise random_mask --arch cmlm_transformer \
    --share-all-embeddings --encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 32 --decoder-embed-dim 32 \
    --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 --encoder-attention-heads 2 --decoder-attention-heads 2 \
    --encoder-normalize-before --decoder-normalize-before --pred-length-offset --activation-fn gelu \
    --apply-bert-init --max-source-positions 128 --max-target-positions 128 --criterion nat_loss \
    --optimizer adam --lr 1e-9 --max-tokens 1024 --max-update 1 --seed 7 --cpu --num-workers 0 \
    --save-dir "$WORK/prenorm" --no-epoch-checkpoints --disable-validation > "$WORK/train_prenorm.log"
# 5. the checkpoints, stripped of optimizer state; "prenorm" gets scaled weights
$PY "$HERE/make_models.py" "$WORK/longer/checkpoint_last.pt" "$WORK/prenorm/checkpoint_last.pt" "$OUT"
cp "$DICT" "$OUT/dict.txt"
cp "$WORK/raw/test.de" "$OUT/test.de"
# 6. fairseq-generate, each model and setting
settings="4:3:adaptive 4:3:force 9:5:adaptive 9:5:force 2:1:adaptive 1:4:force 0:2:adaptive 6:2:adaptive 20:5:adaptive"
for model in trained prenorm; do
    for setting in $settings; do
        IFS=: read -r iters beam stop <<< "$setting"
        force=""; [ "$stop" = force ] && force="--iter-decode-force-max-iter"
        "$VENV/bin/fairseq-generate" "$WORK/data-bin" --gen-subset test --task translation_lev \
            --path "$OUT/$model.pt" --model-overrides "{'checkpoint_activations': True}" \
            --iter-decode-max-iter "$iters" --iter-decode-with-beam "$beam" $force \
            --batch-size 16 --cpu --seed 1 > "$WORK/gen.txt" 2> "$WORK/gen.log"
        # keep the hypothesis lines only (H-id, score, tokens; P-id positional scores)
        grep -E '^(H|P)-' "$WORK/gen.txt" > "$OUT/generate_${model}_iter${iters}_beam${beam}_${stop}.txt"
    done
done
ls -la "$OUT"
