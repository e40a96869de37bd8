"""The engine's AR search over the decoder passes (``janus_fast.decoding.passes``).

* ``greedy``: the beam-1 case of ``beam.finished_beam_search`` without the beam bookkeeping, with
  its tokens and scores. With the native passes the whole search is one native call
  (``decoder_ar_greedy_search``: no Python per step, finished sentences leave the pass at once);
  otherwise ``greedy_steps`` runs it a step at a time: a preallocated key/value cache and greedy
  search's choice inside each step, finished sentences leaving the batch once a quarter of the rows
  are finished, so one long sentence does not keep the whole batch stepping.
* ``beam_search``: ``beam.finished_beam_search`` (the one beam search loop, which the reference
  decoder runs too) over the passes' steps, under any ``BeamRules`` (this project's, or
  fairseq-generate's: ``janus_fast.decoding.fairseq``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from janus_fast.decoding.beam import BeamChoice, BeamRows, BeamRules, FinishedBeams, finished_beam_search, janus_rules
from janus_fast.decoding.hypotheses import Hypotheses, greedy_hypotheses, output_tokens
from janus_fast.decoding.passes import DecoderPasses, GreedyRule
from janus_fast.model import JanusModel


def greedy(
    model: JanusModel,
    passes: DecoderPasses,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    limits: torch.Tensor,
) -> Hypotheses:
    """AR greedy decoding under ``janus_rules``: each sentence at most ``limits`` (B,) int64 tokens,
    eos included (eos forced at the limit). Scores: summed log-probability / tokens (eos included).
    The whole search in one call where the passes have it (``DecoderPasses.ar_greedy_search``: the
    native passes), else one call per step (``greedy_steps``): the same tokens and scores.

    src_tokens (B, S) int64, src_lengths (B,) int64.
    """
    config = model.config
    passes.bind(passes.encode(src_tokens, src_lengths))
    banned = torch.tensor(janus_rules(model).blocked_ids, device=src_tokens.device)
    found = passes.ar_greedy_search(limits, banned)
    tokens, total_log_prob, out_lengths = found if found is not None else greedy_steps(model, passes, limits, banned)
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    return greedy_hypotheses(output_tokens(tokens.tolist(), config.eos_id, specials), total_log_prob, out_lengths)


def greedy_steps(
    model: JanusModel, passes: DecoderPasses, limits: torch.Tensor, banned: torch.Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy search over the bound rows, one ``ar_greedy`` step at a time: ``banned`` (K,) int64
    never chosen, eos forced at each row's ``limits`` (B,) int64. Returns tokens (B, max(limits))
    int64 after bos (pad after eos), summed log-probabilities (B,) float32 and lengths (B,) int64."""
    config = model.config
    device = limits.device
    batch = len(limits)
    steps = int(limits.max())
    caches = passes.new_caches(steps)
    # the rows still decoding (one per sentence, the sentence ids in `rows`), and each sentence's result
    history = torch.full((batch, steps + 1), config.pad_id, dtype=torch.long, device=device)
    history[:, 0] = config.bos_id
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    total_log_prob = torch.zeros(batch, dtype=torch.float32, device=device)
    out_lengths = torch.zeros(batch, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    results = (history.clone(), total_log_prob.clone(), out_lengths.clone())

    def store(index: torch.Tensor) -> None:
        """Copy the rows ``index`` of the decoding state into their sentences' results."""
        for result, state in zip(results, (history, total_log_prob, out_lengths)):
            result[rows[index]] = state[index]

    for step in range(steps):
        at_limit = limits == step + 1
        rule = GreedyRule(banned, at_limit, config.eos_id)  # eos at each sentence's limit
        next_tokens, chosen = passes.ar_greedy(history[:, step], step, caches, rule)
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
            passes.keep(keep, caches)
    store(torch.arange(len(rows), device=device))
    history, total_log_prob, out_lengths = results
    return history[:, 1:], total_log_prob, out_lengths


def _keep_rows(passes: DecoderPasses, index: torch.Tensor) -> DecoderPasses:
    passes.keep(index)
    return passes


def beam_search(
    passes: DecoderPasses, src_tokens: Tensor, src_lengths: Tensor, rules: BeamRules, beam: int, row_limits: Tensor
) -> FinishedBeams:
    """``finished_beam_search`` over the passes' cached AR steps: ``beam`` rows per sentence,
    ``row_limits`` (B * beam,) int64 tokens each row may generate (eos included).

    src_tokens (B, S) int64, src_lengths (B,) int64.
    """
    batch = len(src_lengths)
    rows = torch.arange(batch, device=src_tokens.device).repeat_interleave(beam)
    passes.bind(passes.encode(src_tokens, src_lengths), rows)
    caches = passes.new_caches(int(row_limits.max()))
    state = BeamRows(caches, passes, _keep_rows, batch * beam, passes.reorder_caches)

    def step_candidates(history: torch.Tensor, step: int, choice: BeamChoice) -> tuple[Tensor, Tensor]:
        return passes.ar_candidates(history[:, step], step, caches, choice)

    return finished_beam_search(step_candidates, state.reorder, rules, beam, row_limits)
