#!/usr/bin/env bash
# A random fairseq CMLM of a given shape for the speed comparisons, from WORK/raw/{test,test100}.{de,en}
# and WORK/dict.txt (spm_text.py): fairseq-preprocess (WORK/data-bin: all of test, WORK/data-bin100: its
# first 100), fairseq-train (one update at lr 1e-9, on one thread) and make_bench_model.py (weights x 8,
# length head = source length).
#
#   bash scripts/fairseq_fixtures/make_random_cmlm.sh FAIRSEQ_VENV WORK LAYERS DIM FFN HEADS POSITIONS OUT.pt
set -euo pipefail
VENV=$1 WORK=$2 LAYERS=$3 DIM=$4 FFN=$5 HEADS=$6 POSITIONS=$7 OUT=$8
HERE=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$WORK"
rm -rf data-bin data-bin100 fresh
"$VENV/bin/fairseq-preprocess" --source-lang de --target-lang en --trainpref raw/test --validpref raw/test100 \
    --testpref raw/test --destdir data-bin --srcdict dict.txt --tgtdict dict.txt --workers 1 > prep.log 2>&1
"$VENV/bin/fairseq-preprocess" --source-lang de --target-lang en --testpref raw/test100 --destdir data-bin100 \
    --srcdict dict.txt --tgtdict dict.txt --workers 1 > prep100.log 2>&1
"$VENV/bin/fairseq-train" data-bin --task translation_lev --noise random_mask --arch cmlm_transformer \
    --share-all-embeddings --encoder-layers "$LAYERS" --decoder-layers "$LAYERS" --encoder-embed-dim "$DIM" \
    --decoder-embed-dim "$DIM" --encoder-ffn-embed-dim "$FFN" --decoder-ffn-embed-dim "$FFN" \
    --encoder-attention-heads "$HEADS" --decoder-attention-heads "$HEADS" --encoder-learned-pos \
    --decoder-learned-pos --pred-length-offset --apply-bert-init --max-source-positions "$POSITIONS" \
    --max-target-positions "$POSITIONS" --criterion nat_loss --optimizer adam --lr 1e-9 --max-tokens 1024 \
    --max-update 1 --seed 3 --cpu --num-workers 0 --save-dir fresh --no-epoch-checkpoints --disable-validation \
    > train.log 2>&1
"$VENV/bin/python" "$HERE/make_bench_model.py" fresh/checkpoint_last.pt "$OUT"
