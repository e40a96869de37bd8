"""The reference decoders in plain PyTorch: the ground truth of every fast path.

* ``mask_predict``: NAR mask-predict with a length beam; ``num_iterations`` decoder passes exactly.
* ``ar_search``: AR greedy (beam 1) and beam search on P_AR, with or without a key/value cache.
"""

from __future__ import annotations

import torch

from janus_fast.decoding.beam import (
    BeamChoice,
    BeamRows,
    finished_beam_search,
    janus_hypotheses,
    janus_rules,
    max_ar_lengths,
)
from janus_fast.decoding.candidates import best_length_candidates, start_mask_predict
from janus_fast.decoding.hypotheses import Hypotheses
from janus_fast.decoding.options import JANUS_MAX_LEN, PLAIN_RANKING, CandidateRanking
from janus_fast.model import EncoderOutput, JanusModel
from janus_fast.ops import mask_predict_step


@torch.inference_mode()
def mask_predict(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    num_iterations: int = 10,
    length_beam: int = 3,
    ranking: CandidateRanking = PLAIN_RANKING,
) -> Hypotheses:
    """NAR mask-predict (Ghazvininejad et al. 2019) exactly as ``docs/method.md`` says.

    Each length candidate is a row; iteration t fills every masked position with its argmax token
    and log-probability, then re-masks the n = floor((L-2)(T-1-t)/T) lowest-scoring real tokens
    (``janus_fast.ops.mask_predict_step``). T iterations are T decoder passes; the last re-masks
    nothing. Per sentence, the candidate ``ranking`` puts first wins: the highest mean
    log-probability, or with ``ar_rescore`` the highest mean AR log-probability
    (``JanusModel.ar_scores``), plus the length bonus per target token (``best_length_candidates``).

    src_tokens (B, S) int64, src_lengths (B,) int64 (>= 1).
    """
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    if length_beam < 1:
        raise ValueError(f"length_beam must be >= 1, got {length_beam}")
    parts = []
    start = start_mask_predict(model, model.encode(src_tokens, src_lengths), length_beam)
    for state in start.split():
        encoder_out = state.encoder_out  # repeated per row
        for iteration in range(num_iterations):
            logits = model.nar_logits(state.tokens, state.lengths, encoder_out)
            logits = logits.float() if logits.dtype == torch.float64 else logits  # the op reads 32 bits or fewer
            mask_predict_step(
                logits, state.tokens, state.scores, state.lengths, iteration, num_iterations, model.config.mask_id
            )
        ar_scores = model.ar_scores(state.tokens, state.lengths, encoder_out) if ranking.ar_rescore else None
        rows = (state.tokens, state.scores, state.lengths, state.length_beam)
        parts.append(best_length_candidates(model, *rows, ar_scores, ranking))
    return Hypotheses.concatenate(parts)


@torch.inference_mode()
def ar_search(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    beam: int = 1,
    max_len: tuple[float, int] = JANUS_MAX_LEN,
    use_cache: bool = True,
) -> Hypotheses:
    """AR beam search on P_AR (beam 1 = greedy; ``beam.finished_beam_search``) over the PyTorch model's
    steps with a key/value cache; ``use_cache=False`` recomputes the whole prefix at every step
    (the check of the cache). src_tokens (B, S) int64, src_lengths (B,) int64.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    batch = src_tokens.shape[0]
    row_limits = max_ar_lengths(src_lengths, model, max_len).repeat_interleave(beam)
    steps = int(row_limits.max())
    rows = torch.arange(batch, device=src_tokens.device).repeat_interleave(beam)
    encoder_out = model.encode(src_tokens, src_lengths).select(rows)
    caches = model.new_caches(batch * beam, steps, encoder_out.states) if use_cache else None
    state = BeamRows(caches or [], encoder_out, EncoderOutput.select, batch * beam)

    def step_logits(history: torch.Tensor, step: int) -> torch.Tensor:
        if caches is not None:
            return model.ar_step(history[:, step], step, state.encoder, caches)
        prefix = torch.cat([history[:, : step + 1], history[:, :1]], 1)  # a dummy last token
        lengths = torch.full((len(history),), step + 2, dtype=torch.long, device=history.device)
        return model.output_logits(model.ar_hidden(prefix, lengths, state.encoder)[:, step])

    def step_candidates(history: torch.Tensor, step: int, choice: BeamChoice) -> tuple[torch.Tensor, torch.Tensor]:
        return choice.choose(step_logits(history, step))

    return janus_hypotheses(
        model, finished_beam_search(step_candidates, state.reorder, janus_rules(model), beam, row_limits)
    )
