"""The fast decode engine: the reference decoders' outputs with less work.

* NAR: the encoder and its cross-attention keys/values run once; each mask-predict iteration runs
  the decoder over the real positions only, packed without padding (``janus_fast.decoding.packed``), and
  projects to the vocabulary ONLY the positions that are masked in that iteration (on average
  (T + 1) / 2T of them). The native CPU pass also does the fill (argmax and its log-probability,
  no (M, V) logits kept) and ``mask_predict_step`` then only re-masks; the PyTorch pass writes the
  masked logits into a preallocated (rows, T, V) buffer that ``mask_predict_step`` reads at
  exactly those positions.
* AR greedy: a preallocated key/value cache, argmax per step (in the native step: no (B, V)
  logits), no beam bookkeeping, stop as soon as every sentence has its eos. AR beam search is the
  reference's loop (``search.beam_search``) over the native steps.
* On the CPU each decoder pass (a mask-predict iteration, an AR step) is ONE native call
  (``janus_fast.native.decoder``) when the extension is built and the model is a plain JanusModel;
  elsewhere the same passes run as PyTorch ops. ``decoder_weights`` ("fp32", "bf16", "int8") sets
  how the native passes store their weights; fp32 gives the reference's tokens.

Outputs equal the reference decoders' (``janus_fast.decoding.reference``), token for token; the tests
check it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from janus_fast.decoding.packed import PackedRows, packed_decode
from janus_fast.decoding.reference import ar_search as reference_ar_search
from janus_fast.decoding.search import (
    JANUS_MAX_LEN,
    BeamRows,
    Hypotheses,
    ar_candidate_scores,
    beam_search,
    best_length_candidates,
    max_ar_lengths,
    start_mask_predict,
    strip_special,
)
from janus_fast.decoding.speculative import SpeculativeOptions, SpeculativeStats, speculative_greedy
from janus_fast.model import JanusModel
from janus_fast.native.decoder import NativeDecoder, unsupported_reason
from janus_fast.ops import mask_predict_step


def native_decoder(model: JanusModel, decoder_weights: str) -> NativeDecoder | None:
    """The model's native decoder when it can run one, else None (fp32 only: PyTorch passes)."""
    reason = unsupported_reason(model)
    if reason is None:
        return NativeDecoder.for_model(model, decoder_weights)
    if decoder_weights != "fp32":
        raise ValueError(f"decoder_weights={decoder_weights!r} needs the native decoder, but {reason}")
    return None


@torch.inference_mode()
def mask_predict(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    num_iterations: int = 10,
    length_beam: int = 3,
    decoder_weights: str = "fp32",
    ar_rescore: bool = False,
    length_bonus: float = 0.0,
) -> Hypotheses:
    """Mask-predict as ``janus_fast.decoding.reference.mask_predict``, projecting only masked positions.
    ``ar_rescore``: the AR scores of the finished candidates come from one teacher-forced pass of
    both streams (native where the passes are, else ``search.ar_candidate_scores``).
    ``length_bonus``: added per target token to each candidate's ranking (``best_length_candidates``).

    src_tokens (B, S) int64, src_lengths (B,) int64.
    """
    config = model.config
    native = native_decoder(model, decoder_weights)
    parts = []
    encoder_out = native.encode(src_tokens, src_lengths) if native is not None else None
    start = start_mask_predict(model, src_tokens, src_lengths, num_iterations, length_beam, encoder_out)
    for state in start.split():
        tokens, scores, lengths = state.tokens, state.scores, state.lengths
        rows = PackedRows(lengths, tokens.shape[1])  # the candidates' lengths stay fixed: pack once
        if native is not None:
            memory = NativeDecoder.memory(state.encoder_out)
            row_offsets = F.pad(lengths.cumsum(0), (1, 0))
            # after the native fill no position holds the mask, so mask_predict_step reads no
            # logits and only re-masks: it gets a (rows, T, mask_id + 1) stand-in
            logits = torch.zeros(*tokens.shape, config.mask_id + 1, device=tokens.device)
        else:
            # only the masked positions of each iteration are written, and only those are read by the op
            dtype = state.encoder_out.states.dtype
            logits = torch.empty(*tokens.shape, config.vocab_size, dtype=dtype, device=tokens.device)
        for iteration in range(num_iterations):
            packed_tokens = tokens.view(-1).index_select(0, rows.index)
            masked = (packed_tokens == config.mask_id).nonzero().squeeze(1)
            if native is not None:
                filled, filled_scores = native.nar_fill(
                    packed_tokens, rows.positions, row_offsets, memory, masked, config.mask_id
                )
                tokens.view(-1).index_copy_(0, rows.index[masked], filled)
                scores.view(-1).index_copy_(0, rows.index[masked], filled_scores)
            else:  # vocabulary projection of the masked positions only
                hidden = packed_decode(model, tokens, lengths, state.encoder_out, rows)  # (real positions, d)
                masked_logits = model.output_logits(hidden[masked])
                logits.view(-1, config.vocab_size)[rows.index[masked]] = masked_logits.to(logits.dtype)
            mask_predict_step(logits, tokens, scores, lengths, iteration, num_iterations, config.mask_id)
        ranking = None
        if ar_rescore:
            ranking = (
                native_ar_candidate_scores(native, tokens, lengths, memory)
                if native is not None
                else ar_candidate_scores(model, tokens, lengths, state.encoder_out)
            )
        parts.append(best_length_candidates(model, tokens, scores, lengths, state.length_beam, ranking, length_bonus))
    return Hypotheses.concatenate(parts)


def native_ar_candidate_scores(
    native: NativeDecoder,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    memory: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``search.ar_candidate_scores`` in one native pass over the packed candidates: tokens (N, T)
    int64 ``<bos> y <eos>`` right-padded, lengths (N,) int64 >= 2, memory per row -> (N,) float32."""
    contexts = PackedRows(lengths - 1, tokens.shape[1])  # each row's content: <bos> y (eos is only predicted)
    flat = tokens.reshape(-1)
    row_offsets = F.pad((lengths - 1).cumsum(0), (1, 0))
    log_probs = native.ar_scores(
        flat.index_select(0, contexts.index),
        contexts.positions,
        row_offsets,
        memory,
        flat.index_select(0, contexts.index + 1),
    )
    rows = torch.arange(len(lengths), device=lengths.device).repeat_interleave(lengths - 1)
    return torch.zeros(len(lengths), device=lengths.device).index_add_(0, rows, log_probs) / (lengths - 1)


@torch.inference_mode()
def greedy(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    max_len_a: float = JANUS_MAX_LEN[0],
    max_len_b: int = JANUS_MAX_LEN[1],
    decoder_weights: str = "fp32",
) -> Hypotheses:
    """AR greedy decoding with a preallocated KV cache, as ``ar_search(beam=1)``. Finished
    sentences leave the batch once a quarter of the rows are finished (``finished_beam_search``'s
    rule), so one long sentence does not keep the whole batch stepping.

    src_tokens (B, S) int64, src_lengths (B,) int64.
    """
    config = model.config
    device = src_tokens.device
    native = native_decoder(model, decoder_weights)
    batch = src_tokens.shape[0]
    limits = max_ar_lengths(src_lengths, model, max_len_a, max_len_b)
    steps = int(limits.max())
    encoder_out = (
        native.encode(src_tokens, src_lengths) if native is not None else model.encode(src_tokens, src_lengths)
    )
    caches = model.new_caches(batch, steps, encoder_out.states)
    memory = NativeDecoder.memory(encoder_out) if native else None
    banned = torch.tensor([config.mask_id, config.pad_id, config.bos_id], device=device)
    # the rows still decoding (one per sentence, the sentence ids in `rows`), and each sentence's result
    history = torch.full((batch, steps + 1), config.pad_id, dtype=torch.long, device=device)
    history[:, 0] = config.bos_id
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    total_log_prob = torch.zeros(batch, device=device)
    out_lengths = torch.zeros(batch, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    results = (history.clone(), total_log_prob.clone(), out_lengths.clone())

    def store(index: torch.Tensor) -> None:
        """Copy the rows ``index`` of the decoding state into their sentences' results."""
        for result, state in zip(results, (history, total_log_prob, out_lengths)):
            result[rows[index]] = state[index]

    for step in range(steps):
        at_limit = limits == step + 1  # each sentence's length limit, as the reference: eos
        if native is not None:  # the choice inside the native step: no (B, V) logits
            next_tokens, chosen = native.ar_greedy_step(
                history[:, step], step, memory, caches, banned, at_limit, config.eos_id
            )
        else:
            logits = model.ar_step(history[:, step], step, encoder_out, caches)
            log_probs = F.log_softmax(logits.float(), dim=-1)
            log_probs[:, banned] = float("-inf")
            next_tokens = log_probs.argmax(-1)
            next_tokens[at_limit] = config.eos_id
            chosen = log_probs.gather(1, next_tokens[:, None]).squeeze(1)
        total_log_prob += torch.where(finished, 0.0, chosen)
        out_lengths += (~finished).long()
        history[:, step + 1] = torch.where(finished, config.pad_id, next_tokens)
        finished |= next_tokens == config.eos_id
        done = int(finished.sum())
        if done == len(rows):
            break
        if 4 * done >= len(rows):  # finished sentences leave the batch
            store(finished.nonzero().squeeze(1))
            keep = (~finished).nonzero().squeeze(1)
            history, total_log_prob, out_lengths = history[keep], total_log_prob[keep], out_lengths[keep]
            rows, limits, finished = rows[keep], limits[keep], finished[keep]
            for cache in caches:
                cache.reorder(keep)
            if native is not None:
                memory = NativeDecoder.select_memory(memory, keep)
            else:
                encoder_out = encoder_out.select(keep)
    store(torch.arange(len(rows), device=device))
    history, total_log_prob, out_lengths = results
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    tokens = [strip_special(row[1:], config.eos_id, specials) for row in history.tolist()]
    return Hypotheses(tokens, (total_log_prob / out_lengths.clamp(min=1)).tolist())


@torch.inference_mode()
def ar_search(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    beam: int = 1,
    max_len_a: float = JANUS_MAX_LEN[0],
    max_len_b: int = JANUS_MAX_LEN[1],
    decoder_weights: str = "fp32",
) -> Hypotheses:
    """Greedy through ``greedy``; beam search through ``search.beam_search`` (the reference's loop)
    over the native steps where they run (key/value caches reordered per step), else the
    reference itself. src_tokens (B, S) int64, src_lengths (B,) int64."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if beam == 1:
        return greedy(model, src_tokens, src_lengths, max_len_a, max_len_b, decoder_weights)
    native = native_decoder(model, decoder_weights)
    if native is None:
        return reference_ar_search(model, src_tokens, src_lengths, beam, max_len_a, max_len_b)
    batch = src_tokens.shape[0]
    row_limits = max_ar_lengths(src_lengths, model, max_len_a, max_len_b).repeat_interleave(beam)
    rows = torch.arange(batch, device=src_tokens.device).repeat_interleave(beam)
    encoder_out = native.encode(src_tokens, src_lengths).select(rows)
    caches = model.new_caches(batch * beam, int(row_limits.max()), encoder_out.states)
    state = BeamRows(caches, NativeDecoder.memory(encoder_out), NativeDecoder.select_memory, batch * beam)
    return beam_search(
        lambda history, step: native.ar_step(history[:, step], step, state.encoder, caches),
        state.reorder,
        model,
        beam,
        row_limits,
    )


def speculative(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    max_len_a: float = JANUS_MAX_LEN[0],
    max_len_b: int = JANUS_MAX_LEN[1],
    decoder_weights: str = "fp32",
    options: SpeculativeOptions | None = None,
    stats: SpeculativeStats | None = None,
) -> Hypotheses:
    """Speculative decoding (``janus_fast.decoding.speculative``) on the native passes where they run, else
    the PyTorch ones: with exact verification the tokens and scores of ``greedy`` at the same
    ``decoder_weights``. ``stats``, when given, counts rounds and accepted tokens.

    src_tokens (B, S) int64, src_lengths (B,) int64.
    """
    native = native_decoder(model, decoder_weights)
    options = options if options is not None else SpeculativeOptions()
    return speculative_greedy(model, src_tokens, src_lengths, max_len_a, max_len_b, native, options, stats)
