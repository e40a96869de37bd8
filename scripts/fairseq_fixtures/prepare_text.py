"""Multi30k text for the fairseq fixtures: lower-cased, words and punctuation split (``\\w+|[^\\w\\s]``).

python prepare_text.py MULTI30K_DIR OUT_DIR  ->  OUT_DIR/{train,valid,test}.{de,en}
(train: the first 2,000 pairs, valid: the first 200 validation pairs, test: the first 60 test pairs)
"""

import gzip
import os
import re
import sys

WORD = re.compile(r"\w+|[^\w\s]")
SPLITS = {"train": ("train", 2000), "valid": ("val", 200), "test": ("test_2016_flickr", 60)}


def main(data: str, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    for split, (name, count) in SPLITS.items():
        for lang in ("de", "en"):
            with gzip.open(os.path.join(data, f"{name}.{lang}.gz"), "rt", encoding="utf-8") as handle:
                lines = [" ".join(WORD.findall(line.lower())) for _, line in zip(range(count), handle)]
            with open(os.path.join(out, f"{split}.{lang}"), "w", encoding="utf-8") as handle:
                handle.write("".join(line + "\n" for line in lines))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
