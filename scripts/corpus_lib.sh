# Shell functions shared by the training recipes (sourced, not run). DATA_DIR: the Multi30k folder.

# The shipped model's shape (janus_fast/pretrained/multi30k-de-en/MODEL.md; VOCAB_SIZE overrides
# the vocabulary for a quick trial) and every recipe's batch: 2,048 target tokens an update,
# dropout 0.1, stopped by --max-updates (not by epochs).
model_shape=(--vocab-size "${VOCAB_SIZE:-8000}" --d-model 256 --num-heads 4 --ffn-dim 1024 --encoder-layers 3
  --decoder-layers 3)
recipe_batch=(--max-tokens 2048 --dropout 0.1 --epochs 1000)

# the corpus file NAME in DATA_DIR, plain or gzipped
corpus() {
  local f
  for f in "$DATA_DIR/$1" "$DATA_DIR/$1.gz"; do [ -f "$f" ] && echo "$f" && return; done
  echo "missing $DATA_DIR/$1[.gz]" >&2
  return 1
}

# the lines of FILE, plain or gzipped
text_of() { if [[ $1 == *.gz ]]; then zcat "$1"; else cat "$1"; fi; }

# mix_with_references TRANSLATIONS FOLDER: a corpus folder whose training set is the sources twice,
# once with TRANSLATIONS (of train.de) and once with the references; val and test linked
# (skipped once FOLDER/train.en.gz exists: the last file written, renamed when complete)
mix_with_references() {
  local translations=$1 folder=$2 split lang file
  [ -f "$folder/train.en.gz" ] && return
  mkdir -p "$folder"
  for split in val test_2016_flickr; do for lang in de en; do
    file=$(corpus "$split.$lang")
    ln -sf "$(realpath "$file")" "$folder/$(basename "$file")"
  done; done
  { text_of "$(corpus train.de)"; text_of "$(corpus train.de)"; } | gzip > "$folder/train.de.gz"
  { text_of "$translations"; text_of "$(corpus train.en)"; } | gzip > "$folder/train.en.gz.partial"
  mv "$folder/train.en.gz.partial" "$folder/train.en.gz"
}
