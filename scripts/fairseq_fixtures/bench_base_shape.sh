#!/usr/bin/env bash
# Issue 31's fairseq row at transformer-base size: a random fairseq CMLM of d 512, FFN 2048, 8 heads,
# 6+6 layers and a 32,000-symbol dictionary (the shipped model's 8,000 SentencePiece pieces, then
# filler symbols that the text never uses but the output projection computes), built by
# fairseq-train (one update at lr 1e-9) and make_bench_model.py (weights x 8, length head = source
# length), then bench_vs_fairseq.sh on it: fairseq-generate against `janus-fast --compat fairseq` on
# the converted checkpoint, same machine, 1 thread, and the same translations checked.
#
#   bash scripts/fairseq_fixtures/bench_base_shape.sh FAIRSEQ_VENV JANUS_PYTHON DATA_DIR WORK
#
# DATA_DIR holds test_2016_flickr.{de,en}.gz (Multi30k). FAIRSEQ_VENV: fairseq 0.12.2 (Python 3.10,
# torch 2.4.1, numpy < 2).
set -euo pipefail
VENV=$1 JPY=$2 DATA=$3 WORK=$4
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MODEL="$REPO/janus_fast/pretrained/multi30k-de-en"
mkdir -p "$WORK/raw"
$JPY - "$MODEL/spm.model" "$DATA" "$WORK" <<'PY'
import gzip, sys
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
data, work = sys.argv[2], sys.argv[3]
for lang in ("de", "en"):
    lines = gzip.open(f"{data}/test_2016_flickr.{lang}.gz", "rt").read().splitlines()
    pieces = [" ".join(sp.encode(line, out_type=str)) for line in lines]
    open(f"{work}/raw/test_2016_flickr.{lang}", "w").write("\n".join(pieces) + "\n")
    open(f"{work}/raw/test100.{lang}", "w").write("\n".join(pieces[:100]) + "\n")
specials = {"<pad>", "<s>", "</s>", "<mask>", "<unk>"}
symbols = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.id_to_piece(i) not in specials]
symbols += [f"filler{i}" for i in range(32000 - 4 - len(symbols))]  # + fairseq's 4 specials = 32,000
with open(f"{work}/dict.txt", "w") as f:
    f.writelines(f"{symbol} 1\n" for symbol in symbols)
PY
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
cd "$WORK"
rm -rf data-bin data-bin100 fresh
"$VENV/bin/fairseq-preprocess" --source-lang de --target-lang en --trainpref raw/test_2016_flickr \
    --validpref raw/test100 --testpref raw/test_2016_flickr --destdir data-bin --srcdict dict.txt --tgtdict dict.txt \
    --workers 1 > prep.log 2>&1
"$VENV/bin/fairseq-preprocess" --source-lang de --target-lang en --testpref raw/test100 --destdir data-bin100 \
    --srcdict dict.txt --tgtdict dict.txt --workers 1 > prep100.log 2>&1
"$VENV/bin/fairseq-train" data-bin --task translation_lev --noise random_mask --arch cmlm_transformer \
    --share-all-embeddings --encoder-layers 6 --decoder-layers 6 --encoder-embed-dim 512 --decoder-embed-dim 512 \
    --encoder-ffn-embed-dim 2048 --decoder-ffn-embed-dim 2048 --encoder-attention-heads 8 \
    --decoder-attention-heads 8 --encoder-learned-pos --decoder-learned-pos --pred-length-offset --apply-bert-init \
    --max-source-positions 256 --max-target-positions 256 --criterion nat_loss --optimizer adam --lr 1e-9 \
    --max-tokens 1024 --max-update 1 --seed 3 --cpu --num-workers 0 --save-dir fresh --no-epoch-checkpoints \
    --disable-validation > train.log 2>&1
"$VENV/bin/python" "$HERE/make_bench_model.py" fresh/checkpoint_last.pt cmlm_base.pt
bash "$HERE/bench_vs_fairseq.sh" "$VENV" "$JPY" cmlm_base.pt dict.txt data-bin data-bin100 raw bench
