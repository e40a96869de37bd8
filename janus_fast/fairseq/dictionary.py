"""A fairseq dictionary (``dict.txt``) with an optional BPE, as a janus_fast tokenizer.

fairseq numbers its symbols ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, then the lines of
``dict.txt`` in order (``word count``, optionally followed by ``#fairseq:overwrite``). Text is
split on whitespace into symbols; with a BPE, it is first cut into pieces by SentencePiece
(``--bpe sentencepiece``) or subword-nmt codes (``--bpe subword-nmt``, needs the ``subword-nmt``
package) and the pieces are joined back on output, as fairseq's ``--post-process`` does. Without a
BPE the input must be pre-tokenised text in the dictionary's symbols.

A converted checkpoint directory holds ``dict.txt`` and, with a BPE, ``bpe.model`` (SentencePiece)
or ``bpe.codes`` (subword-nmt).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Sequence

from janus_fast.data import MAX_TOKENIZER_FILE_BYTES, read_regular_file

DICT_NAME = "dict.txt"
BPE_FILES = {"sentencepiece": "bpe.model", "subword-nmt": "bpe.codes"}
SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")
TEXT_CONTROL_SYMBOLS = ("<s>", "<pad>", "</s>", "<mask>")  # read as <unk> where text holds them
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

__all__ = ["FairseqTokenizer", "DICT_NAME", "BPE_FILES", "check_sentencepiece_matches", "read_dictionary"]


def read_dictionary(path: str) -> list[str]:
    """All symbols of a fairseq ``dict.txt``, the four specials first; ValueError naming the line
    for a malformed or duplicated entry."""
    symbols = list(SPECIAL_SYMBOLS)
    seen = set(symbols)
    # universal newlines, as a file opened in text mode reads them
    text = read_regular_file(path, MAX_TOKENIZER_FILE_BYTES).decode("utf-8")
    for number, line in enumerate(io.StringIO(text, newline=None), 1):
        fields = line.rstrip("\n").rsplit(" ", 1)
        if len(fields) != 2:
            raise ValueError(f"{path}:{number}: expected 'symbol count', got {line.rstrip()!r}")
        word, count = fields
        overwrite = count == "#fairseq:overwrite"
        if overwrite:
            fields = word.rsplit(" ", 1)
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected 'symbol count #fairseq:overwrite'")
            word, count = fields
        if not count.lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: count {count!r} is not an integer")
        if word in seen and not overwrite:
            raise ValueError(f"{path}:{number}: duplicate symbol {word!r}")
        seen.add(word)
        symbols.append(word)
    return symbols


class FairseqTokenizer:
    """Symbols of a fairseq dictionary plus an optional BPE; ``encode`` / ``decode`` as the
    janus_fast ``Tokenizer`` (ids without bos/eos; output without specials, ``<unk>`` kept)."""

    def __init__(self, symbols: Sequence[str], bpe: str | None = None, bpe_data: bytes | None = None) -> None:
        if list(symbols[:4]) != list(SPECIAL_SYMBOLS):
            raise ValueError(f"a fairseq dictionary starts with {SPECIAL_SYMBOLS}, got {tuple(symbols[:4])}")
        if (bpe is None) != (bpe_data is None) or (bpe is not None and bpe not in BPE_FILES):
            raise ValueError(f"bpe must be None or one of {sorted(BPE_FILES)} with its data, got {bpe!r}")
        self.symbols = list(symbols)
        self.index = {symbol: i for i, symbol in enumerate(self.symbols)}
        # control symbols written in the text are words, not controls: <unk>, as Tokenizer does <mask>
        self._text_index = {**self.index, **{symbol: UNK_ID for symbol in TEXT_CONTROL_SYMBOLS if symbol in self.index}}
        self.bpe, self.bpe_data = bpe, bpe_data
        self._splitter = bpe_splitter(bpe, bpe_data)

    @classmethod
    def from_files(cls, dict_path: str, bpe: str | None = None, bpe_path: str | None = None) -> FairseqTokenizer:
        """From a ``dict.txt`` and, for a BPE, its model / codes file."""
        data = None
        if bpe is not None:
            if bpe_path is None:
                raise ValueError(f"--bpe {bpe} needs the path of its model / codes")
            data = read_regular_file(bpe_path, MAX_TOKENIZER_FILE_BYTES)
        return cls(read_dictionary(dict_path), bpe, data)

    @classmethod
    def load(cls, directory: str) -> FairseqTokenizer:
        """From a converted checkpoint directory."""
        for bpe, name in BPE_FILES.items():
            if os.path.exists(os.path.join(directory, name)):
                return cls.from_files(os.path.join(directory, DICT_NAME), bpe, os.path.join(directory, name))
        return cls.from_files(os.path.join(directory, DICT_NAME))

    def save(self, directory: str) -> None:
        """Write ``dict.txt`` (counts are not kept: written as 0; a symbol seen before, a special
        included, keeps its ``#fairseq:overwrite`` flag, so the file reads back as it was read) and
        the BPE file to ``directory``."""
        from janus_fast.output import atomic_write

        seen = set(SPECIAL_SYMBOLS)
        lines = []
        for symbol in self.symbols[4:]:
            lines.append(f"{symbol} 0 #fairseq:overwrite\n" if symbol in seen else f"{symbol} 0\n")
            seen.add(symbol)
        lines = "".join(lines)
        atomic_write(os.path.join(directory, DICT_NAME), lines.encode("utf-8"))
        if self.bpe is not None and self.bpe_data is not None:
            atomic_write(os.path.join(directory, BPE_FILES[self.bpe]), self.bpe_data)

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def digest(self) -> str:
        """SHA-256 of what the tokenizer maps: its symbols in order and its BPE (type and file)."""
        described = "\n".join(self.symbols) + f"\0{self.bpe}\0"
        return hashlib.sha256(described.encode("utf-8") + (self.bpe_data or b"")).hexdigest()

    def encode(self, sentence: str) -> list[int]:
        """Symbol ids of one sentence (BPE applied first), unknown symbols as ``<unk>``; no bos/eos.
        ``<s>``, ``<pad>``, ``</s>`` and ``<mask>`` written in the text are ``<unk>`` too (a source
        holds words; the controls are placed by the decoder)."""
        text = self._splitter(sentence) if self._splitter is not None else sentence
        return [self._text_index.get(symbol, UNK_ID) for symbol in text.split()]

    def encode_batch(self, sentences: Sequence[str]) -> list[list[int]]:
        return [self.encode(sentence) for sentence in sentences]

    def symbols_of(self, ids: Sequence[int]) -> str:
        """The symbols of ``ids`` joined by spaces, without bos/eos/pad (fairseq-generate's
        hypothesis string before ``--post-process``)."""
        return " ".join(self.symbols[i] for i in ids if i not in (BOS_ID, EOS_ID, PAD_ID))

    def decode(self, ids: Sequence[int]) -> str:
        """Output text: the symbols, joined back where a BPE cut them."""
        text = self.symbols_of(ids)
        if self.bpe == "sentencepiece":
            return text.replace(" ", "").replace("\u2581", " ").strip()
        if self.bpe == "subword-nmt":
            return (text + " ").replace("@@ ", "").rstrip()
        return text


def check_sentencepiece_matches(symbols: Sequence[str], data: bytes) -> None:
    """ValueError unless most of a dictionary's ordinary symbols (not the specials, ``<...>`` or
    fairseq's ``madeupwordNNNN`` fillers) are pieces of the SentencePiece model ``data``: a
    dictionary built from that model's output holds nothing else, while with another model nearly
    every word of a text would become ``<unk>``."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=data)
    pieces = {processor.id_to_piece(i) for i in range(processor.get_piece_size())}
    ordinary = [s for s in symbols[4:] if not re.fullmatch(r"<[^<>\s]+>|madeupword\d+", s)]
    found = sum(symbol in pieces for symbol in ordinary)
    if ordinary and found < len(ordinary) / 2:
        raise ValueError(
            f"only {found} of the dictionary's {len(ordinary)} symbols are pieces of this SentencePiece model: not "
            "the model the dictionary was built with (most words would become <unk>)"
        )


def bpe_splitter(bpe: str | None, data: bytes | None):  # noqa: ANN202 - Callable[[str], str] | None
    """A function text -> space-separated BPE pieces, or None without a BPE."""
    if bpe is None or data is None:
        return None
    if bpe == "sentencepiece":
        import sentencepiece as spm

        if not data:  # SentencePiece takes an empty model without a word (then fails on every call)
            raise ValueError("not a SentencePiece model: the file is empty")
        try:
            processor = spm.SentencePieceProcessor(model_proto=data)
        except (RuntimeError, TypeError) as error:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise ValueError(f"not a SentencePiece model ({reason})") from error
        if processor.get_piece_size() == 0:  # SentencePiece takes an empty file without a word
            raise ValueError("not a SentencePiece model: it holds no piece (an empty or truncated file?)")
        return lambda text: " ".join(processor.encode(text, out_type=str))
    try:
        from subword_nmt.apply_bpe import BPE
    except ImportError as error:
        raise ValueError("--bpe subword-nmt needs the subword-nmt package (pip install subword-nmt)") from error
    import contextlib
    import io

    try:
        text = data.decode("utf-8")
        with contextlib.redirect_stderr(io.StringIO()) as said:  # subword-nmt reports, then exits
            codes = BPE(io.StringIO(text))
    except UnicodeDecodeError as error:
        raise ValueError(f"not subword-nmt codes (not UTF-8: {error.reason} at byte {error.start})") from error
    except (SystemExit, ValueError, IndexError) as error:
        reason = said.getvalue().strip().splitlines()[-1] if said.getvalue().strip() else str(error)
        raise ValueError(f"not subword-nmt codes ({reason})") from error
    return lambda text: codes.process_line(text.strip())
