"""Reading text, masking schemes and batching."""

from __future__ import annotations

import gzip

import pytest
import torch

from janus_fast.data import InputError, ParallelDataset, corpus_path, iter_lines, read_lines, span_mask, uniform_mask


def test_read_plain_gz_and_invalid_utf8(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"eins\nzwei\n\ndrei")
    assert read_lines(str(tmp_path / "a.txt")) == ["eins", "zwei", "", "drei"]
    with gzip.open(tmp_path / "b.gz", "wb") as handle:
        handle.write("ä\nö\n".encode())
    assert read_lines(str(tmp_path / "b.gz")) == ["ä", "ö"]
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfebad\n")
    with pytest.warns(UserWarning, match="invalid UTF-8"):
        assert read_lines(str(tmp_path / "bad.txt")) == ["ok", "\ufffd\ufffdbad"]
    with pytest.raises(InputError, match="missing.txt"):
        read_lines(str(tmp_path / "missing.txt"))


def test_carriage_returns_inside_lines_are_kept_with_one_warning(tmp_path):
    """Lines end at \\n (CRLF's CR dropped); a CR alone (old Mac line endings) ends nothing, so the
    sentences around it are one line: said once, naming the first such line."""
    import warnings

    (tmp_path / "crlf.txt").write_bytes(b"eins\r\nzwei\r\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_lines(str(tmp_path / "crlf.txt")) == ["eins", "zwei"]
    (tmp_path / "mac.txt").write_bytes(b"eins\rzwei\r\ndrei\rvier\r")
    with pytest.warns(UserWarning, match=r"mac.txt: line 1 holds a carriage return") as caught:
        assert read_lines(str(tmp_path / "mac.txt")) == ["eins\rzwei", "drei\rvier"]
    assert len([w for w in caught if "carriage return" in str(w.message)]) == 1


@pytest.mark.parametrize("scheme", [span_mask, uniform_mask])
def test_masks_cover_only_real_tokens(scheme):
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 30, (500,), generator=generator)
    masked = scheme(lengths, 32, generator)
    positions = torch.arange(32)[None]
    assert not (masked & ((positions == 0) | (positions >= lengths[:, None] - 1))).any()
    counts = masked.sum(1)
    has_real = lengths > 2
    assert (counts[has_real] >= 1).all()
    assert (counts[~has_real] == 0).all()


def test_span_mask_masks_about_55_percent():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.full((2000,), 22)
    ratio = span_mask(lengths, 22, generator).sum() / (2000 * 20)
    assert 0.45 < float(ratio) < 0.65


def test_batches_respect_max_tokens_and_cover_everything():
    generator = torch.Generator().manual_seed(0)
    sources = [[5] * int(n) for n in torch.randint(1, 40, (300,), generator=generator)]
    targets = [[6] * int(n) for n in torch.randint(1, 40, (300,), generator=generator)]
    data = ParallelDataset(sources, targets, max_source=30, max_target=30)
    batches = data.batches(200, torch.Generator().manual_seed(1))
    assert sorted(i for b in batches for i in b) == list(range(300))
    for indices in batches:
        batch = data.collate(indices)
        assert batch.src_tokens.numel() <= 200 or len(indices) == 1
        assert batch.tgt_tokens.numel() <= 200 or len(indices) == 1
        assert (batch.tgt_tokens[:, 0] == 2).all()


def test_a_line_past_the_byte_limit_is_cut_with_a_warning_and_memory_stays_bounded(tmp_path):
    """An endless line (a file without newlines) costs MAX_LINE_BYTES, not its length: its first
    MAX_LINE_BYTES kept (a character the cut splits dropped), the rest skipped, the next lines intact."""
    import io
    import tracemalloc

    from janus_fast.data import MAX_LINE_BYTES, decoded_lines

    long_line = "ä" * MAX_LINE_BYTES  # 2 bytes each: the cut falls after a whole character
    odd = "a" + "€" * MAX_LINE_BYTES  # 1 + 3k bytes: the cut splits a character
    data = f"erste\n{long_line}\n{odd}\nletzte".encode()
    with pytest.warns(UserWarning, match=r"line 2 is longer than \d+ bytes"):
        lines = list(decoded_lines(io.BytesIO(data), "in.txt"))
    assert lines[0] == "erste" and lines[3] == "letzte" and len(lines) == 4
    assert lines[1] == "ä" * (MAX_LINE_BYTES // 2)
    assert lines[2] == "a" + "€" * ((MAX_LINE_BYTES - 1) // 3) and "\ufffd" not in lines[2]
    path = tmp_path / "endless.txt"
    with open(path, "wb") as handle:
        for _ in range(40):  # 40 MiB without a newline
            handle.write(b"Hund " * (MAX_LINE_BYTES // 5))
        handle.write(b"\nEnde.\n")
    tracemalloc.start()
    with pytest.warns(UserWarning, match="line 1 is longer"):
        lines = [len(line) for line in iter_lines(str(path))]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert lines == [MAX_LINE_BYTES, 5] and peak < 6 * MAX_LINE_BYTES


def test_a_split_with_both_a_gzipped_and_a_plain_file_is_refused(tmp_path):
    """``train.de.gz`` beside a plain ``train.de`` (unpacked with ``gunzip -k``, then edited): which
    one was meant cannot be told, so both are named and neither is read; one alone is read."""
    with gzip.open(tmp_path / "train.de.gz", "wt") as handle:
        handle.write("ein Hund\n")
    assert corpus_path(str(tmp_path), "train", "de") == str(tmp_path / "train.de.gz")
    (tmp_path / "train.de").write_text("ein hund\n")
    with pytest.raises(InputError, match=r"both .*train\.de\.gz and .*train\.de exist"):
        corpus_path(str(tmp_path), "train", "de")
    (tmp_path / "train.de.gz").unlink()
    assert corpus_path(str(tmp_path), "train", "de") == str(tmp_path / "train.de")


def test_a_byte_order_mark_and_bytes_after_gzip_data(tmp_path):
    """A UTF-8 byte order mark is not text (it stayed glued to a reference's first word); bytes after
    a gzip stream that are no gzip stream are named as such (before: "Not a gzipped file")."""
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfeins\nzwei\n")
    assert read_lines(str(tmp_path / "bom.txt")) == ["eins", "zwei"]
    (tmp_path / "inner.txt").write_bytes(b"eins\n\xef\xbb\xbfzwei\n")  # only a first line's mark is one
    assert read_lines(str(tmp_path / "inner.txt")) == ["eins", "\ufeffzwei"]
    with open(tmp_path / "trailing.gz", "wb") as handle:
        handle.write(gzip.compress(b"eins\nzwei\n") + b"GARBAGE")
    with pytest.raises(InputError, match=r"trailing.gz: bytes after its gzip data are not gzip"):
        read_lines(str(tmp_path / "trailing.gz"))


def test_the_tokenizer_trains_on_lines_longer_than_sentencepieces_default_limit():
    """SentencePiece skips lines over 4,192 bytes unless told otherwise: a corpus of such lines left it
    nothing to train on (an error that blamed --vocab-size)."""
    from janus_fast.tokenizer import Tokenizer

    words = "ein hund läuft über eine wiese und ein mann fährt mit dem fahrrad".split()
    long_lines = [" ".join(words[(i + j) % len(words)] for j in range(900)) for i in range(20)]
    assert min(len(line.encode("utf-8")) for line in long_lines) > 4192
    with pytest.warns(UserWarning, match="20 training line"):  # over 4,096 characters: learned from their beginning
        tokenizer = Tokenizer.train(long_lines, 60, "unigram")
    assert tokenizer.decode(tokenizer.encode("ein hund")) == "ein hund"


def test_the_tokenizer_learns_from_the_beginning_of_a_very_long_line():
    """SentencePiece's time grows with the square of a repetitive line's length (200,000 "=" took 42 s,
    a 1 MiB line of one repeated word more than 10 minutes, with no output): it now learns from a
    line's first TOKENIZER_LINE_CHARS characters. A character that only appears past them gets no piece."""
    from janus_fast.tokenizer import TOKENIZER_LINE_CHARS, Tokenizer
    from janus_fast.vocab import UNK_ID

    lines = ["ein hund läuft über eine wiese", "ein mann fährt fahrrad"] * 20
    lines.append("=" * 200_000 + "Ω")
    with pytest.warns(UserWarning, match=f"1 training line.* longer than {TOKENIZER_LINE_CHARS} characters"):
        tokenizer = Tokenizer.train(lines, 40, "unigram")
    assert tokenizer.encode("Ω") in ([UNK_ID], [tokenizer.processor.piece_to_id("▁"), UNK_ID])
    assert UNK_ID not in tokenizer.encode("= ein hund")
