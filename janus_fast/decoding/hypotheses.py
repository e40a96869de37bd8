"""What every decoder returns: token ids per sentence and their scores, without special tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Hypotheses:
    """Decoded token ids per sentence (no bos/eos/pad) and their scores (mean log-probability
    per token for NAR, length-normalised log-probability for AR); ``positional``, where the decoding
    reports them (compat "fairseq"), each sentence's per-token scores as fairseq-generate prints
    them (natural log)."""

    tokens: list[list[int]]
    scores: list[float]
    positional: list[list[float]] | None = None

    @staticmethod
    def concatenate(parts: list[Hypotheses]) -> Hypotheses:
        positional = None
        if parts and all(part.positional is not None for part in parts):
            positional = [row for part in parts for row in part.positional]
        return Hypotheses([t for p in parts for t in p.tokens], [s for p in parts for s in p.scores], positional)


def strip_special(row: list[int], eos_id: int, specials: set[int]) -> list[int]:
    """Tokens up to the first eos, without special ids."""
    if eos_id in row:
        row = row[: row.index(eos_id)]
    return [token for token in row if token not in specials]


def collapse_repeats(tokens: list[int]) -> list[int]:
    """Each run of one repeated token kept once ("a a a b a" -> "a b a"). Mask-predict fills the
    positions of an iteration independently, so two neighbours often get the same token; collapsing
    them is the usual NAR post-processing (Lee et al. 2018)."""
    return [token for index, token in enumerate(tokens) if index == 0 or token != tokens[index - 1]]


def output_tokens(rows: list[list[int]], eos_id: int, specials: set[int]) -> list[list[int]]:
    """Each decoded row (a list of ids from the first generated position) as output tokens:
    ``strip_special`` of every row."""
    return [strip_special(row, eos_id, specials) for row in rows]


def greedy_hypotheses(tokens: list[list[int]], summed: torch.Tensor, lengths: torch.Tensor) -> Hypotheses:
    """A greedy search's result as the beam search's (``beam.finished_beam_search``, beam 1): the
    length-normalised score ``summed / lengths`` (B,) float32, and, where a sentence's summed
    log-probability is NaN (a model that yields NaN), no finished hypothesis: "" and -inf, since a
    NaN-scored eos never finishes a beam search's hypothesis."""
    scores = summed / lengths.clamp(min=1)
    unfinished = scores.isnan()
    tokens = [[] if nan else row for row, nan in zip(tokens, unfinished.tolist())]
    return Hypotheses(tokens, scores.masked_fill(unfinished, float("-inf")).tolist())
