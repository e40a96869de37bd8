"""AR search, defined once: the length limits, the rules of what may be generated, and the beam
search loop (``finished_beam_search``; beam 1 = greedy) that the reference decoder, the engine's
beam search and fairseq-generate's AR decoding all run, each over its own decoder steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from janus_fast.decoding.hypotheses import Hypotheses, output_tokens
from janus_fast.model import JanusModel, LayerCache


def max_ar_lengths(src_lengths: torch.Tensor, model: JanusModel, max_len: tuple[float, int]) -> torch.Tensor:
    """Tokens each sentence's AR search may generate, eos included: (B,) int64, >= 1.

    Per sentence (``a * src_len + b`` for ``max_len = (a, b)``), so a translation never depends on the
    other sentences of its batch.
    """
    max_len_a, max_len_b = max_len
    limits = max_len_a * src_lengths.double() + float(max_len_b)  # float64: huge a or b cannot overflow
    return limits.clamp(1, model.config.max_target_positions - 1).long()


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
class BeamChoice:
    """A beam search step's candidates after each of R rows: the ``k`` tokens of largest
    log-softmax over the whole vocabulary without ``banned`` (K,) int64 ids, or ``forced_id``
    alone where ``forced`` (R,) bool; with ``nan_as_impossible`` a NaN log-probability counts as
    -inf (fairseq's rule)."""

    banned: Tensor
    forced: Tensor
    forced_id: int
    k: int
    nan_as_impossible: bool = False

    def choose(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(R, V) logits -> ids (R, min(k, V)) int64 and their log-probabilities (R, min(k, V))
        float32, best first (ties in an unspecified order; the native pass: lowest id first)."""
        log_probs = F.log_softmax(logits.float(), dim=-1)
        if self.nan_as_impossible:
            log_probs = log_probs.nan_to_num(nan=float("-inf"))
        allowed = log_probs.index_fill(1, self.banned, float("-inf"))
        if bool(self.forced.any()):
            only = torch.full_like(allowed, float("-inf"))
            only[:, self.forced_id] = log_probs[:, self.forced_id]
            allowed = torch.where(self.forced[:, None], only, allowed)
        values, ids = allowed.topk(min(self.k, allowed.shape[-1]), dim=-1)
        return ids, values


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

    ``select(encoder, origin)`` returns the encoder side of rows ``origin`` (rows',) int64;
    ``reorder_caches(caches, origin)`` keeps those rows of the caches (``LayerCache.reorder`` of
    each, or a decoder's own, e.g. one native call for all of them).
    """

    def __init__(
        self,
        caches: Sequence[LayerCache],
        encoder: EncoderSide,
        select: Callable[[EncoderSide, torch.Tensor], EncoderSide],
        rows: int,
        reorder_caches: Callable[[Sequence[LayerCache], torch.Tensor], None] = LayerCache.reorder_all,
    ) -> None:
        self.caches = list(caches)
        self.encoder = encoder
        self.rows = rows
        self._select = select
        self._reorder_caches = reorder_caches

    def reorder(self, origin: torch.Tensor) -> None:
        """Keep rows ``origin`` (rows',) int64 of every cache, and of the encoder side when rows' <
        rows (sentences left the batch; with the same rows the encoder side is equal within a beam)."""
        self._reorder_caches(self.caches, origin)
        if len(origin) < self.rows:
            self.encoder = self._select(self.encoder, origin)
        self.rows = len(origin)


def finished_beam_search(
    step_candidates: Callable[[torch.Tensor, int, BeamChoice], tuple[torch.Tensor, torch.Tensor]],
    reorder: Callable[[torch.Tensor], None],
    rules: BeamRules,
    beam: int,
    row_limits: torch.Tensor,
) -> FinishedBeams:
    """AR beam search (beam 1 = greedy) with ``beam`` live hypotheses per sentence, as NMT toolkits
    run it (fairseq's ``SequenceGenerator`` with ``--lenpen 1``); the decoder is whatever
    ``step_candidates`` runs.

    Each step ranks the ``2 * beam`` best extensions of a sentence's live hypotheses (summed
    log-probabilities). Those among the first ``beam`` that end with eos are finished, scored by
    summed log-probability / tokens (eos included); the best ``beam`` that do not end stay live,
    so finished hypotheses never take live slots. A sentence is done when it has ``beam`` finished
    hypotheses or reaches its length limit; its best finished hypothesis (the first on ties) wins.
    Done sentences leave the batch (at once with beam > 1, where the rows are reordered every
    step anyway; greedy: once a quarter of the rows are done), so one long sentence does not keep
    the whole batch stepping; the results are the same either way.

    ``step_candidates(history, step, choice)``: each row's best next tokens under ``choice`` (a
    ``BeamChoice`` of ``2 * beam`` tokens: the rules' banned ids, eos forced at a row's limit),
    ids (rows, k) int64 and log-probabilities (rows, k) float32, given the tokens so far, history
    (rows, steps + 1) int64 (bos, then one token per step; rows = the active sentences x beam, a
    sentence's beams adjacent): ``choice.choose(logits)``, or a decoder pass that chooses without
    the (rows, V) logits. A sentence's best 2 * beam extensions are among its rows' best 2 * beam
    each, so ranking those ranks all of beam x V. ``reorder(origin)``: keep rows
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
    history_scores = torch.zeros(
        rows, steps + 1, dtype=torch.float32, device=device
    )  # summed log-probability after each token
    live_scores = torch.zeros(batch, beam, dtype=torch.float32, device=device)
    live_scores[:, 1:] = float("-inf")  # all beams start identical: keep one
    finished_scores = torch.full((batch, beam), float("-inf"), dtype=torch.float32, device=device)
    finished_tokens = torch.full((batch, beam, steps + 1), rules.pad_id, dtype=torch.long, device=device)
    finished_sums = torch.zeros(batch, beam, steps + 1, dtype=torch.float32, device=device)
    finished_lengths = torch.ones(batch, beam, dtype=torch.long, device=device)
    finished_count = torch.zeros(batch, dtype=torch.long, device=device)  # of each active sentence
    row_offsets = torch.arange(batch, device=device)[:, None] * beam
    rank = torch.arange(2 * beam, device=device)
    banned = torch.tensor(rules.blocked_ids, dtype=torch.long, device=device)
    banned_early = torch.tensor(sorted({*rules.blocked_ids, rules.eos_id}), dtype=torch.long, device=device)

    for step in range(steps):
        choice = BeamChoice(
            banned_early if step < rules.min_length else banned,  # no eos yet, unless forced
            row_limits == step + 1,  # only eos at a row's length limit
            rules.eos_id,
            2 * beam,
            rules.nan_as_impossible,
        )
        ids, log_probs = step_candidates(history, step, choice)
        count, k = len(active), ids.shape[-1]
        candidates = (live_scores.view(-1, 1) + log_probs).view(count, beam * k)
        cand_scores, flat = candidates.topk(2 * beam, dim=-1)  # (count, 2 * beam), best first
        cand_rows = flat // k + row_offsets
        cand_tokens = ids.view(count, beam * k).gather(1, flat)
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
        origin = origin.view(-1)
        history = history.index_select(0, origin)
        history_scores = history_scores.index_select(0, origin)
        if beam > 1 or len(origin) < count * beam:
            reorder(origin)
        history[:, step + 1] = next_tokens.view(-1)
        history_scores[:, step + 1] = live_scores.view(-1)

    best_scores, best = finished_scores.max(1)
    sentences = torch.arange(batch, device=device)
    # a sentence with no finished hypothesis (NaN scores never finish one): no tokens, score -inf
    lengths = finished_lengths[sentences, best].masked_fill(best_scores == float("-inf"), 0).tolist()
    tokens = finished_tokens[sentences, best].tolist()
    sums = finished_sums[sentences, best]
    positional = (sums[:, 1:] - sums[:, :-1]).tolist()
    return FinishedBeams(
        [row[1 : n + 1] for row, n in zip(tokens, lengths)],
        [row[:n] for row, n in zip(positional, lengths)],
        best_scores.tolist(),
    )


def janus_rules(model: JanusModel) -> BeamRules:
    """This project's AR rules: from ``<bos>``; the mask, pad and bos never generated; eos allowed
    from the first step and forced at a row's length limit."""
    config = model.config
    return BeamRules(config.bos_id, config.eos_id, config.pad_id, (config.mask_id, config.pad_id, config.bos_id))


def janus_hypotheses(model: JanusModel, found: FinishedBeams) -> Hypotheses:
    """The project's output of a search: tokens without special ids, the length-normalised score."""
    config = model.config
    specials = {config.pad_id, config.bos_id, config.eos_id, config.mask_id}
    return Hypotheses(output_tokens(found.tokens, config.eos_id, specials), found.scores)
