"""The test set cut into the shipped model's SentencePiece pieces, and its pieces as a fairseq dictionary,
for the fairseq speed comparisons (bench_same_shape.sh, bench_base_shape.sh):

python spm_text.py SPM_MODEL DATA_DIR WORK [DICT_SIZE]

writes WORK/raw/{test,test100,plain}.{de,en} (the 1,000 test_2016_flickr pairs as pieces, the first
100, and the plain text) and WORK/dict.txt (every piece but the specials, count 1; with DICT_SIZE,
then filler symbols the text never uses, up to DICT_SIZE symbols with fairseq's 4 specials).
"""

import gzip
import sys

import sentencepiece as spm

SPECIALS = {"<pad>", "<s>", "</s>", "<mask>", "<unk>"}


def main(model: str, data: str, work: str, dict_size: int | None = None) -> None:
    processor = spm.SentencePieceProcessor(model_file=model)
    for lang in ("de", "en"):
        lines = gzip.open(f"{data}/test_2016_flickr.{lang}.gz", "rt", encoding="utf-8").read().splitlines()
        pieces = [" ".join(processor.encode(line, out_type=str)) for line in lines]
        for name, text in (("test", pieces), ("test100", pieces[:100]), ("plain", lines)):
            with open(f"{work}/raw/{name}.{lang}", "w", encoding="utf-8") as handle:
                handle.write("\n".join(text) + "\n")
    symbols = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    symbols = [symbol for symbol in symbols if symbol not in SPECIALS]
    if dict_size is not None:
        symbols += [f"filler{i}" for i in range(dict_size - 4 - len(symbols))]
    with open(f"{work}/dict.txt", "w", encoding="utf-8") as handle:
        handle.writelines(f"{symbol} 1\n" for symbol in symbols)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
