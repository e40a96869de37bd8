#!/usr/bin/env bash
# Issue 31's fairseq row at transformer-base size: a random fairseq CMLM of d 512, FFN 2048, 8 heads,
# 6+6 layers and a 32,000-symbol dictionary (the shipped model's 8,000 SentencePiece pieces, then
# filler symbols that the text never uses but the output projection computes), built by
# fairseq-train (one update at lr 1e-9) and make_bench_model.py (weights x 8, length head = source
# length), then fairseq-generate against `janus-fast --compat fairseq` on the converted checkpoint
# (NAR, 5 passes over 3 length candidates), same machine, 1 thread, and the same translations checked.
#
#   bash scripts/fairseq_fixtures/bench_base_shape.sh FAIRSEQ_VENV JANUS_PYTHON DATA_DIR WORK
#
# DATA_DIR holds test_2016_flickr.{de,en}.gz (Multi30k). FAIRSEQ_VENV: fairseq 0.12.2 (Python 3.10,
# torch 2.4.1, numpy < 2). The model is built once (WORK/cmlm_base.pt is kept); PREPARE_ONLY=1 stops
# after building it (the timings want a quiet machine, the building does not).
set -euo pipefail
VENV=$1 JPY=$2 DATA=$3
WORK=$(mkdir -p "$4" && cd "$4" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MODEL="$REPO/janus_fast/pretrained/multi30k-de-en"
mkdir -p "$WORK/raw"
if [ ! -f "$WORK/cmlm_base.pt" ]; then
$JPY "$HERE/spm_text.py" "$MODEL/spm.model" "$DATA" "$WORK" 32000
bash "$HERE/make_random_cmlm.sh" "$VENV" "$WORK" 6 512 2048 8 256 cmlm_base.pt
fi
[ "${PREPARE_ONLY:-0}" = 1 ] && exit 0
cd "$WORK"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
SETTINGS=(--task translation_lev --iter-decode-max-iter 4 --iter-decode-with-beam 3)
rm -rf converted
$JPY -m janus_fast.cli convert --fairseq cmlm_base.pt --dict dict.txt --output converted
for batch in "data-bin100 --batch-size 1" "data-bin --max-tokens 4096"; do
    set -- $batch
    "$VENV/bin/fairseq-generate" "$1" --gen-subset test "${SETTINGS[@]}" --path cmlm_base.pt \
        --model-overrides "{'checkpoint_activations': True}" "${@:2}" --cpu --seed 1 > gen.txt 2> gen.log
    echo "fairseq-generate ${SETTINGS[*]} ${*:2}: $(grep -o 'Translated.*' gen.log)"
done
grep '^H-' gen.txt | sed 's/^H-//' | sort -n | cut -f3 > fairseq.txt
# janus_fast's engine (the reference decoder's rows of bench_vs_fairseq.sh take long at this size)
$JPY - converted raw/test.de <<'PY'
import sys, time
import torch
from janus_fast.translator import Translator
torch.set_num_threads(1)
lines = open(sys.argv[2]).read().splitlines()
translator = Translator.from_pretrained(sys.argv[1], max_batch_tokens=4096)
options = dict(mode="nar", compat="fairseq", iterations=4, length_beam=3)
translator.translate(lines[:10], **options)  # warm-up
start = time.perf_counter()
for line in lines[:100]:
    translator.translate([line], **options)
batch1 = (time.perf_counter() - start) / 100 * 1e3
start = time.perf_counter()
translator.translate(lines, **options)
large = (time.perf_counter() - start) / len(lines) * 1e3
print(f"janus_fast engine fp32 --compat fairseq max-iter 4 lb 3: batch 1 {batch1:.1f} ms/sentence, large batch {large:.2f}")
PY
$JPY -m janus_fast.cli translate --model converted --compat fairseq --mode nar --iterations 4 --length-beam 3 \
    -i raw/test.de -o janus.txt --no-progress
cmp fairseq.txt janus.txt && echo "same translations: $(wc -l < janus.txt) lines"
