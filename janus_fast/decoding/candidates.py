"""Mask-predict's rows, defined once for every decoder: the length candidates of each sentence,
the ``<bos> <mask>... <eos>`` start, the split of a batch into groups of bounded memory, and the
pick of one candidate per sentence.

Rows: one per (sentence, length candidate), a sentence's candidates adjacent. Shapes: B sentences,
l length beam, N = B * l rows, W their padded width.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from janus_fast.decoding.hypotheses import Hypotheses, output_tokens
from janus_fast.decoding.options import PLAIN_RANKING, CandidateRanking
from janus_fast.length import candidates_from_logits, centred_candidates_from_logits, mean_pool
from janus_fast.model import EncoderOutput, JanusModel

MIN_NAR_LENGTH = 3  # bos + one real token + eos: a non-empty source never gets an empty translation
# mask-predict runs the rows of a batch in groups whose (rows, W, V) fp32 logits fit this, so that
# memory is bounded by the batch options and not by the number of sentences or candidates
LOGITS_BUDGET_BYTES = 256 * 2**20
LENGTH_RULES = ("top", "centred")
MAX_RANKING_BONUS = 1e300  # |length bonus| x any length stays finite in float64 (lengths < 1e8)


def length_candidates(
    model: JanusModel, encoder_out: EncoderOutput, length_beam: int, rule: str = "top"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each sentence's candidate target lengths (bos and eos counted) from the length head
    (``janus_fast.length``): (B, l) int64 best first, capped at the model's positions, and their
    log-probs (B, l) for rule "top" (None for "centred").

    "top" (this project's): the ``length_beam`` most probable lengths >= ``MIN_NAR_LENGTH``, the
    beam capped by the classes that can be a length; a sentence with fewer possible lengths
    (``length_offset``) repeats its best one in place of the impossible (-inf) candidates (a repeat
    ties with the best row, and ties go to the first). The fused Triton kernel computes them where
    ``use_length_kernel`` says so. A sentence none of whose classes can be a length (a short source
    with ``length_offset`` and few classes) or whose length logits are not numbers gets the shortest
    possible length, ``MIN_NAR_LENGTH``, log-prob 0. "centred" (fairseq-generate's): the most probable length (>= 2)
    and centred offsets ``-(l // 2) .. l - 1 - l // 2`` around it, each >= 2, the head's mean pool
    in fairseq's order of operations.
    """
    config = model.config
    states, src_lengths = encoder_out.states, encoder_out.lengths
    if rule == "centred":
        logits = model.length_embed(mean_pool(states, src_lengths, divide_first=True))
        lengths = centred_candidates_from_logits(logits, src_lengths, length_beam, offset=config.length_offset)
        return lengths.clamp(max=config.max_target_positions), None
    if rule != "top":
        raise ValueError(f"unknown length rule {rule!r}; expected one of {LENGTH_RULES}")
    beam = max_length_beam(model, length_beam)
    options = {"offset": config.length_offset, "min_length": MIN_NAR_LENGTH}
    if use_length_kernel(states, beam, config.num_length_classes):
        from janus_fast.kernels import length_candidates as fused_length_candidates

        lengths, log_probs = fused_length_candidates(states, src_lengths, model.length_embed.weight, beam, **options)
    else:
        lengths, log_probs = candidates_from_logits(model.length_logits(encoder_out), src_lengths, beam, **options)
    lengths = lengths.clamp(max=config.max_target_positions)
    none = ~(log_probs[:, 0] > float("-inf"))  # every class impossible (NaN from the softmax) or NaN logits
    if bool(none.any()):
        lengths = lengths.masked_fill(none[:, None], MIN_NAR_LENGTH)
        log_probs = log_probs.masked_fill(none[:, None], float("-inf"))
        log_probs[:, 0].masked_fill_(none, 0.0)  # the one candidate; the others repeat it below
    impossible = log_probs == float("-inf")
    return torch.where(impossible, lengths[:, :1], lengths), log_probs


def use_length_kernel(states: torch.Tensor, beam: int, num_classes: int) -> bool:
    """Whether length candidates come from the Triton kernel: ``JANUS_FAST_LENGTH_BACKEND``
    "torch" / "triton" forces a path; "auto" (default) takes the kernel for CUDA states when triton
    is installed, the beam is within the kernel's 16 and the head within its classes
    (``janus_fast.kernels.LENGTH_MAX_CLASSES``)."""
    backend = os.environ.get("JANUS_FAST_LENGTH_BACKEND", "auto")
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"JANUS_FAST_LENGTH_BACKEND={backend!r}; expected auto, torch or triton")
    if backend != "auto":
        return backend == "triton"
    if not states.is_cuda or beam > 16:  # decided before the import: a plain checkout has no janus_fast.kernels
        return False
    import janus_fast.kernels as kernels

    return kernels.TRITON_AVAILABLE and num_classes <= kernels.LENGTH_MAX_CLASSES


def max_length_beam(model: JanusModel, length_beam: int) -> int:
    """``length_beam`` capped by the number of length classes that can be a length (>= 3)."""
    return max(1, min(length_beam, model.config.num_length_classes - MIN_NAR_LENGTH))


def initial_nar_tokens(lengths: torch.Tensor, config_ids: tuple[int, int, int, int]) -> torch.Tensor:
    """``<bos> <mask>*(L-2) <eos>`` right-padded: lengths (N,) -> (N, max L) int64."""
    pad_id, bos_id, eos_id, mask_id = config_ids
    width = int(lengths.max())
    positions = torch.arange(width, device=lengths.device)[None]
    tokens = torch.full((len(lengths), width), pad_id, dtype=torch.long, device=lengths.device)
    tokens = torch.where(positions < lengths[:, None] - 1, mask_id, tokens)
    tokens = torch.where(positions == lengths[:, None] - 1, eos_id, tokens)
    tokens[:, 0] = bos_id
    return tokens


@dataclass
class MaskPredictState:
    """What mask-predict iterates on: tokens (N, W) int64, scores (N, W) float32, lengths (N,)
    int64, the encoder output of the sentences (one per sentence, not repeated per row: rows
    ``s * length_beam .. (s + 1) * length_beam - 1`` are sentence s's candidates), the candidates
    per sentence and the size V of the logits each row may need."""

    tokens: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor
    sentences: EncoderOutput
    length_beam: int
    vocab_size: int

    @property
    def sentence_of_row(self) -> torch.Tensor:
        """(N,) int64: the sentence (of ``sentences``) each row decodes."""
        count = len(self.sentences.lengths)
        return torch.arange(count, device=self.lengths.device).repeat_interleave(self.length_beam)

    @property
    def encoder_out(self) -> EncoderOutput:
        """The encoder output repeated per row (a copy: ``DecoderPasses.bind`` takes the sentences'
        and ``sentence_of_row`` instead)."""
        return self.sentences.select(self.sentence_of_row)

    def split(self, budget_bytes: int = LOGITS_BUDGET_BYTES) -> list[MaskPredictState]:
        """Consecutive groups of whole sentences whose (rows, W, V) fp32 logits take at most
        ``budget_bytes`` (W = the group's longest candidate; at least one sentence per group). Rows
        are independent, so splitting does not change any output."""
        num_rows = len(self.lengths)
        beam = self.length_beam
        longest = self.lengths.view(-1, beam).max(1).values.tolist()  # per sentence
        row_bytes = self.vocab_size * 4
        groups: list[tuple[int, int]] = []
        start, width = 0, 0
        for sentence, length in enumerate(longest):
            width = max(width, length)
            rows = (sentence + 1) * beam - start
            if rows > beam and rows * width * row_bytes > budget_bytes:
                groups.append((start, sentence * beam))
                start, width = sentence * beam, length
        groups.append((start, num_rows))
        if len(groups) == 1:
            return [self]
        states = []
        for begin, end in groups:
            sentences = torch.arange(begin // beam, end // beam, device=self.tokens.device)
            group_width = int(self.lengths[begin:end].max())
            states.append(
                MaskPredictState(
                    self.tokens[begin:end, :group_width].clone(),
                    self.scores[begin:end, :group_width].clone(),
                    self.lengths[begin:end],
                    self.sentences.select(sentences),
                    beam,
                    self.vocab_size,
                )
            )
        return states


def start_mask_predict(
    model: JanusModel, encoder_out: EncoderOutput, length_beam: int, rule: str = "top"
) -> MaskPredictState:
    """The length candidates of ``rule`` (``length_candidates``) laid out as ``<bos> <mask>* <eos>``
    rows, with the sentences' encoder output."""
    config = model.config
    candidates, _ = length_candidates(model, encoder_out, length_beam, rule)
    batch, beam = candidates.shape
    lengths = candidates.reshape(-1)
    tokens = initial_nar_tokens(lengths, (config.pad_id, config.bos_id, config.eos_id, config.mask_id))
    scores = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    return MaskPredictState(tokens, scores, lengths, encoder_out, beam, config.vocab_size)


def best_length_candidates(
    model: JanusModel,
    tokens: torch.Tensor,
    scores: torch.Tensor,
    lengths: torch.Tensor,
    beam: int,
    ar_scores: torch.Tensor | None = None,
    rule: CandidateRanking = PLAIN_RANKING,
) -> Hypotheses:
    """Per sentence, the length candidate (row) that ``rule`` ranks first: the highest mean token
    log-probability, or the highest ``ar_scores`` (N,) where given (``JanusModel.ar_scores``, for
    ``rule.ar_rescore``), plus ``rule.length_bonus`` per target token of the candidate (bos/eos
    not counted); the hypothesis score is the winner's mean log-probability, or its AR score,
    without the bonus.

    tokens (B*l, W) int64, scores (B*l, W) float32, lengths (B*l,) int64; rows of a sentence
    adjacent; ties go to the first row.
    """
    config = model.config
    ranking = ar_scores
    if ranking is None:
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
        real = (positions >= 1) & (positions < lengths[:, None] - 1)
        ranking = (scores * real).sum(1) / real.sum(1).clamp(min=1)
    # ranked in float64: a bonus beyond float32's range still orders by length; one so large that
    # bonus x length would overflow even float64 is capped where it already orders by length alone
    bonus = max(-MAX_RANKING_BONUS, min(MAX_RANKING_BONUS, rule.length_bonus))
    bonused = ranking.double() + bonus * (lengths - 2).double() if bonus else ranking
    best = bonused.view(-1, beam).argmax(1)
    chosen = torch.arange(len(best), device=best.device) * beam + best
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    return Hypotheses(output_tokens(tokens[chosen].tolist(), config.eos_id, specials), ranking[chosen].tolist())
