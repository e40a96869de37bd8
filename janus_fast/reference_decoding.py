"""The reference decoders in plain PyTorch: the ground truth of every fast path.

* ``mask_predict``: NAR mask-predict with a length beam; ``num_iterations`` decoder passes exactly.
* ``ar_search``: AR greedy (beam 1) and beam search on P_AR, with or without a key/value cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from janus_fast.model import JanusModel
from janus_fast.ops import mask_predict_step
from janus_fast.search import Hypotheses, best_length_candidates, max_ar_lengths, start_mask_predict, strip_special


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
