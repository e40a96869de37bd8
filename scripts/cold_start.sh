#!/usr/bin/env bash
# Issue 33 (d): does the raw-data gap between JANUS's AR side and an AR-only model close with
# training? Two runs from a cold start on the raw Multi30k data (no distillation), side by side:
#   cold_ar     --objective ar
#   cold_janus  --objective janus (the method's loss)
#   cold_ar_seed2  --objective ar --seed 2 (with SEED2=1: the run-to-run spread of the AR-only run)
# with the README's equal-budget recipe (scripts/train_multi30k.sh: one SentencePiece model, 7.71M
# parameters, Adam lr 1e-3 inverse-sqrt, 300 warm-up updates, 2,048 target tokens per update,
# dropout 0.1) and bf16 autocast where the CPU has it. The runs advance in turns of STEP updates
# (ar to STEP, janus to STEP, ar to 2 STEP, ...) so that at any stop both have about the same
# number of updates. Resumable: rerun the same command after a kill (each run continues from its
# last save, every 50 updates).
#
#   DATA_DIR=DIR RUNS=DIR bash scripts/cold_start.sh
#
# RUNS (default ~/janus-runs/coldstart) keeps both runs' state; STEP (default 250) updates per
# turn; MAX (default 10000) updates in all; THREADS (default 1) threads per run; PARALLEL=1 runs
# the two runs of a turn side by side (two processes) instead of one after the other; SEED2=1 adds
# cold_ar_seed2 to each turn, after cold_ar (in the process of cold_ar, which is about 3x faster
# per update than cold_janus: with PARALLEL=1 it uses the time that process otherwise waits).
set -euo pipefail
# shellcheck source=scripts/corpus_lib.sh
. "$(dirname "$0")/corpus_lib.sh"
: "${DATA_DIR:?set DATA_DIR to the Multi30k folder}"
RUNS=${RUNS:-$HOME/janus-runs/coldstart}
STEP=${STEP:-250}
MAX=${MAX:-10000}
THREADS=${THREADS:-1}
mkdir -p "$RUNS/cold_janus"

# train NAME OBJECTIVE UPDATES [SEED]
train() {
  janus-fast train --output-dir "$RUNS/$1" --data-dir "$DATA_DIR" --source-lang de --target-lang en \
    "${model_shape[@]}" "${recipe_batch[@]}" --objective "$2" --seed "${4:-1}" --lr 1e-3 --warmup-updates 300 \
    --max-updates "$3" --precision auto --threads "$THREADS" --save-every 50 --keep-every "$STEP" \
    --valid-iterations 4 --no-progress
}

# one tokenizer for both runs (trained by a 0-update janus run, copied to the ar run)
[ -f "$RUNS/cold_janus/spm.model" ] || train cold_janus janus 0
ar_runs=(cold_ar)  # the AR-only run(s): the one of index i has seed i + 1
[ "${SEED2:-0}" = 1 ] && ar_runs+=(cold_ar_seed2)
for run in "${ar_runs[@]}"; do
  mkdir -p "$RUNS/$run"
  [ -f "$RUNS/$run/spm.model" ] || cp "$RUNS/cold_janus/spm.json" "$RUNS/cold_janus/spm.model" "$RUNS/$run/"
done
# train_ar UPDATES: the AR-only run(s) to UPDATES, one after the other
train_ar() {
  local i
  for i in "${!ar_runs[@]}"; do train "${ar_runs[$i]}" ar "$1" $((i + 1)); done
}
for ((updates = STEP; updates <= MAX; updates += STEP)); do
  echo "== turn: both runs to $updates updates"
  if [ "${PARALLEL:-0}" = 1 ]; then
    train_ar "$updates" & ar_pid=$!
    train cold_janus janus "$updates" & janus_pid=$!
    wait "$ar_pid" && wait "$janus_pid"
  else
    train_ar "$updates"
    train cold_janus janus "$updates"
  fi
done
echo "== done"
