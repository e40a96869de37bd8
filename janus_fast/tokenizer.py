"""SentencePiece tokenisation with the reserved ids JANUS needs.

Ids: pad 0, unk 1, bos 2, eos 3, ``<mask>`` 4 (a user-defined symbol), then the learned pieces.
One joint model is trained on source + target text, so embeddings can be shared.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

from janus_fast.vocab import BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID

MASK_PIECE = "<mask>"
TOKENIZER_LINE_CHARS = 4096  # the characters of a training line the tokenizer learns from (its beginning)


class Tokenizer:
    """A SentencePiece model plus the JANUS special ids."""

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = model_proto
        if not model_proto:  # SentencePiece takes an empty model without a word (then fails on every call)
            raise ValueError("not a SentencePiece model: the file is empty")
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
        if self.processor.get_piece_size() == 0:  # SentencePiece takes an empty file without a word
            raise ValueError("not a SentencePiece model: it holds no piece (an empty or truncated file?)")
        expected = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>", MASK_ID: MASK_PIECE}
        for token_id, piece in expected.items():
            if self.processor.id_to_piece(token_id) != piece:
                raise ValueError(
                    f"SentencePiece model has {self.processor.id_to_piece(token_id)!r} at id {token_id}, "
                    f"expected {piece!r}: not a janus_fast tokenizer"
                )

    @classmethod
    def train(
        cls,
        sentences: Iterable[str],
        vocab_size: int = 8000,
        model_type: str = "unigram",
        max_sentences: int = 2_000_000,
    ) -> Tokenizer:
        """Train a joint model on ``sentences`` (source and target lines together). A line longer
        than ``TOKENIZER_LINE_CHARS`` characters is learned from by its beginning only (with a
        warning): SentencePiece's time grows with the square of a repetitive line's length (a line
        of 100,000 "=" took 17 s, one of 1 MiB more than 10 minutes), and a model reads at most its
        positions' worth of pieces of any line."""
        cut = 0

        def beginnings() -> Iterator[str]:
            nonlocal cut
            for sentence in sentences:
                if len(sentence) > TOKENIZER_LINE_CHARS:
                    cut += 1
                    sentence = sentence[:TOKENIZER_LINE_CHARS]
                yield sentence

        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=beginnings(),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            user_defined_symbols=[MASK_PIECE],
            input_sentence_size=max_sentences,
            # in bytes: every (cut) line fits, none is skipped (SentencePiece's default, 4,192, skips silently)
            max_sentence_length=4 * TOKENIZER_LINE_CHARS,
            shuffle_input_sentence=True,
            hard_vocab_limit=False,
            num_threads=2,
            minloglevel=2,
        )
        if cut:
            warnings.warn(
                f"{cut} training line(s) longer than {TOKENIZER_LINE_CHARS} characters: the tokenizer learned from "
                f"their first {TOKENIZER_LINE_CHARS} (a model reads at most its positions' worth of pieces of a line)",
                stacklevel=2,
            )
        return cls(model.getvalue())

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        with open(path, "rb") as handle:
            return cls(handle.read())

    def save(self, path: str) -> None:
        with open(path, "wb") as handle:
            handle.write(self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, sentence: str) -> list[int]:
        """Pieces of one sentence, without bos/eos. A literal ``<mask>`` in the text is an unknown
        word (``<unk>``), never the reserved mask token."""
        return [UNK_ID if piece == MASK_ID else piece for piece in self.processor.encode(sentence)]

    def encode_batch(self, sentences: Sequence[str]) -> list[list[int]]:
        return [self.encode(sentence) for sentence in sentences]

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenised text; special ids (pad, bos, eos, mask) are dropped."""
        return self.processor.decode([i for i in ids if i > MASK_ID or i == UNK_ID])
