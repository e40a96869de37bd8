#!/usr/bin/env bash
# Issue 12's fairseq row: fairseq-generate's CMLM mask-predict on a random model of the shipped model's
# shape (d 256, 3+3 layers, FFN 1024, 4 heads, vocabulary 8000: the shipped SentencePiece pieces as
# a fairseq dictionary) against janus_fast's NAR T=4 l=3 on the shipped model, same machine,
# same sentences, 1 and 2 threads; janus_fast in fp32, bf16 and int8.
#
#   bash scripts/fairseq_fixtures/bench_same_shape.sh FAIRSEQ_VENV JANUS_PYTHON DATA_DIR WORK
#
# DATA_DIR holds test_2016_flickr.{de,en}.gz (Multi30k). The fairseq model is built by fairseq-train
# (one update at lr 1e-9) and make_bench_model.py (weights x 8, length head = source length).
# fairseq: batch 1 = the first 100 sentences (--batch-size 1), large batch = all 1,000
# (--max-tokens 4096); its time is the generation time it reports. checkpoint_activations keeps
# fairseq 0.12.2 off torch's fused encoder path, which fails on padded batches ("Mask Type should
# be defined"). janus_fast: the Translator,
# batch 1 = the same 100 sentences one per call, large batch = all 1,000 at 4,096 tokens per batch.
set -euo pipefail
VENV=$1 JPY=$2 DATA=$3 WORK=$4
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MODEL="$REPO/janus_fast/pretrained/multi30k-de-en"
mkdir -p "$WORK/raw"
$JPY "$HERE/spm_text.py" "$MODEL/spm.model" "$DATA" "$WORK"
bash "$HERE/make_random_cmlm.sh" "$VENV" "$WORK" 3 256 1024 4 128 cmlm_same.pt
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$WORK"
for threads in 1 2; do
    export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
    for iter in 3 4; do
        for batch in "data-bin100 --batch-size 1" "data-bin --max-tokens 4096"; do
            set -- $batch
            "$VENV/bin/fairseq-generate" "$1" --gen-subset test --task translation_lev --path cmlm_same.pt \
                --model-overrides "{'checkpoint_activations': True}" --iter-decode-max-iter $iter --iter-decode-with-beam 3 "${@:2}" --cpu --seed 1 \
                > gen.txt 2> gen.log
            echo "fairseq-generate threads $threads max-iter $iter lb 3 ${*:2}: $(grep -o 'Translated.*' gen.log)"
        done
    done
    $JPY - "$MODEL" "$threads" <<'PY'
import sys, time
import torch
from janus_fast.translator import Translator
torch.set_num_threads(int(sys.argv[2]))
lines = open("raw/plain.de").read().splitlines()
for precision in ("fp32", "bf16", "int8"):
    translator = Translator.from_pretrained(sys.argv[1], max_batch_tokens=4096, precision=precision)
    translator.translate(lines[:20], mode="nar", iterations=4, length_beam=3)  # warm-up
    start = time.perf_counter()
    for line in lines[:100]:
        translator.translate([line], mode="nar", iterations=4, length_beam=3)
    batch1 = (time.perf_counter() - start) / 100 * 1000
    start = time.perf_counter()
    translator.translate(lines, mode="nar", iterations=4, length_beam=3)
    large = (time.perf_counter() - start) / len(lines) * 1000
    print(f"janus_fast threads {sys.argv[2]} NAR T=4 lb 3 {precision} (shipped model): batch 1 {batch1:.1f} "
          f"ms/sentence, large batch {large:.2f} ms/sentence")
PY
done
