#!/usr/bin/env bash
# Train the three Multi30k De-En models of the README's quality table (ar, cmlm, janus) with the
# same data, vocabulary, architecture, batch size and number of updates. Resumable: run it again
# after an interruption and every run continues from its last checkpoint.
#
#   bash scripts/train_multi30k.sh [RUN_ROOT] [MAX_UPDATES]
#
# Two processes of one thread each share the two cores: janus (about 3x the work per update) in
# one, ar and then cmlm in the other.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_ROOT=${1:-runs}
MAX_UPDATES=${2:-1548}  # 6 epochs of 258 batches (the README table): the last update is validated
DATA_DIR=${DATA_DIR:?set DATA_DIR to the Multi30k folder (train/val/test .de/.en .gz files)}
# shellcheck source=scripts/corpus_lib.sh
. scripts/corpus_lib.sh
COMMON=(--data-dir "$DATA_DIR" --source-lang de --target-lang en "${model_shape[@]}" "${recipe_batch[@]}"
        --lr 1e-3 --warmup-updates 300
        --max-updates "$MAX_UPDATES" --save-every 100 --log-every 20 --threads 1 --no-progress)

mkdir -p "$RUN_ROOT/final_janus" "$RUN_ROOT/final_ar" "$RUN_ROOT/final_cmlm"
# One SentencePiece model for all three runs: train it once, copy it into each run directory.
if [ ! -f "$RUN_ROOT/final_janus/spm.model" ]; then
  python -m janus_fast.cli train --output-dir "$RUN_ROOT/final_janus" "${COMMON[@]}" --objective janus --max-updates 0
fi
for run in ar cmlm; do
  # with its record (spm.json: what it was trained from), which a run checks before adopting it
  [ -f "$RUN_ROOT/final_$run/spm.model" ] || cp "$RUN_ROOT/final_janus/spm.json" "$RUN_ROOT/final_janus/spm.model" \
    "$RUN_ROOT/final_$run/"
done

python -m janus_fast.cli train --output-dir "$RUN_ROOT/final_janus" "${COMMON[@]}" --objective janus \
  >> "$RUN_ROOT/final_janus.log" 2>&1 &
janus_pid=$!
for run in ar cmlm; do
  python -m janus_fast.cli train --output-dir "$RUN_ROOT/final_$run" "${COMMON[@]}" --objective "$run" \
    >> "$RUN_ROOT/final_$run.log" 2>&1
done
wait "$janus_pid"
