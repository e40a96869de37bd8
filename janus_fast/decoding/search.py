"""What both decoders share: length candidates, the mask-predict start state and its per-sentence
pick (optionally by the model's AR scores), AR length limits and the beam search loop, stripping
of special tokens, and the hypotheses they return.

``janus_fast.decoding.reference`` (the plain PyTorch decoders, the ground truth) and
``janus_fast.decoding.engine`` (the fast ones) build on these; ``janus_fast.generate.generate`` dispatches
between them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F

from janus_fast.length import candidates_from_logits
from janus_fast.model import EncoderOutput, JanusModel, LayerCache

MIN_NAR_LENGTH = 3  # bos + one real token + eos: a non-empty source never gets an empty translation
# mask-predict runs the rows of a batch in groups whose (rows, T, V) fp32 logits fit this, so that
# memory is bounded by the batch options and not by the number of sentences or candidates
LOGITS_BUDGET_BYTES = 256 * 2**20


@dataclass
class Hypotheses:
    """Decoded token ids per sentence (no bos/eos/pad) and their scores (mean log-probability
    per token for NAR, length-normalised log-probability for AR)."""

    tokens: list[list[int]]
    scores: list[float]

    @staticmethod
    def concatenate(parts: list[Hypotheses]) -> Hypotheses:
        return Hypotheses([t for p in parts for t in p.tokens], [s for p in parts for s in p.scores])


def length_candidates(
    model: JanusModel, encoder_out: EncoderOutput, length_beam: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``length_beam`` target lengths (counting bos/eos) of the length head
    (``janus_fast.length``): lengths (B, l) int64 best first, and their log-probs (B, l).

    The beam is capped by the classes that can be a length (>= ``MIN_NAR_LENGTH``); a sentence
    with fewer possible lengths (``length_offset``) repeats its best one in place of the
    impossible (-inf) candidates: a repeat ties with the best row, and ties go to the first. The
    fused Triton kernel computes the candidates where ``use_length_kernel`` says so.
    """
    config = model.config
    beam = max_length_beam(model, length_beam)
    states, src_lengths = encoder_out.states, encoder_out.lengths
    options = {"offset": config.length_offset, "min_length": MIN_NAR_LENGTH}
    if use_length_kernel(states, beam):
        from janus_fast.kernels import length_candidates as fused_length_candidates

        lengths, log_probs = fused_length_candidates(states, src_lengths, model.length_embed.weight, beam, **options)
    else:
        lengths, log_probs = candidates_from_logits(model.length_logits(encoder_out), src_lengths, beam, **options)
    lengths = lengths.clamp(max=config.max_target_positions)
    impossible = log_probs == float("-inf")
    return torch.where(impossible, lengths[:, :1], lengths), log_probs


def use_length_kernel(states: torch.Tensor, beam: int) -> bool:
    """Whether length candidates come from the Triton kernel: ``JANUS_FAST_LENGTH_BACKEND``
    "torch" / "triton" forces a path; "auto" (default) takes the kernel for CUDA states when triton
    is installed and the beam is within the kernel's 16."""
    backend = os.environ.get("JANUS_FAST_LENGTH_BACKEND", "auto")
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"JANUS_FAST_LENGTH_BACKEND={backend!r}; expected auto, torch or triton")
    if backend != "auto":
        return backend == "triton"
    if not states.is_cuda or beam > 16:  # decided before the import: a plain checkout has no janus_fast.kernels
        return False
    from janus_fast import kernels

    return kernels.TRITON_AVAILABLE


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


@dataclass
class MaskPredictState:
    """What mask-predict iterates on, one row per (sentence, length candidate), candidates of a
    sentence adjacent: tokens (N, T) int64, scores (N, T) float32, lengths (N,) int64, the
    encoder output repeated per row (cross-attention keys/values computed once), and the size V
    of the logits each row will need."""

    tokens: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor
    encoder_out: EncoderOutput
    length_beam: int
    vocab_size: int

    def split(self, budget_bytes: int = LOGITS_BUDGET_BYTES) -> list[MaskPredictState]:
        """Consecutive groups of whole sentences whose (rows, T, V) fp32 logits take at most
        ``budget_bytes`` (T = the group's longest candidate; at least one sentence per group). Rows
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
            rows = torch.arange(begin, end, device=self.tokens.device)
            group_width = int(self.lengths[begin:end].max())
            states.append(
                MaskPredictState(
                    self.tokens[begin:end, :group_width].clone(),
                    self.scores[begin:end, :group_width].clone(),
                    self.lengths[begin:end],
                    self.encoder_out.select(rows),
                    beam,
                    self.vocab_size,
                )
            )
        return states


def start_mask_predict(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    num_iterations: int,
    length_beam: int,
    encoder_out: EncoderOutput | None = None,
) -> MaskPredictState:
    """Encode once (unless ``encoder_out`` is given), pick the length candidates and lay out
    ``<bos> <mask>* <eos>`` rows."""
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    if length_beam < 1:
        raise ValueError(f"length_beam must be >= 1, got {length_beam}")
    config = model.config
    if encoder_out is None:
        encoder_out = model.encode(src_tokens, src_lengths)
    candidates, _ = length_candidates(model, encoder_out, length_beam)
    batch, beam = candidates.shape
    lengths = candidates.reshape(-1)
    rows_encoder = encoder_out.select(torch.arange(batch, device=lengths.device).repeat_interleave(beam))
    tokens = initial_nar_tokens(lengths, (config.pad_id, config.bos_id, config.eos_id, config.mask_id))
    scores = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    return MaskPredictState(tokens, scores, lengths, rows_encoder, beam, config.vocab_size)


def best_length_candidates(
    model: JanusModel,
    tokens: torch.Tensor,
    scores: torch.Tensor,
    lengths: torch.Tensor,
    beam: int,
    ranking: torch.Tensor | None = None,
    length_bonus: float = 0.0,
) -> Hypotheses:
    """Per sentence, the length candidate (row) with the highest mean token log-probability, or
    with the highest ``ranking`` (N,) where given (e.g. ``ar_candidate_scores``), plus
    ``length_bonus`` per target token of the candidate (bos/eos not counted; 0.0 = the plain
    score); the hypothesis score is the winner's mean log-probability, or its ranking, without
    the bonus.

    tokens (B*l, T) int64, scores (B*l, T) float32, lengths (B*l,) int64; rows of a sentence
    adjacent; ties go to the first row.
    """
    config = model.config
    if ranking is None:
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
        real = (positions >= 1) & (positions < lengths[:, None] - 1)
        ranking = (scores * real).sum(1) / real.sum(1).clamp(min=1)
    bonused = ranking + length_bonus * (lengths - 2).to(ranking.dtype) if length_bonus else ranking
    best = bonused.view(-1, beam).argmax(1)
    chosen = torch.arange(len(best), device=best.device) * beam + best
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    out_tokens = [strip_special(row, config.eos_id, specials) for row in tokens[chosen].tolist()]
    return Hypotheses(out_tokens, ranking[chosen].tolist())


def ar_candidate_scores(
    model: JanusModel, tokens: torch.Tensor, lengths: torch.Tensor, encoder_out: EncoderOutput
) -> torch.Tensor:
    """The model's own AR verdict on finished NAR candidates: per row, the mean P_AR
    log-probability of its tokens after bos (eos included), teacher-forced in one pass of both
    decoder streams (``JanusModel.ar_hidden``). Picking the length candidate by it instead of by
    its NAR score is "AR rescoring" (``ar_rescore``).

    tokens (N, T) int64 ``<bos> y <eos>`` right-padded (no mask left), lengths (N,) int64 >= 2,
    encoder_out per row -> (N,) float32.
    """
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
    inside = positions < lengths[:, None]
    rows = torch.where(inside, tokens, model.config.pad_id)
    log_probs = F.log_softmax(model.output_logits(model.ar_hidden(rows, lengths, encoder_out)).float(), dim=-1)
    predicted = log_probs.gather(2, rows[:, 1:, None]).squeeze(2)  # (N, T-1): tokens[1:] given their prefix
    real = inside[:, 1:]
    return (predicted * real).sum(1) / real.sum(1).clamp(min=1)


# AR length limits (max_len_a, max_len_b): this project's default, and fairseq-generate's
# (--max-len-a 0 --max-len-b 200) for compat "fairseq"
JANUS_MAX_LEN = (1.2, 10)
FAIRSEQ_MAX_LEN = (0.0, 200)


def max_ar_lengths(src_lengths: torch.Tensor, model: JanusModel, max_len_a: float, max_len_b: int) -> torch.Tensor:
    """Tokens each sentence's AR search may generate, eos included: (B,) int64, >= 1.

    Per sentence (``max_len_a * src_len + max_len_b``), so a translation never depends on the
    other sentences of its batch.
    """
    limits = (max_len_a * src_lengths.double() + max_len_b).long()
    return limits.clamp(1, model.config.max_target_positions - 1)


@dataclass(frozen=True)
class BeamRules:
    """What an AR beam search may generate: ``blocked_ids`` never, ``eos_id`` not before step
    ``min_length`` (0-based) and only it at a row's length limit. Rows start from ``bos_id``.
    ``nan_as_impossible``: a NaN log-probability counts as -inf (fairseq's rule)."""

    bos_id: int
    eos_id: int
    pad_id: int
    blocked_ids: tuple[int, ...]
    min_length: int = 0
    nan_as_impossible: bool = False


@dataclass
class FinishedBeams:
    """Each sentence's best finished hypothesis: ``tokens`` y_1 .. y_n eos (no bos), the
    log-probability of each (``positional_scores``) and ``scores``: their sum / (n + 1)."""

    tokens: list[list[int]]
    positional_scores: list[list[float]]
    scores: list[float]


EncoderSide = TypeVar("EncoderSide")


class BeamRows(Generic[EncoderSide]):
    """The per-row state of a decoder under ``finished_beam_search``: its key/value caches and its
    per-row encoder side (an ``EncoderOutput``, the native decoder's memory, ...), kept on the rows
    the search keeps. Pass ``reorder`` as the search's callback and read ``encoder`` in each step.

    ``select(encoder, origin)`` returns the encoder side of rows ``origin`` (rows',) int64.
    """

    def __init__(
        self,
        caches: Sequence[LayerCache],
        encoder: EncoderSide,
        select: Callable[[EncoderSide, torch.Tensor], EncoderSide],
        rows: int,
    ) -> None:
        self.caches = list(caches)
        self.encoder = encoder
        self.rows = rows
        self._select = select

    def reorder(self, origin: torch.Tensor) -> None:
        """Keep rows ``origin`` (rows',) int64 of every cache, and of the encoder side when rows' <
        rows (sentences left the batch; with the same rows the encoder side is equal within a beam)."""
        for cache in self.caches:
            cache.reorder(origin)
        if len(origin) < self.rows:
            self.encoder = self._select(self.encoder, origin)
        self.rows = len(origin)


def finished_beam_search(
    step_logits: Callable[[torch.Tensor, int], torch.Tensor],
    reorder: Callable[[torch.Tensor], None],
    rules: BeamRules,
    beam: int,
    row_limits: torch.Tensor,
) -> FinishedBeams:
    """AR beam search (beam 1 = greedy) with ``beam`` live hypotheses per sentence, as NMT toolkits
    run it (fairseq's ``SequenceGenerator`` with ``--lenpen 1``); the decoder is whatever
    ``step_logits`` runs.

    Each step ranks the ``2 * beam`` best extensions of a sentence's live hypotheses (summed
    log-probabilities). Those among the first ``beam`` that end with eos are finished, scored by
    summed log-probability / tokens (eos included); the best ``beam`` that do not end stay live,
    so finished hypotheses never take live slots. A sentence is done when it has ``beam`` finished
    hypotheses or reaches its length limit; its best finished hypothesis (the first on ties) wins.
    Done sentences leave the batch (at once with beam > 1, where the rows are reordered every
    step anyway; greedy: once a quarter of the rows are done), so one long sentence does not keep
    the whole batch stepping; the results are the same either way.

    ``step_logits(history, step)``: the (rows, V) logits of the next token of each row, given the
    tokens so far, history (rows, steps + 1) int64 (bos, then one token per step; rows = the
    active sentences x beam, a sentence's beams adjacent). ``reorder(origin)``: keep rows
    ``origin`` (rows',) int64 of the decoder's state: its key/value caches, and, when rows' <
    rows (sentences left the batch), its per-row encoder output too. Called after a step when beam
    > 1 or the batch shrinks. ``row_limits`` (rows,) int64, equal within a sentence: tokens a row
    may generate, eos included.
    """
    device = row_limits.device
    rows = row_limits.shape[0]
    batch = rows // beam
    steps = int(row_limits.max())
    active = torch.arange(batch, device=device)  # the sentence each active sentence is
    sentence_limits = row_limits.view(batch, beam)[:, 0]
    history = torch.full((rows, steps + 1), rules.pad_id, dtype=torch.long, device=device)
    history[:, 0] = rules.bos_id
    history_scores = torch.zeros(rows, steps + 1, device=device)  # summed log-probability after each token
    live_scores = torch.zeros(batch, beam, device=device)
    live_scores[:, 1:] = float("-inf")  # all beams start identical: keep one
    finished_scores = torch.full((batch, beam), float("-inf"), device=device)
    finished_tokens = torch.full((batch, beam, steps + 1), rules.pad_id, dtype=torch.long, device=device)
    finished_sums = torch.zeros(batch, beam, steps + 1, device=device)
    finished_lengths = torch.ones(batch, beam, dtype=torch.long, device=device)
    finished_count = torch.zeros(batch, dtype=torch.long, device=device)  # of each active sentence
    row_offsets = torch.arange(batch, device=device)[:, None] * beam
    rank = torch.arange(2 * beam, device=device)
    first_limit = int(row_limits.min())
    blocked: torch.Tensor | None = None  # (V,) float32: -inf at the blocked ids, else 0

    for step in range(steps):
        log_probs = F.log_softmax(step_logits(history, step).float(), dim=-1)
        if rules.nan_as_impossible:
            log_probs = log_probs.nan_to_num(nan=float("-inf"))
        if blocked is None:
            blocked = torch.zeros(log_probs.shape[-1], device=device)
            blocked[list(rules.blocked_ids)] = float("-inf")
        log_probs += blocked
        at_limit = row_limits == step + 1 if step + 1 >= first_limit else None
        if step < rules.min_length:  # no eos yet, unless forced
            too_early = ~at_limit if at_limit is not None else torch.ones_like(row_limits, dtype=torch.bool)
            log_probs[too_early, rules.eos_id] = float("-inf")
        if at_limit is not None:  # only eos at a row's length limit
            eos_log_probs = log_probs[at_limit, rules.eos_id]
            log_probs[at_limit] = float("-inf")
            log_probs[at_limit, rules.eos_id] = eos_log_probs

        count, vocab = len(active), log_probs.shape[-1]
        candidates = (live_scores.view(-1, 1) + log_probs).view(count, beam * vocab)
        cand_scores, flat = candidates.topk(2 * beam, dim=-1)  # (count, 2 * beam), best first
        cand_rows = flat // vocab + row_offsets
        cand_tokens = flat % vocab
        ends = (cand_tokens == rules.eos_id) & (cand_scores > float("-inf"))

        # finish the eos candidates among the first `beam` while a sentence has free slots
        finishing = ends[:, :beam] & (finished_count < beam)[:, None]
        slots = finished_count[:, None] + finishing.long().cumsum(1) - 1
        finishing &= slots < beam
        if bool(finishing.any()):
            local, k = finishing.nonzero(as_tuple=True)
            sentence, slot, source = active[local], slots[local, k], cand_rows[local, k]
            finished_tokens[sentence, slot] = history[source]
            finished_tokens[sentence, slot, step + 1] = rules.eos_id
            finished_sums[sentence, slot] = history_scores[source]
            finished_sums[sentence, slot, step + 1] = cand_scores[local, k]
            finished_lengths[sentence, slot] = step + 1
            finished_scores[sentence, slot] = cand_scores[local, k] / (step + 1)
            finished_count += finishing.sum(1)
        done = (finished_count >= beam) | (sentence_limits <= step + 1)
        done_count = int(done.sum())
        if done_count == count:
            break

        # the best `beam` candidates that do not end stay live
        pick = (ends.long() * 2 * beam + rank).argsort(dim=1)[:, :beam]
        live_scores = cand_scores.gather(1, pick).masked_fill(ends.gather(1, pick), float("-inf"))
        origin, next_tokens = cand_rows.gather(1, pick), cand_tokens.gather(1, pick)
        if done_count and (beam > 1 or 4 * done_count >= count):  # done sentences leave the batch
            keep = (~done).nonzero().squeeze(1)
            active, sentence_limits, finished_count = active[keep], sentence_limits[keep], finished_count[keep]
            origin, next_tokens, live_scores = origin[keep], next_tokens[keep], live_scores[keep]
            row_limits = row_limits.view(count, beam)[keep].reshape(-1)
            row_offsets = row_offsets[: len(keep)]
            first_limit = int(row_limits.min())
        origin = origin.view(-1)
        history = history.index_select(0, origin)
        history_scores = history_scores.index_select(0, origin)
        if beam > 1 or len(origin) < count * beam:
            reorder(origin)
        history[:, step + 1] = next_tokens.view(-1)
        history_scores[:, step + 1] = live_scores.view(-1)

    best_scores, best = finished_scores.max(1)
    sentences = torch.arange(batch, device=device)
    lengths = finished_lengths[sentences, best].tolist()
    tokens = finished_tokens[sentences, best].tolist()
    sums = finished_sums[sentences, best]
    positional = (sums[:, 1:] - sums[:, :-1]).tolist()
    return FinishedBeams(
        [row[1 : n + 1] for row, n in zip(tokens, lengths)],
        [row[:n] for row, n in zip(positional, lengths)],
        best_scores.tolist(),
    )


def beam_search(
    step_logits: Callable[[torch.Tensor, int], torch.Tensor],
    reorder: Callable[[torch.Tensor], None],
    model: JanusModel,
    beam: int,
    row_limits: torch.Tensor,
) -> Hypotheses:
    """The project's AR beam search on P_AR (``finished_beam_search``; beam 1 = greedy): the mask,
    pad and bos are never generated; eos is forced at ``row_limits`` (rows,) int64 (tokens each row
    may generate, eos included). Arguments as ``finished_beam_search``'s."""
    config = model.config
    rules = BeamRules(config.bos_id, config.eos_id, config.pad_id, (config.mask_id, config.pad_id, config.bos_id))
    found = finished_beam_search(step_logits, reorder, rules, beam, row_limits)
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    return Hypotheses([strip_special(row, config.eos_id, specials) for row in found.tokens], found.scores)
