#!/usr/bin/env bash
# Issue 33: does the JANUS objective make the AR side better? A controlled comparison from ONE warm
# start (the shipped model), on the same data (its beam-4 translations of the training sources
# beside the references, as the recipe's last stage), with the same schedule (fresh AdamW, lr 1e-4,
# 300 warm-up updates, UPDATES updates of 2,048 target tokens, dropout 0.1, bf16 autocast where the
# CPU has it), where only the objective changes:
#   ar_seed1, ar_seed2  --objective ar (two seeds: the run-to-run spread)
#   janus_ref           --objective janus, the reference loss (AR not detached in the KL terms)
#   janus_detach        --objective janus --weights-detach-ar-in-kl (the recipe's option)
# then every run's last weights evaluated the same way (scripts/ar_claim_eval.py).
#
#   DATA_DIR=DIR RUNS=DIR bash scripts/ar_claim.sh
#
# DATA_DIR holds Multi30k as {train,val,test_2016_flickr}.{de,en}[.gz]; RUNS (default
# ~/janus-runs/arclaim) keeps every run's state. Resumable: after a kill, rerun the same command (the
# distillation resumes by chunks, each run from its last save, a finished run is skipped).
# THREADS (default 1) threads per run; UPDATES (default 2500); ONLY="ar_seed1 janus_ref" runs a subset.
set -euo pipefail
: "${DATA_DIR:?set DATA_DIR to the Multi30k folder}"
RUNS=${RUNS:-$HOME/janus-runs/arclaim}
THREADS=${THREADS:-1}
UPDATES=${UPDATES:-2500}
ONLY=${ONLY:-ar_seed1 janus_ref janus_detach ar_seed2}
HERE=$(cd "$(dirname "$0")" && pwd)
MODEL=${MODEL:-$HERE/../janus_fast/pretrained/multi30k-de-en}
mkdir -p "$RUNS"
# shellcheck source=scripts/corpus_lib.sh
. "$HERE/corpus_lib.sh"

echo "== the data: the warm start's beam 4 on the training sources, beside the references"
[ -f "$RUNS/distill.en.gz" ] || janus-fast distill --model "$MODEL" --mode ar --beam 4 --src "$(corpus train.de)" \
  --output "$RUNS/distill.en.gz" --no-progress
mix_with_references "$RUNS/distill.en.gz" "$RUNS/data"

# run NAME OBJECTIVE SEED [OPTIONS...]
run() {
  local name=$1 objective=$2 seed=$3
  shift 3
  [[ " $ONLY " == *" $name "* ]] || return 0
  echo "== $name: --objective $objective --seed $seed $*"
  janus-fast train --output-dir "$RUNS/$name" --data-dir "$RUNS/data" --train-target "$RUNS/data/train.en.gz" \
    --init-from "$MODEL" "${model_shape[@]}" "${recipe_batch[@]}" --objective "$objective" --seed "$seed" "$@" \
    --lr 1e-4 --warmup-updates 300 --max-updates "$UPDATES" --precision auto --threads "$THREADS" \
    --save-every 50 --keep-every 500 --valid-iterations 4 --no-progress
}
run ar_seed1 ar 1
run janus_ref janus 1 --no-weights-detach-ar-in-kl
run janus_detach janus 1 --weights-detach-ar-in-kl
run ar_seed2 ar 2
echo "== done"
