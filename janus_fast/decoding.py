"""Reference decoding in plain PyTorch: the ground truth of every fast path.

* ``mask_predict``: NAR mask-predict with a length beam; ``num_iterations`` decoder passes exactly.
* ``ar_search``: AR greedy (beam 1) and beam search on P_AR, with or without a key/value cache.
* ``generate``: one entry point on tensors for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from janus_fast.arguments import check_int
from janus_fast.attention import use_triton
from janus_fast.model import EncoderOutput, JanusModel
from janus_fast.ops import mask_predict_step

MIN_NAR_LENGTH = 3  # bos + one real token + eos: a non-empty source never gets an empty translation
MAX_BEAM = 128  # AR beam sizes above this can only be a mistake (rows = sentences x beam)
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
    """Top-``length_beam`` target lengths (counting bos/eos) of the length head.

    Returns lengths (B, l) int64, sorted by descending log-probability, and their log-probs (B, l).
    On CUDA tensors the fused Triton kernel (``janus_fast.kernels.length_candidates``) does it.
    """
    states = encoder_out.states
    if states.is_cuda and use_triton(states):
        from janus_fast.kernels import length_candidates as fused_length_candidates

        config = model.config
        beam = max_length_beam(model, length_beam)
        lengths, log_probs = fused_length_candidates(
            states,
            encoder_out.lengths,
            model.length_embed.weight,
            beam,
            offset=config.length_offset,
            min_length=MIN_NAR_LENGTH,
        )
        return lengths.clamp(max=config.max_target_positions), log_probs
    log_probs = F.log_softmax(model.length_logits(encoder_out).float(), dim=-1)
    classes = torch.arange(log_probs.shape[-1], device=log_probs.device)
    lengths_of_class = model.lengths_from_classes(classes[None].expand_as(log_probs), encoder_out.lengths)
    log_probs = log_probs.masked_fill(lengths_of_class < MIN_NAR_LENGTH, float("-inf"))
    top_log_probs, top_classes = log_probs.topk(max_length_beam(model, length_beam), dim=-1)
    lengths = lengths_of_class.gather(1, top_classes)
    # a sentence with fewer possible lengths than the beam (length_offset) repeats its best one in
    # place of the impossible (-inf) ones: a repeat ties with the best row, and ties go to the first
    impossible = top_log_probs == float("-inf")
    return torch.where(impossible, lengths[:, :1], lengths), top_log_probs


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


@torch.inference_mode()
def mask_predict(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    num_iterations: int = 10,
    length_beam: int = 3,
) -> Hypotheses:
    """NAR mask-predict (Ghazvininejad et al. 2019) exactly as ``docs/method.md`` says.

    Each length candidate is a row; iteration t fills every masked position with its argmax token
    and log-probability, then re-masks the n = floor((L-2)(T-1-t)/T) lowest-scoring real tokens
    (``janus_fast.ops.mask_predict_step``). T iterations are T decoder passes; the last re-masks
    nothing. Per sentence, the candidate with the highest mean log-probability wins.

    src_tokens (B, S) int64, src_lengths (B,) int64 (>= 1).
    """
    parts = []
    for state in start_mask_predict(model, src_tokens, src_lengths, num_iterations, length_beam).split():
        for iteration in range(num_iterations):
            logits = model.nar_logits(state.tokens, state.lengths, state.encoder_out)
            mask_predict_step(
                logits, state.tokens, state.scores, state.lengths, iteration, num_iterations, model.config.mask_id
            )
        parts.append(best_length_candidates(model, state.tokens, state.scores, state.lengths, state.length_beam))
    return Hypotheses.concatenate(parts)


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
    model: JanusModel, src_tokens: torch.Tensor, src_lengths: torch.Tensor, num_iterations: int, length_beam: int
) -> MaskPredictState:
    """Encode once, pick the length candidates and lay out ``<bos> <mask>* <eos>`` rows."""
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    if length_beam < 1:
        raise ValueError(f"length_beam must be >= 1, got {length_beam}")
    config = model.config
    encoder_out = model.encode(src_tokens, src_lengths)
    candidates, _ = length_candidates(model, encoder_out, length_beam)
    batch, beam = candidates.shape
    lengths = candidates.reshape(-1)
    rows_encoder = encoder_out.select(torch.arange(batch, device=lengths.device).repeat_interleave(beam))
    tokens = initial_nar_tokens(lengths, (config.pad_id, config.bos_id, config.eos_id, config.mask_id))
    scores = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    return MaskPredictState(tokens, scores, lengths, rows_encoder, beam, config.vocab_size)


def best_length_candidates(
    model: JanusModel, tokens: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor, beam: int
) -> Hypotheses:
    """Per sentence, the length candidate (row) with the highest mean token log-probability.

    tokens (B*l, T) int64, scores (B*l, T) float32, lengths (B*l,) int64; rows of a sentence adjacent.
    """
    config = model.config
    positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
    real = (positions >= 1) & (positions < lengths[:, None] - 1)
    mean_scores = (scores * real).sum(1) / real.sum(1).clamp(min=1)
    best = mean_scores.view(-1, beam).argmax(1)
    chosen = torch.arange(len(best), device=best.device) * beam + best
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    out_tokens = [strip_special(row, config.eos_id, specials) for row in tokens[chosen].tolist()]
    return Hypotheses(out_tokens, mean_scores[chosen].tolist())


def max_ar_lengths(src_lengths: torch.Tensor, model: JanusModel, max_len_a: float, max_len_b: int) -> torch.Tensor:
    """Tokens each sentence's AR search may generate, eos included: (B,) int64, >= 1.

    Per sentence (``max_len_a * src_len + max_len_b``), so a translation never depends on the
    other sentences of its batch.
    """
    limits = (max_len_a * src_lengths.double() + max_len_b).long()
    return limits.clamp(1, model.config.max_target_positions - 1)


@torch.inference_mode()
def ar_search(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    beam: int = 1,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    use_cache: bool = True,
) -> Hypotheses:
    """AR beam search on P_AR (beam 1 = greedy), scores normalised by length at the end.

    Finished hypotheses stay in the beam with their score frozen (they extend with pad at zero
    cost). ``use_cache=False`` recomputes the whole prefix at every step (the check of the cache).
    src_tokens (B, S) int64, src_lengths (B,) int64.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    config = model.config
    device = src_tokens.device
    batch = src_tokens.shape[0]
    row_limits = max_ar_lengths(src_lengths, model, max_len_a, max_len_b).repeat_interleave(beam)
    steps = int(row_limits.max())
    encoder_out = model.encode(src_tokens, src_lengths)
    rows = torch.arange(batch, device=device).repeat_interleave(beam)
    encoder_out = encoder_out.select(rows)
    caches = model.new_caches(batch * beam, steps, encoder_out.states) if use_cache else None

    history = torch.full((batch * beam, steps + 1), config.pad_id, dtype=torch.long, device=device)
    history[:, 0] = config.bos_id
    beam_scores = torch.zeros(batch, beam, device=device)
    beam_scores[:, 1:] = float("-inf")  # all beams start identical: keep one
    finished = torch.zeros(batch * beam, dtype=torch.bool, device=device)
    out_lengths = torch.zeros(batch * beam, dtype=torch.long, device=device)

    for step in range(steps):
        if caches is not None:
            logits = model.ar_step(history[:, step], step, encoder_out, caches)
        else:
            prefix = torch.cat([history[:, : step + 1], history[:, :1]], 1)  # a dummy last token
            lengths = torch.full((batch * beam,), step + 2, dtype=torch.long, device=device)
            logits = model.output_logits(model.ar_hidden(prefix, lengths, encoder_out)[:, step])
        log_probs = F.log_softmax(logits.float(), dim=-1)
        log_probs[:, config.mask_id] = float("-inf")
        log_probs[:, config.pad_id] = float("-inf")
        log_probs[:, config.bos_id] = float("-inf")
        at_limit = row_limits == step + 1  # force eos at each sentence's length limit
        eos_log_probs = log_probs[at_limit, config.eos_id]
        log_probs[at_limit] = float("-inf")
        log_probs[at_limit, config.eos_id] = eos_log_probs
        # finished rows extend with pad at no cost
        log_probs[finished] = float("-inf")
        log_probs[finished, config.pad_id] = 0.0

        vocab = log_probs.shape[-1]
        candidates = (beam_scores.view(-1, 1) + log_probs).view(batch, beam * vocab)
        beam_scores, flat = candidates.topk(beam, dim=-1)
        origin = (flat // vocab + torch.arange(batch, device=device)[:, None] * beam).view(-1)
        next_tokens = (flat % vocab).view(-1)

        history = history.index_select(0, origin)
        finished = finished.index_select(0, origin)
        out_lengths = out_lengths.index_select(0, origin)
        if caches is not None and beam > 1:
            for cache in caches:
                cache.reorder(origin)
        history[:, step + 1] = next_tokens
        out_lengths = out_lengths + (~finished).long()
        finished = finished | (next_tokens == config.eos_id)
        if bool(finished.all()):
            break

    normalised = beam_scores.view(-1) / out_lengths.clamp(min=1)
    best = normalised.view(batch, beam).argmax(1) + torch.arange(batch, device=device) * beam
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    out_tokens = [strip_special(row[1:], config.eos_id, specials) for row in history[best].tolist()]
    return Hypotheses(out_tokens, normalised[best].tolist())


def check_decoding_options(model: JanusModel, mode: str, iterations: int, length_beam: int, beam: int) -> None:
    """TypeError / ValueError for options no decoding can use: iterations in [1, max target
    positions], length_beam in [1, length classes] (capped later by the possible lengths), beam in
    [1, MAX_BEAM]."""
    if mode not in ("nar", "ar"):
        raise ValueError(f"unknown mode {mode!r}; expected 'nar' or 'ar'")
    config = model.config
    check_int("iterations", iterations, 1, config.max_target_positions)
    check_int("length_beam", length_beam, 1, config.num_length_classes)
    check_int("beam", beam, 1, MAX_BEAM)


def generate(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    mode: str = "nar",
    iterations: int = 10,
    length_beam: int = 3,
    beam: int = 1,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    decoder: str = "engine",
    return_scores: bool = False,
) -> list[list[int]] | Hypotheses:
    """Translate a padded batch of source ids; returns target ids per sentence (no bos/eos/pad),
    or with ``return_scores`` the ``Hypotheses`` (ids and each sentence's score: mean token
    log-probability for NAR, length-normalised log-probability for AR).

    src_tokens (B, S) int64 right-padded, src_lengths (B,) int64 >= 1; mode "nar" (mask-predict,
    ``iterations`` x ``length_beam``) or "ar" (``beam`` 1 = greedy). decoder "engine" (the fast
    path, ``janus_fast.engine``) or "reference" (this module); both give the same outputs.
    """
    _check_source(model, src_tokens, src_lengths)
    check_decoding_options(model, mode, iterations, length_beam, beam)
    if decoder not in ("engine", "reference"):
        raise ValueError(f"unknown decoder {decoder!r}; expected 'engine' or 'reference'")
    if len(src_lengths) == 0:
        hypotheses = Hypotheses([], [])
    elif decoder == "engine":
        from janus_fast import engine

        if mode == "nar":
            hypotheses = engine.mask_predict(model, src_tokens, src_lengths, iterations, length_beam)
        else:
            hypotheses = engine.ar_search(model, src_tokens, src_lengths, beam, max_len_a, max_len_b)
    elif mode == "nar":
        hypotheses = mask_predict(model, src_tokens, src_lengths, iterations, length_beam)
    else:
        hypotheses = ar_search(model, src_tokens, src_lengths, beam, max_len_a, max_len_b)
    return hypotheses if return_scores else hypotheses.tokens


def _check_source(model: JanusModel, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> None:
    if src_tokens.dim() != 2 or src_lengths.dim() != 1 or src_tokens.shape[0] != src_lengths.shape[0]:
        raise ValueError(
            f"src_tokens must be (B, S) and src_lengths (B,); got {tuple(src_tokens.shape)} "
            f"and {tuple(src_lengths.shape)}"
        )
    if src_tokens.dtype != torch.long or src_lengths.dtype != torch.long:
        raise TypeError("src_tokens and src_lengths must be int64 tensors")
    if len(src_lengths) == 0:
        return
    if int(src_lengths.min()) < 1 or int(src_lengths.max()) > src_tokens.shape[1]:
        raise ValueError(f"src_lengths must be in [1, {src_tokens.shape[1]}]")
    if src_tokens.shape[1] > model.config.max_source_positions:
        raise ValueError(
            f"source length {src_tokens.shape[1]} exceeds max_source_positions {model.config.max_source_positions}"
        )
    if int(src_tokens.min()) < 0 or int(src_tokens.max()) >= model.config.vocab_size:
        raise ValueError(f"token ids must be in [0, {model.config.vocab_size})")
