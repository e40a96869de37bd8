#!/usr/bin/env bash
# Corpus jobs under torchrun (issue 32): sentences/s of 1 process x 1 thread against 2 processes x 1
# thread (AR greedy and NAR T=4, large batch, the shipped model), and the peak RSS of a rank on a
# 1k-line and a 200k-line input (AR greedy, int8).
#
#   DATA_DIR=DIR bash scripts/bench_corpus_jobs.sh [LINES]     (LINES: the throughput input, default 10000)
#
# Run it on a quiet machine. Times are wall-clock of the whole command (start-up, model load, both
# passes over the input and the merge included); RSS is /usr/bin/time's maximum resident set of
# the process tree's largest process (under torchrun: the largest rank).
set -euo pipefail
: "${DATA_DIR:?set DATA_DIR to the Multi30k folder}"
LINES=${1:-10000}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
train=$DATA_DIR/train.de.gz
[ -f "$train" ] || train=$DATA_DIR/train.de
text_of() { if [[ $1 == *.gz ]]; then zcat "$1"; else cat "$1"; fi; }
# (head closes the pipe early: the writer's SIGPIPE is expected)
text_of "$train" | head -n "$LINES" > "$WORK/src.de" || true
text_of "$train" | head -n 1000 > "$WORK/src1k.de" || true
for _ in 1 2 3 4 5 6 7; do text_of "$train"; done | head -n 200000 > "$WORK/src200k.de" || true
export OMP_NUM_THREADS=1
grep -m1 "model name" /proc/cpuinfo
echo "flags: $(grep -o -w 'avx512_bf16\|avx512_vnni\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"

# timed NAME COMMAND...: wall seconds and peak RSS (MB) of COMMAND
timed() {
  local name=$1 start end
  shift
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$WORK/rss" "$@" > /dev/null 2> "$WORK/err" || { cat "$WORK/err"; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print(f'{\"$name\":<44} {$end - $start:8.2f} s  peak RSS {$(cat "$WORK/rss") / 1024:7.0f} MB')"
}
one() { timed "$1" janus-fast translate --no-progress "${@:2}"; }
two() { timed "$1" torchrun --standalone --nproc_per_node 2 --no-python janus-fast translate --no-progress "${@:2}"; }

echo "== throughput: $LINES lines of train.de"
for mode in "ar" "nar --iterations 4"; do
  # shellcheck disable=SC2086
  one "1 process x 1 thread, --mode $mode" -i "$WORK/src.de" -o "$WORK/one.en" --mode $mode
  # shellcheck disable=SC2086
  two "2 processes x 1 thread, --mode $mode" -i "$WORK/src.de" -o "$WORK/two.en" --mode $mode
  cmp "$WORK/one.en" "$WORK/two.en" && echo "   same output: yes"
done
echo "== memory: AR greedy int8, 2 processes"
two "1k lines" -i "$WORK/src1k.de" -o "$WORK/out1k.en" --precision int8
two "200k lines" -i "$WORK/src200k.de" -o "$WORK/out200k.en.gz" --precision int8
echo "   lines written: $(zcat "$WORK/out200k.en.gz" | wc -l)"
