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

The output is AR greedy's (``engine.greedy``), token for token, by construction: every kept token
is AR's argmax given the kept tokens before it, computed by the same pass arithmetic as a single
AR step (the native products are row-independent). ``relaxed_top_k`` / ``relaxed_margin`` loosen the
verification (a drafted token is also kept when it is among AR's top k and within the margin of
AR's best log-probability; SpecDec++-style): faster, no longer AR greedy's output.

The passes are native on the CPU (``NativeDecoder.nar_fill`` / ``ar_extend``) and PyTorch
elsewhere (the draft through ``model.nar_logits``, the verification recomputing the prefix through
``model.ar_hidden``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from janus_fast.decoding.search import Hypotheses, length_candidates, max_ar_lengths, strip_special
from janus_fast.model import EncoderOutput, JanusModel
from janus_fast.native.decoder import NativeDecoder
from janus_fast.ops import speculative_accept


@dataclass(frozen=True)
class SpeculativeOptions:
    """How speculative decoding drafts and verifies.

    draft_iterations: mask-predict iterations per draft (>= 1).
    min_draft: a draft covers at least this many positions after the accepted prefix; the draft
        length is extended where the predicted length leaves fewer (>= 1).
    max_verify: at most this many drafted tokens are verified per round (>= 1; the rest of the
        draft is not projected to the vocabulary).
    relaxed_top_k: 0 (default) = exact verification (AR greedy's output); k >= 1 also keeps a drafted
        token that is among AR's top k and ...
    relaxed_margin: ... whose AR log-probability is within this margin (>= 0) of AR's best.
    """

    draft_iterations: int = 1
    min_draft: int = 4
    max_verify: int = 8
    relaxed_top_k: int = 0
    relaxed_margin: float = 1.0

    def __post_init__(self) -> None:
        for name, low in (("draft_iterations", 1), ("min_draft", 1), ("max_verify", 1), ("relaxed_top_k", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        margin = self.relaxed_margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
            raise ValueError(f"relaxed_margin must be a finite number >= 0, got {margin!r}")


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


class _NativePasses:
    """Draft and verify as native CPU passes, the verification appending to key/value caches."""

    def __init__(self, model: JanusModel, native: NativeDecoder, encoder_out: EncoderOutput, steps: int) -> None:
        self.native = native
        self.memory = NativeDecoder.memory(encoder_out)
        self.caches = model.new_caches(len(encoder_out.lengths), steps, encoder_out.states)

    def draft_fill(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        row_offsets: torch.Tensor,
        outputs: torch.Tensor,
        mask_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """NAR fill at ``outputs`` (M,) of the sentences' packed rows (tokens, positions (P,)): the
        argmax token without ``mask_id`` and its log-probability."""
        return self.native.nar_fill(tokens, positions, row_offsets, self.memory, outputs, mask_id)

    def verify(
        self,
        history: torch.Tensor,
        new_tokens: torch.Tensor,
        row_offsets: torch.Tensor,
        cache_lengths: torch.Tensor,
        banned: torch.Tensor,
        forced: torch.Tensor,
        eos_id: int,
        candidates: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """AR greedy choices (P,) and their log-probabilities after each packed new token, and the
        candidates' log-probabilities and ranks there (empty without candidates)."""
        return self.native.ar_extend(
            new_tokens, row_offsets, cache_lengths, self.memory, self.caches, banned, forced, eos_id, candidates
        )

    def keep(self, index: torch.Tensor) -> None:
        """Keep sentences ``index`` (finished ones leave)."""
        for cache in self.caches:
            cache.reorder(index)
        self.memory = NativeDecoder.select_memory(self.memory, index)


class _TorchPasses:
    """Draft and verify as PyTorch passes of the model (any device); the verification recomputes
    each sentence's prefix (no caches)."""

    def __init__(self, model: JanusModel, encoder_out: EncoderOutput) -> None:
        self.model = model
        self.encoder_out = encoder_out

    def draft_fill(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        row_offsets: torch.Tensor,
        outputs: torch.Tensor,
        mask_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = row_offsets[1:] - row_offsets[:-1]
        width = int(lengths.max())
        row_of = torch.arange(len(lengths), device=tokens.device).repeat_interleave(lengths)
        padded = torch.full((len(lengths), width), self.model.config.pad_id, dtype=torch.long, device=tokens.device)
        padded[row_of, positions] = tokens
        logits = self.model.nar_logits(padded, lengths, self.encoder_out)
        chosen = logits[row_of[outputs], positions[outputs]].float()
        log_probs = F.log_softmax(chosen, dim=-1)
        chosen[:, mask_id] = float("-inf")
        best = chosen.argmax(-1)
        return best, log_probs.gather(1, best[:, None]).squeeze(1)

    def verify(
        self,
        history: torch.Tensor,
        new_tokens: torch.Tensor,
        row_offsets: torch.Tensor,
        cache_lengths: torch.Tensor,
        banned: torch.Tensor,
        forced: torch.Tensor,
        eos_id: int,
        candidates: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        counts = row_offsets[1:] - row_offsets[:-1]
        ends = cache_lengths + counts  # content tokens per sentence: prefix + new
        width = int(ends.max())
        rows = torch.arange(len(counts), device=history.device)
        row_of = rows.repeat_interleave(counts)
        index = torch.arange(len(new_tokens), device=history.device) - row_offsets[:-1][row_of]
        at = cache_lengths[row_of] + index  # each new token's position
        content = history[:, : width + 1].clone()
        content[row_of, at] = new_tokens
        hidden = self.model.ar_hidden(content, ends + 1, self.encoder_out)  # row i predicts position i + 1
        logits = self.model.output_logits(hidden[row_of, at]).float()
        log_probs = F.log_softmax(logits, dim=-1)
        choice = log_probs.clone()
        choice[:, banned] = float("-inf")
        best = torch.where(forced, eos_id, choice.argmax(-1))
        best_log_probs = log_probs.gather(1, best[:, None]).squeeze(1)
        if candidates is None:
            empty = torch.empty(0, device=best.device)
            return best, best_log_probs, empty, empty.long()
        some = candidates.clamp(min=0)[:, None]
        candidate_log_probs = log_probs.gather(1, some).squeeze(1)
        ranks = (choice > choice.gather(1, some)).sum(1)
        vocab = log_probs.shape[1]
        unranked = (candidates < 0) | torch.isin(candidates, banned) | ~log_probs.isfinite().all(1)
        ranks = torch.where(unranked, vocab, ranks)
        candidate_log_probs = torch.where(candidates < 0, float("nan"), candidate_log_probs)
        return best, best_log_probs, candidate_log_probs, ranks

    def keep(self, index: torch.Tensor) -> None:
        self.encoder_out = self.encoder_out.select(index)


@torch.inference_mode()
def speculative_greedy(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    max_len_a: float,
    max_len_b: int,
    native: NativeDecoder | None,
    options: SpeculativeOptions = SpeculativeOptions(),
    stats: SpeculativeStats | None = None,
) -> Hypotheses:
    """AR greedy decoding (``engine.greedy``'s tokens and scores, with exact verification) in rounds
    of NAR draft + AR verification; see the module docstring. ``native``: the native decoder to run
    the passes on, or None for PyTorch passes. ``stats``, when given, is added to.

    src_tokens (B, S) int64, src_lengths (B,) int64 >= 1.
    """
    config = model.config
    if not config.has_nar or config.ar_stream != "query":
        raise ValueError("speculative decoding needs a JANUS model (NAR side and the AR query stream)")
    device = src_tokens.device
    batch = src_tokens.shape[0]
    limits = max_ar_lengths(src_lengths, model, max_len_a, max_len_b)  # tokens incl. eos; eos forced at position limit
    steps = int(limits.max())
    encoder_out = (
        native.encode(src_tokens, src_lengths) if native is not None else model.encode(src_tokens, src_lengths)
    )
    predicted, _ = length_candidates(model, encoder_out, 1)
    draft_lengths = torch.minimum(predicted[:, 0], limits + 1)  # bos .. eos, eos at most at the limit
    passes = (
        _NativePasses(model, native, encoder_out, steps + 1) if native is not None else _TorchPasses(model, encoder_out)
    )
    banned = torch.tensor([config.mask_id, config.pad_id, config.bos_id], device=device)
    history = torch.full((batch, steps + 2), config.pad_id, dtype=torch.long, device=device)
    history[:, 0] = config.bos_id
    accepted = torch.zeros(batch, dtype=torch.long, device=device)  # n: index of the last accepted token
    total_log_prob = torch.zeros(batch, device=device)
    rows = torch.arange(batch, device=device)  # the sentence of each active row
    results = (history.clone(), total_log_prob.clone(), accepted.clone())
    window = options.max_verify
    slots = torch.arange(window + 1, device=device)[None]
    relaxed_options = options.relaxed_top_k > 0
    stats = stats if stats is not None else SpeculativeStats()
    stats.sentences += batch

    while len(rows):
        active = len(rows)
        # the draft: positions n+1 .. L-2 masked, eos at L-1; L extended to cover min_draft positions
        draft_lengths = torch.maximum(draft_lengths, torch.minimum(accepted + 2 + options.min_draft, limits + 1))
        counts = torch.clamp(torch.minimum(draft_lengths - 2, limits - 1) - accepted, min=0)  # drafted positions
        verified_counts = torch.clamp(counts, max=window)
        width = int(draft_lengths.max())
        positions = torch.arange(width, device=device)
        inside = positions[None] < draft_lengths[:, None]
        draft_rows = torch.where(positions[None] > accepted[:, None], config.mask_id, history[:, :width])
        draft_rows = torch.where(positions[None] == draft_lengths[:, None] - 1, config.eos_id, draft_rows)
        draft_rows = _draft(
            passes, draft_rows, inside, accepted, counts, verified_counts, config.mask_id, options.draft_iterations
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
        chosen, chosen_log_probs, candidate_log_probs, candidate_ranks = passes.verify(
            history, new_tokens, row_offsets, accepted, banned, forced, config.eos_id, candidates
        )
        verified = torch.full((active, window + 1), config.pad_id, dtype=torch.long, device=device)
        verified[valid] = chosen
        step_log_probs = torch.zeros(active, window + 1, device=device)
        step_log_probs[valid] = chosen_log_probs
        relaxed = None
        if relaxed_options:
            ok = (candidate_ranks < options.relaxed_top_k) & (
                candidate_log_probs >= chosen_log_probs - options.relaxed_margin
            )
            padded_ok = torch.zeros(active, window + 1, dtype=torch.bool, device=device)
            padded_ok[valid] = ok & ~forced
            relaxed = padded_ok[:, :window].contiguous()
            drafted_log_probs = torch.zeros(active, window + 1, device=device)
            drafted_log_probs[valid] = candidate_log_probs
        kept, kept_tokens = speculative_accept(draft, verified_counts, verified, relaxed, config.eos_id)
        if relaxed is not None:  # a drafted token kept though AR chose another scores its own log-probability
            step_log_probs = torch.where(kept_tokens == verified, step_log_probs, drafted_log_probs)
        taken = slots < kept[:, None]
        total_log_prob += (step_log_probs * taken).sum(1)
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
        passes.keep(keep)
    history, total_log_prob, out_lengths = results
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    tokens = [strip_special(row[1:], config.eos_id, specials) for row in history.tolist()]
    return Hypotheses(tokens, (total_log_prob / out_lengths.clamp(min=1)).tolist())


def _draft(
    passes: _NativePasses | _TorchPasses,
    draft_rows: torch.Tensor,
    inside: torch.Tensor,
    accepted: torch.Tensor,
    counts: torch.Tensor,
    verified_counts: torch.Tensor,
    mask_id: int,
    iterations: int,
) -> torch.Tensor:
    """Fill the masked positions of ``draft_rows`` (active, width) (``<bos> y_1 .. y_n <mask>* <eos>``,
    real where ``inside``) by mask-predict: ``iterations`` fills; after each but the last the least
    confident drafted tokens are masked again, floor(count * (T - 1 - t) / T) of each row's
    ``counts``. With one iteration only the first ``verified_counts`` drafted positions are
    projected to the vocabulary (the rest is never verified). Returns the filled rows."""
    columns = torch.arange(draft_rows.shape[1], device=draft_rows.device)
    positions = columns.expand_as(draft_rows)[inside]
    row_offsets = F.pad(inside.sum(1).cumsum(0), (1, 0))
    first = accepted[:, None] + 1
    drafted = (columns >= first) & (columns < first + counts[:, None])
    wanted = drafted if iterations > 1 else (columns >= first) & (columns < first + verified_counts[:, None])
    scores = torch.zeros(draft_rows.shape, device=draft_rows.device)
    for iteration in range(iterations):
        masked = (draft_rows == mask_id) & wanted
        outputs = masked[inside].nonzero().squeeze(1)  # packed rows are the real positions, row-major
        filled, filled_scores = passes.draft_fill(draft_rows[inside], positions, row_offsets, outputs, mask_id)
        draft_rows = draft_rows.masked_scatter(masked, filled)
        if iteration == iterations - 1:
            break
        scores = scores.masked_scatter(masked, filled_scores)
        remask = counts * (iterations - 1 - iteration) // iterations
        order = torch.where(drafted, scores, float("inf")).argsort(dim=1, stable=True)
        ranks = torch.empty_like(order).scatter_(1, order, columns.expand_as(order).contiguous())
        draft_rows = torch.where((ranks < remask[:, None]) & drafted, mask_id, draft_rows)
    return draft_rows
