"""Parallel text: reading, encoding, length-bucketed batches and the NAR masking of targets."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import torch

from janus_fast.vocab import BOS_ID, EOS_ID, PAD_ID

LANGUAGES = ("de", "en", "fr", "cs")


class InputError(ValueError):
    """Bad user input (missing file, mismatched corpus, ...), reported with a clear message."""


# the bytes a tokenizer file may hold: spm.model, dict.txt, bpe.model / bpe.codes (the shipped
# 8,000-piece spm.model: 0.4 MB; a 250,000-symbol dict.txt: about 4 MB)
MAX_TOKENIZER_FILE_BYTES = 256 << 20


def read_regular_file(path: str, limit: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes (a file of a checkpoint
    folder, a dictionary): InputError for anything else, before reading it (a FIFO would block the
    read forever, a device such as /dev/zero never end); OSError where it cannot be read."""
    import stat

    info = os.stat(path)  # follows a symlink: its target is what would be read
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a pipe" if stat.S_ISFIFO(info.st_mode) else "a device"
        raise InputError(f"{path}: {kind}, not a regular file")
    if info.st_size > limit:
        raise InputError(f"{path}: {info.st_size} bytes, more than the {limit} such a file may hold")
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # grew since the stat
        raise InputError(f"{path}: more than the {limit} bytes such a file may hold")
    return data


# The most bytes of one line kept: the rest of a longer line is skipped (with a warning), so that
# reading, and tokenizing, an endless line takes bounded memory. Far past any model's input (a
# model takes at most max_source_positions pieces, 1,024 for the largest here, a few KB of text).
MAX_LINE_BYTES = 1 << 20


def decoded_lines(handle: BinaryIO, what: str, warn: bool = True) -> Iterator[str]:
    """The lines of a binary stream decoded as UTF-8, without newlines (a final newline ends the
    last line rather than starting an empty one; a CR before a newline dropped). Invalid UTF-8 is
    replaced (U+FFFD) with one warning naming ``what`` (none without ``warn``); a CR inside a line is
    kept, with one such warning (old Mac line endings put several sentences on one line). A line longer than
    ``MAX_LINE_BYTES`` is cut there (a character split by the cut dropped) and the rest of it
    skipped, with a warning naming the line."""
    warned = warned_return = not warn
    number = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES)
        if not raw:
            return
        number += 1
        if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
            skipped = 0
            while True:  # the rest of the line, read in bounded pieces and dropped
                rest = handle.readline(MAX_LINE_BYTES)
                skipped += len(rest)
                if not rest or rest.endswith(b"\n"):
                    break
            warnings.warn(
                f"{what}: line {number} is longer than {MAX_LINE_BYTES} bytes: its first {MAX_LINE_BYTES} kept "
                f"({skipped} more skipped)",
                stacklevel=2,
            )
            raw = raw[: len(raw) - _partial_character_bytes(raw)]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            if not warned:
                warnings.warn(f"{what}: invalid UTF-8 replaced with U+FFFD", stacklevel=2)
                warned = True
            line = raw.decode("utf-8", errors="replace")
        line = (line[:-1] if line.endswith("\n") else line).rstrip("\r")
        if number == 1 and line.startswith("\ufeff"):  # a byte order mark: not text (a reference's first word)
            line = line[1:]
        if "\r" in line and not warned_return:
            warnings.warn(
                f"{what}: line {number} holds a carriage return (\\r) not followed by a line feed (old Mac line "
                "endings?): lines end at \\n only, so the text on both sides of it is one sentence",
                stacklevel=2,
            )
            warned_return = True
        yield line


def _partial_character_bytes(data: bytes) -> int:
    """How many bytes at the end of ``data`` begin a UTF-8 character that a cut left incomplete."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the last character's first byte: how long it says it is
            length = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return back if length > back else 0
    return 0


GZIP_MAGIC = b"\x1f\x8b"


def gzip_named(path: str) -> bool:
    """Whether ``path``'s name says gzip: it ends in ``.gz``, in any case (``.GZ`` too). An output
    so named is written compressed."""
    return path.lower().endswith(".gz")


def iter_lines(path: str, warn: bool = True) -> Iterator[str]:
    """The lines of a UTF-8 text file (plain or gzip) one at a time: those of ``read_lines``,
    without holding the file (``decoded_lines``). Gzip is read where the data starts with its magic
    bytes, whatever the name, or where the name ends in ``.gz`` (then anything else is an error). An
    unreadable or truncated file raises InputError naming it."""
    try:
        with open(path, "rb") as raw:
            yield from stream_lines(raw, path, warn, gzip_named(path))
    except (OSError, EOFError, zlib.error) as error:  # zlib.error: corrupt compressed data
        if isinstance(error, gzip.BadGzipFile) and "Not a gzipped file" in str(error):  # after its first stream
            raise InputError(f"cannot read {path}: bytes after its gzip data are not gzip ({error})") from error
        raise InputError(f"cannot read {path}: {error}") from error


class _Prefixed(io.RawIOBase):
    """A binary stream whose first bytes (``head``, already read) come before the rest of ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self.head, self.stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        if self.head:
            count = min(len(buffer), len(self.head))
            buffer[:count], self.head = self.head[:count], self.head[count:]
            return count
        read = getattr(self.stream, "read1", self.stream.read)
        data = read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def stream_lines(raw: BinaryIO, what: str, warn: bool = True, compressed: bool = False) -> Iterator[str]:
    """``decoded_lines`` of a binary stream (a file, standard input, a pipe), through gzip where it
    starts with gzip's magic bytes (its first two bytes read whole, however a pipe delivers them);
    ``compressed`` (a name ending in .gz): anything else, an empty file too, is an InputError."""
    head = raw.read(2)
    if compressed and head != GZIP_MAGIC:
        raise InputError(f"{what}: named .gz but not gzip data" + (" (empty)" if not head else ""))
    stream = io.BufferedReader(_Prefixed(head, raw))
    if head == GZIP_MAGIC:
        with gzip.GzipFile(fileobj=stream, mode="rb") as handle:
            yield from decoded_lines(handle, what, warn)
    else:
        yield from decoded_lines(stream, what, warn)


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks; InputError naming it if unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise InputError(f"cannot read {path}: {error}") from error
    return digest.hexdigest()


def read_lines(path: str) -> list[str]:
    """Lines of a UTF-8 text file (plain or ``.gz``), without newlines (``iter_lines``).

    Invalid UTF-8 is replaced (U+FFFD) with a warning naming the file; a missing or unreadable
    file raises ``InputError`` naming it.
    """
    return list(iter_lines(path))


def corpus_path(data_dir: str, split: str, language: str) -> str:
    """Path of one side of a Multi30k-style split, e.g. ``train.de.gz`` (or plain ``train.de``);
    InputError when there is neither, or both (which one was meant cannot be told: a plain copy
    unpacked and then edited beside its original, say)."""
    if language not in LANGUAGES:
        warnings.warn(f"language {language!r} is not one of the bundled ones {LANGUAGES}", stacklevel=2)
    found = [path for path in corpus_candidates(data_dir, split, language) if os.path.exists(path)]
    if len(found) > 1:
        raise InputError(f"both {found[0]} and {found[1]} exist: which one to read is unclear; move one away")
    if found:
        return found[0]
    raise InputError(f"no file {split}.{language}[.gz] in {data_dir}")


def corpus_candidates(data_dir: str, split: str, language: str) -> list[str]:
    """The paths one side of a split may have, in the order ``corpus_path`` looks: gzipped, plain."""
    return [os.path.join(data_dir, f"{split}.{language}{suffix}") for suffix in (".gz", "")]


def read_parallel(source_path: str, target_path: str, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Aligned source and target lines; their counts must match."""
    sources, targets = read_lines(source_path), read_lines(target_path)
    if len(sources) != len(targets):
        raise InputError(f"{source_path} has {len(sources)} lines but {target_path} has {len(targets)}")
    if limit is not None:
        sources, targets = sources[:limit], targets[:limit]
    return sources, targets


@dataclass
class Batch:
    """A padded batch. src (B, S), tgt (B, L) ``<bos> y <eos>``, lengths (B,) int64."""

    src_tokens: torch.Tensor
    src_lengths: torch.Tensor
    tgt_tokens: torch.Tensor
    tgt_lengths: torch.Tensor

    def to(self, device: str | torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.src_tokens, self.src_lengths, self.tgt_tokens, self.tgt_lengths)))

    @property
    def num_target_tokens(self) -> int:
        return int(self.tgt_lengths.sum()) - len(self.tgt_lengths)


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad int sequences: (B, max_len) int64 and lengths (B,) int64."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    out = torch.full((len(sequences), max(int(lengths.max()), 1)), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return out, lengths


class ParallelDataset:
    """Encoded sentence pairs: sources without bos/eos, targets as ``<bos> y <eos>``.

    Pairs with an empty side are dropped; longer ones are truncated to the model's maxima.
    """

    def __init__(self, sources: list[list[int]], targets: list[list[int]], max_source: int, max_target: int) -> None:
        pairs = [(s[:max_source], [BOS_ID, *t[: max_target - 2], EOS_ID]) for s, t in zip(sources, targets) if s and t]
        self.sources = [p[0] for p in pairs]
        self.targets = [p[1] for p in pairs]

    def __len__(self) -> int:
        return len(self.sources)

    def batches(self, max_tokens: int, generator: torch.Generator | None = None) -> list[list[int]]:
        """Index lists of batches of at most ``max_tokens`` padded tokens (source or target).

        Sentences are sorted by length (ties shuffled when ``generator`` is given) and cut into
        batches; the batch order is shuffled with ``generator``.
        """
        count = len(self)
        noise = (
            torch.rand(count, generator=generator, dtype=torch.float32)
            if generator is not None
            else torch.zeros(count, dtype=torch.float32)
        )
        keys = [(len(self.targets[i]), len(self.sources[i]), float(noise[i])) for i in range(count)]
        order = sorted(range(count), key=keys.__getitem__)
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for index in order:
            size = max(len(self.sources[index]), len(self.targets[index]))
            if current and max(longest, size) * (len(current) + 1) > max_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, size)
        if current:
            batches.append(current)
        if generator is not None:
            permutation = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in permutation]
        return batches

    def collate(self, indices: Sequence[int]) -> Batch:
        src, src_lengths = pad_sequences([self.sources[i] for i in indices])
        tgt, tgt_lengths = pad_sequences([self.targets[i] for i in indices])
        return Batch(src, src_lengths, tgt, tgt_lengths)


def uniform_mask(tgt_lengths: torch.Tensor, width: int, generator: torch.Generator) -> torch.Tensor:
    """CMLM masking: k ~ U[1, n] of the n real tokens of each sentence, uniformly at random.

    tgt_lengths (B,) counting bos/eos; returns (B, width) bool, never bos/eos/pad.
    """
    real_counts = tgt_lengths - 2
    positions = torch.arange(width)[None]
    is_real = (positions >= 1) & (positions < (tgt_lengths - 1)[:, None])
    scores = torch.rand(len(tgt_lengths), width, generator=generator, dtype=torch.float32).masked_fill(~is_real, 2.0)
    ranks = scores.argsort(1).argsort(1)
    num_to_mask = (
        torch.rand(len(tgt_lengths), generator=generator, dtype=torch.float32) * real_counts
    ).floor().long() + 1
    num_to_mask = torch.minimum(num_to_mask, real_counts)
    return (ranks < num_to_mask[:, None]) & is_real


def span_mask(
    tgt_lengths: torch.Tensor, width: int, generator: torch.Generator, ratio: float = 0.7, mean_span: float = 2.0
) -> torch.Tensor:
    """JANUS reference masking: spans ~ Poisson(mean_span) at random starts until a budget of
    ceil(ratio * n) masked tokens is spent (spans may overlap, so ~55% end up masked).

    tgt_lengths (B,) counting bos/eos; returns (B, width) bool, never bos/eos/pad, >= 1 per sentence
    that has a real token.
    """
    batch = len(tgt_lengths)
    real_counts = tgt_lengths - 2
    budget = torch.ceil(ratio * real_counts.double()).long()
    # at most `max_budget` spans are ever needed (each span has length >= 1 once zeros are skipped)
    max_spans = max(int(budget.max()), 1)
    rates = torch.full((batch, max_spans), mean_span, dtype=torch.double)
    span_lengths = torch.poisson(rates, generator=generator).long().clamp(min=1)
    starts = (
        torch.rand(batch, max_spans, generator=generator, dtype=torch.float32) * real_counts[:, None].clamp(min=1)
    ).long() + 1
    spent_before = span_lengths.cumsum(1) - span_lengths
    used = spent_before < budget[:, None]
    positions = torch.arange(width)[None, None]
    covered = (positions >= starts[..., None]) & (positions < (starts + span_lengths)[..., None]) & used[..., None]
    masked = covered.any(1)
    is_real = (torch.arange(width)[None] >= 1) & (torch.arange(width)[None] < (tgt_lengths - 1)[:, None])
    return masked & is_real


def mask_targets(tgt_lengths: torch.Tensor, width: int, scheme: str, generator: torch.Generator) -> torch.Tensor:
    """NAR-masked positions (B, width) bool by ``scheme`` ("span" or "uniform")."""
    if scheme == "span":
        return span_mask(tgt_lengths, width, generator)
    if scheme == "uniform":
        return uniform_mask(tgt_lengths, width, generator)
    raise ValueError(f"unknown masking scheme {scheme!r}; expected span or uniform")


__all__ = [
    "Batch",
    "InputError",
    "ParallelDataset",
    "read_lines",
    "read_parallel",
    "corpus_path",
    "pad_sequences",
    "mask_targets",
    "span_mask",
    "uniform_mask",
    "decoded_lines",
    "iter_lines",
]
