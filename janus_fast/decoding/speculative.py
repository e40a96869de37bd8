"""Speculative decoding with one JANUS model: the NAR side drafts, the AR side verifies.

Each round, per sentence with accepted tokens ``y_0 = <bos> .. y_n``:

1. draft: one NAR (mask-predict) fill of ``<bos> y_1 .. y_n <mask> .. <mask> <eos>`` (the accepted
   prefix observed, the rest masked; ``draft_iterations`` mask-predict iterations over the masked
   part). The draft length comes from the length predictor in the first round and is extended to
   cover at least ``min_draft`` new positions in later ones;
2. verify: one AR pass of both decoder streams over ``y_n d_1 .. d_k`` (the first ``max_verify``
   drafted tokens), appended to the key/value caches of the prefix: AR greedy's choice
   ``a_1 .. a_{k+1}`` after each of them, ``a_i`` given ``y_0 .. y_n d_1 .. d_{i-1}``;
3. accept (``janus_fast.ops.speculative_accept``): the drafted tokens up to the first that differs
   from AR's choice, then AR's choice there (every round gains at least one token), cut after eos.
   The keys/values of rejected drafts are dropped by not counting them in the cache length.

The output is AR greedy's (mode "ar", beam 1), token for token, by construction: every kept token
is AR's argmax given the kept tokens before it, computed by the same pass arithmetic as a single
AR step (the native products are row-independent). ``relaxed_top_k`` / ``relaxed_margin`` loosen the
verification (a drafted token is also kept when it is among AR's top k and within the margin of
AR's best log-probability; SpecDec++-style): faster, no longer AR greedy's output.

The passes (``janus_fast.decoding.passes``) are native on the CPU (``NativeDecoder.nar_fill`` /
``ar_extend``) and PyTorch elsewhere (the verification recomputing the prefix through
``model.ar_hidden``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from janus_fast.decoding.beam import janus_rules
from janus_fast.decoding.candidates import length_candidates
from janus_fast.decoding.hypotheses import Hypotheses, greedy_hypotheses, output_tokens
from janus_fast.decoding.options import SpeculativeOptions
from janus_fast.decoding.packed import PackedRows
from janus_fast.decoding.passes import DecoderPasses, GreedyRule, NewTokens
from janus_fast.model import JanusModel
from janus_fast.ops import speculative_accept


@dataclass
class SpeculativeStats:
    """What a speculative decoding call did: sentences, rounds (one draft + one verify pass per active
    sentence each) summed over sentences, tokens generated (eos included) and drafted tokens kept."""

    sentences: int = 0
    rounds: int = 0
    tokens: int = 0
    accepted_drafted: int = 0

    @property
    def tokens_per_round(self) -> float:
        """Mean tokens gained per verify pass."""
        return self.tokens / max(self.rounds, 1)

    @property
    def rounds_per_sentence(self) -> float:
        return self.rounds / max(self.sentences, 1)


def speculative_greedy(
    model: JanusModel,
    passes: DecoderPasses,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    limits: torch.Tensor,
    options: SpeculativeOptions | None = None,
    stats: SpeculativeStats | None = None,
) -> Hypotheses:
    """AR greedy decoding (``ar.greedy``'s tokens and scores, with exact verification) in rounds
    of NAR draft + AR verification over ``passes``; see the module docstring. ``limits`` (B,) int64:
    each sentence's AR length limit (tokens, eos included). ``stats``, when given, is added to.

    src_tokens (B, S) int64, src_lengths (B,) int64 >= 1.
    """
    config = model.config
    options = options if options is not None else SpeculativeOptions()
    if not config.has_nar or config.ar_stream != "query":
        raise ValueError("speculative decoding needs a JANUS model (NAR side and the AR query stream)")
    device = src_tokens.device
    batch = src_tokens.shape[0]
    steps = int(limits.max())  # eos forced at position limit
    encoder_out = passes.encode(src_tokens, src_lengths)
    predicted, _ = length_candidates(model, encoder_out, 1)
    draft_lengths = torch.minimum(predicted[:, 0], limits + 1)  # bos .. eos, eos at most at the limit
    passes.bind(encoder_out)
    banned = torch.tensor(janus_rules(model).blocked_ids, device=device)
    stats = stats if stats is not None else SpeculativeStats()
    stats.sentences += batch
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    # a window or a draft past the longest length limit changes nothing: capped, so that memory
    # follows the batch, not the option
    window = min(options.max_verify, steps)
    min_draft = min(options.min_draft, steps + 1)
    if options.draft_iterations == 1 and options.relaxed_top_k == 0:  # the whole search in one call, where native
        found = passes.speculative_search(limits, draft_lengths, banned, window, min_draft)
        if found is not None:
            tokens, total_log_prob, out_lengths, rounds = found
            stats.rounds += int(rounds.sum())
            stats.tokens += int(out_lengths.sum())
            stats.accepted_drafted += int((out_lengths - rounds).sum())
            found_tokens = output_tokens(tokens.tolist(), config.eos_id, specials)
            return greedy_hypotheses(found_tokens, total_log_prob, out_lengths)
    caches = passes.new_caches(steps + 1)
    history = torch.full((batch, steps + 2), config.pad_id, dtype=torch.long, device=device)
    history[:, 0] = config.bos_id
    accepted = torch.zeros(batch, dtype=torch.long, device=device)  # n: index of the last accepted token
    total_log_prob = torch.zeros(batch, dtype=torch.float32, device=device)
    rows = torch.arange(batch, device=device)  # the sentence of each active row
    results = (history.clone(), total_log_prob.clone(), accepted.clone())
    slots = torch.arange(window + 1, device=device)[None]
    relaxed_options = options.relaxed_top_k > 0

    while len(rows):
        active = len(rows)
        # the draft: positions n+1 .. L-2 masked, eos at L-1; L extended to cover min_draft positions
        draft_lengths = torch.maximum(draft_lengths, torch.minimum(accepted + 2 + min_draft, limits + 1))
        counts = torch.clamp(torch.minimum(draft_lengths - 2, limits - 1) - accepted, min=0)  # drafted positions
        verified_counts = torch.clamp(counts, max=window)
        width = int(draft_lengths.max())
        positions = torch.arange(width, device=device)
        draft_rows = torch.where(positions[None] > accepted[:, None], config.mask_id, history[:, :width])
        draft_rows = torch.where(positions[None] == draft_lengths[:, None] - 1, config.eos_id, draft_rows)
        draft_rows = _draft(
            passes,
            draft_rows,
            draft_lengths,
            accepted,
            counts,
            verified_counts,
            config.mask_id,
            options.draft_iterations,
        )
        gather = torch.clamp(accepted[:, None] + 1 + slots[:, :window], max=width - 1)
        draft = torch.where(slots[:, :window] < verified_counts[:, None], draft_rows.gather(1, gather), config.pad_id)
        # the verification: y_n and the drafted tokens, appended to each sentence's caches
        new_counts = verified_counts + 1
        new_rows = torch.cat([history.gather(1, accepted[:, None]), draft], 1)  # (active, window + 1)
        valid = slots < new_counts[:, None]
        new_tokens = new_rows[valid]
        row_offsets = F.pad(new_counts.cumsum(0), (1, 0))
        forced = (accepted[:, None] + slots + 1 >= limits[:, None])[valid]  # the token at position `limit` is eos
        candidates = None
        if relaxed_options:  # the drafted token after each new token, to rank against AR's choice
            following = F.pad(draft, (0, 1), value=-1)
            candidates = torch.where(slots < verified_counts[:, None], following, -1)[valid]
        new = NewTokens(new_tokens, row_offsets, accepted, candidates)
        rule = GreedyRule(banned, forced, config.eos_id)
        chosen, chosen_log_probs, candidate_log_probs, candidate_ranks = passes.ar_extend(history, new, caches, rule)
        verified = torch.full((active, window + 1), config.pad_id, dtype=torch.long, device=device)
        verified[valid] = chosen
        step_log_probs = torch.zeros(active, window + 1, dtype=torch.float32, device=device)
        step_log_probs[valid] = chosen_log_probs
        relaxed = None
        if relaxed_options:
            ok = (candidate_ranks < options.relaxed_top_k) & (
                candidate_log_probs >= chosen_log_probs - options.relaxed_margin
            )
            padded_ok = torch.zeros(active, window + 1, dtype=torch.bool, device=device)
            padded_ok[valid] = ok & ~forced
            relaxed = padded_ok[:, :window].contiguous()
            drafted_log_probs = torch.zeros(active, window + 1, dtype=torch.float32, device=device)
            drafted_log_probs[valid] = candidate_log_probs
        kept, kept_tokens = speculative_accept(draft, verified_counts, verified, relaxed, config.eos_id)
        if relaxed is not None:  # a drafted token kept though AR chose another scores its own log-probability
            step_log_probs = torch.where(kept_tokens == verified, step_log_probs, drafted_log_probs)
        taken = slots < kept[:, None]
        total_log_prob += torch.where(taken, step_log_probs, 0.0).sum(1)  # untaken slots may hold NaN
        target = (accepted[:, None] + 1 + slots).clamp(max=history.shape[1] - 1)
        history.scatter_(1, target, torch.where(taken, kept_tokens, history.gather(1, target)))
        accepted = accepted + kept
        finished = history.gather(1, accepted[:, None]).squeeze(1) == config.eos_id
        stats.rounds += active
        stats.tokens += int(kept.sum())
        stats.accepted_drafted += int((kept - 1).sum())
        done = int(finished.sum())
        if done == 0:
            continue
        for result, state in zip(results, (history, total_log_prob, accepted)):
            result[rows[finished]] = state[finished]
        if done == active:
            break
        keep = (~finished).nonzero().squeeze(1)
        history, total_log_prob, accepted = history[keep], total_log_prob[keep], accepted[keep]
        rows, limits, draft_lengths = rows[keep], limits[keep], draft_lengths[keep]
        passes.keep(keep, caches)
    history, total_log_prob, out_lengths = results
    tokens = output_tokens([row[1:] for row in history.tolist()], config.eos_id, specials)
    return greedy_hypotheses(tokens, total_log_prob, out_lengths)


def _draft(
    passes: DecoderPasses,
    draft_rows: torch.Tensor,
    draft_lengths: torch.Tensor,
    accepted: torch.Tensor,
    counts: torch.Tensor,
    verified_counts: torch.Tensor,
    mask_id: int,
    iterations: int,
) -> torch.Tensor:
    """Fill the masked positions of ``draft_rows`` (active, width) (``<bos> y_1 .. y_n <mask>* <eos>``,
    row r real up to ``draft_lengths[r]``) by mask-predict: ``iterations`` fills; after each but the
    last the least confident drafted tokens are masked again, floor(count * (T - 1 - t) / T) of each
    row's ``counts``. With one iteration only the first ``verified_counts`` drafted positions are
    projected to the vocabulary (the rest is never verified). Returns the filled rows."""
    columns = torch.arange(draft_rows.shape[1], device=draft_rows.device)
    rows = PackedRows(draft_lengths, draft_rows.shape[1])
    first = accepted[:, None] + 1
    drafted = (columns >= first) & (columns < first + counts[:, None])
    wanted = drafted if iterations > 1 else (columns >= first) & (columns < first + verified_counts[:, None])
    scores = torch.zeros(draft_rows.shape, dtype=torch.float32, device=draft_rows.device)
    for iteration in range(iterations):
        masked = (draft_rows == mask_id) & wanted
        outputs = masked.view(-1).index_select(0, rows.index).nonzero().squeeze(1)  # packed rows: row-major
        filled, filled_scores = passes.nar_fill(draft_rows, rows, outputs, mask_id)
        draft_rows = draft_rows.masked_scatter(masked, filled)
        if iteration == iterations - 1:
            break
        scores = scores.masked_scatter(masked, filled_scores)
        remask = counts * (iterations - 1 - iteration) // iterations
        order = torch.where(drafted, scores, float("inf")).argsort(dim=1, stable=True)
        ranks = torch.empty_like(order).scatter_(1, order, columns.expand_as(order).contiguous())
        draft_rows = torch.where((ranks < remask[:, None]) & drafted, mask_id, draft_rows)
    return draft_rows
