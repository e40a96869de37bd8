#!/usr/bin/env bash
# The recipe of the shipped model (janus_fast/pretrained/multi30k-de-en/MODEL.md), stage by stage.
#
#   DATA_DIR=DIR RUNS=DIR bash scripts/train_default_model.sh
#
# DATA_DIR holds Multi30k as {train,val,test_2016_flickr}.{de,en}[.gz]; RUNS (default ~/janus-runs/recipe)
# keeps every run's state. Every stage is resumable: after a kill, rerun the same command; a stage
# whose output exists is skipped. About 12 hours on a 2-core CPU with bf16 (most of it stage 3).
# THREADS (default 2) threads per run. The update counts can be overridden (TEACHER_UPDATES,
# STUDENT_UPDATES, BRANCH_UPDATES, MIX_UPDATES, KEEP, VOCAB_SIZE, LENGTH_BONUSES) for a quick trial;
# the averaging windows follow them. Stages 1-7 make the model shipped before (RUNS/model); stages
# 8-10 the one shipped now (RUNS/model_mix).
# LENGTH_BONUS_SWEEP=MODEL runs only stage 7's sweep on MODEL (e.g. to check a shipped model's bonus).
set -euo pipefail
: "${DATA_DIR:?set DATA_DIR to the Multi30k folder}"
RUNS=${RUNS:-$HOME/janus-runs/recipe}
THREADS=${THREADS:-2}
TEACHER_UPDATES=${TEACHER_UPDATES:-1290}
STUDENT_UPDATES=${STUDENT_UPDATES:-13830}
BRANCH_UPDATES=${BRANCH_UPDATES:-2500}
MIX_UPDATES=${MIX_UPDATES:-2500}
KEEP=${KEEP:-100}  # keep the model every KEEP updates (for averaging)
LENGTH_BONUSES=${LENGTH_BONUSES:-0 0.01 0.02 0.03 0.04 0.05 0.06 0.07 0.08}  # stage 7's grid
mkdir -p "$RUNS"
# shellcheck source=scripts/corpus_lib.sh
. "$(dirname "$0")/corpus_lib.sh"
architecture=("${model_shape[@]}" "${recipe_batch[@]}" --precision auto --threads "$THREADS" --no-progress)
# the saves of RUN from update FIRST to LAST (every KEEP), one directory per line
saves() { local run=$1 first=$2 last=$3 u; for ((u = first; u <= last; u += KEEP)); do printf '%s/saves/u%06d\n' "$run" "$u"; done; }
# the largest multiple of KEEP <= N
window_end() { echo $(($1 / KEEP * KEEP)); }
# average_window RUN COUNT END OUTPUT: the mean of RUN's COUNT saves ending at update END (none
# before update KEEP) in OUTPUT, unless OUTPUT exists
average_window() {
  local first=$(($3 - ($2 - 1) * KEEP > KEEP ? $3 - ($2 - 1) * KEEP : KEEP)) selected
  [ -f "$4/config.json" ] && return
  mapfile -t selected < <(saves "$1" "$first" "$3")
  janus-fast average --models "${selected[@]}" --output "$4"
}
# distill MODEL OUTPUT: beam 4 on the training sources (resumable; skipped once OUTPUT exists)
distill() { [ -f "$2" ] || janus-fast distill --model "$1" --mode ar --beam 4 --src "$(corpus train.de)" --output "$2" --no-progress; }
# janus_run NAME TARGETS INIT LR WARMUP UPDATES [DATA]: a JANUS run warm-started from INIT on
# distilled TARGETS (the corpus in DATA, default DATA_DIR)
janus_run() {
  janus-fast train --output-dir "$RUNS/$1" --data-dir "${7:-$DATA_DIR}" --objective janus "${architecture[@]}" \
    --train-target "$2" --init-from "$3" --weights-detach-ar-in-kl --lr "$4" --warmup-updates "$5" \
    --max-updates "$6" --save-every 50 --keep-every "$KEEP" --valid-iterations 4
}
# test_scores MODEL: its test BLEU, NAR T=10 and AR beam 4
test_scores() {
  local setting
  for setting in "--mode nar --iterations 10 --length-beam 3" "--mode ar --beam 4"; do
    # shellcheck disable=SC2086
    echo "test_2016_flickr $setting: $(janus-fast evaluate --model "$1" --src "$(corpus test_2016_flickr.de)" \
      --ref "$(corpus test_2016_flickr.en)" $setting)"
  done
}
# bonus_and_export FP32_MODEL SWEEP OUTPUT: stage 7's length-bonus sweep of FP32_MODEL (in SWEEP) and
# its bf16 export with the best bonus
bonus_and_export() {
  if [ ! -f "$2" ]; then  # renamed only when complete: a killed sweep is redone
    length_bonus_sweep "$1" > "$2.partial"
    mv "$2.partial" "$2"
  fi
  cat "$2"
  [ -f "$3/config.json" ] || janus-fast export --model "$1" --output "$3" --dtype bf16 --length-bonus "$(tail -1 "$2")"
}
# length_bonus_sweep MODEL: per bonus of LENGTH_BONUSES, MODEL's val BLEU at NAR T = 2, 4, 10 and their
# mean; the last line is the bonus of the best mean (the first on ties)
length_bonus_sweep() {
  local bonus iterations bleu total best=0 best_total=-1
  for bonus in $LENGTH_BONUSES; do
    total=0
    for iterations in 2 4 10; do
      bleu=$(janus-fast evaluate --model "$1" --src "$(corpus val.de)" --ref "$(corpus val.en)" --mode nar --iterations "$iterations" \
        --length-bonus "$bonus" --json | python -c 'import json, sys; print(json.load(sys.stdin)["bleu"])')
      total=$(python -c "print(round($total + $bleu, 2))")
      echo "# length bonus $bonus, val NAR T=$iterations: $bleu"
    done
    echo "# length bonus $bonus, val NAR mean over T = 2, 4, 10: $(python -c "print(round($total / 3, 2))")"
    if python -c "import sys; sys.exit(not $total > $best_total)"; then best=$bonus best_total=$total; fi
  done
  echo "$best"
}

if [ -n "${LENGTH_BONUS_SWEEP:-}" ]; then
  length_bonus_sweep "$LENGTH_BONUS_SWEEP"
  exit
fi

echo "== 1. AR teacher (raw data)"
janus-fast train --output-dir "$RUNS/teacher" --data-dir "$DATA_DIR" --objective ar "${architecture[@]}" \
  --lr 1e-3 --warmup-updates 300 --max-updates "$TEACHER_UPDATES" --save-every 100

echo "== 2. distilled targets v1: the teacher's beam 4 on the training sources"
distill "$RUNS/teacher/last" "$RUNS/distill1.en.gz"

echo "== 3. JANUS student, warm-started from the teacher, on the v1 targets"
janus_run student "$RUNS/distill1.en.gz" "$RUNS/teacher/last" 5e-4 200 "$STUDENT_UPDATES"

echo "== 4. distilled targets v2: the student's average (the 20 saves ending 85% of the way) with beam 4"
average_window "$RUNS/student" 20 "$(window_end $((STUDENT_UPDATES * 85 / 100)))" "$RUNS/student_avg"
distill "$RUNS/student_avg" "$RUNS/distill2.en.gz"

echo "== 5. branch run: warm start from the student's last weights, on the v2 targets, fresh Adam at lr 6.5e-5"
janus_run branch "$RUNS/distill2.en.gz" "$RUNS/student/last" 6.5e-5 300 "$BRANCH_UPDATES"

echo "== 6. the model shipped before: the mean of the branch run's 12 saves ending at its last"
average_window "$RUNS/branch" 12 "$(window_end "$BRANCH_UPDATES")" "$RUNS/model_fp32"

echo "== 7. its NAR length bonus (the best mean val BLEU over T = 2, 4, 10), kept with its bf16 weights"
bonus_and_export "$RUNS/model_fp32" "$RUNS/length_bonus.txt" "$RUNS/model"
test_scores "$RUNS/model"

echo "== 8. distilled targets v3: that model's beam 4 on the training sources, beside the references"
distill "$RUNS/model" "$RUNS/distill3.en.gz"
mix_with_references "$RUNS/distill3.en.gz" "$RUNS/data_mix"  # the sources twice: with v3, with the references

echo "== 9. mixed run: warm start from that model, on v3 + references, fresh Adam at lr 1e-4"
janus_run mix "$RUNS/data_mix/train.en.gz" "$RUNS/model" 1e-4 300 "$MIX_UPDATES" "$RUNS/data_mix"

echo "== 10. the shipped model: the mean of the mixed run's 6 saves ending at its last, its length bonus"
average_window "$RUNS/mix" 6 "$(window_end "$MIX_UPDATES")" "$RUNS/model_mix_fp32"
bonus_and_export "$RUNS/model_mix_fp32" "$RUNS/length_bonus_mix.txt" "$RUNS/model_mix"
test_scores "$RUNS/model_mix"
