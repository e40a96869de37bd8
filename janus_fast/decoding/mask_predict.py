"""The engine's mask-predict: ONE loop over the decoder passes (``janus_fast.decoding.passes``),
with what differs between this project's semantics and fairseq-generate's as a policy.

Each pass runs the decoder over the real positions only (packed, no padding) and projects to the
vocabulary ONLY the positions that hold the mask (on average (T + 1) / 2T of them); the native CPU
pass also makes the choice (argmax and its log-probability), so no (M, V) logits are kept.

``MaskPredictPolicy`` says how a decoding starts (its length rule), what a fill may choose, how
it re-masks after a pass, whether a row stops early and how the candidates of a sentence become
its output. ``JANUS`` is this project's (``janus_fast.decoding.reference.mask_predict`` is its
plain reference; the outputs are equal, token for token, with fp32 weights);
``janus_fast.decoding.fairseq.FAIRSEQ`` is fairseq-generate's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from janus_fast.decoding.candidates import MaskPredictState, best_length_candidates, start_mask_predict
from janus_fast.decoding.hypotheses import Hypotheses
from janus_fast.decoding.options import PLAIN_RANKING, CandidateRanking
from janus_fast.decoding.packed import PackedRows
from janus_fast.decoding.passes import DecoderPasses
from janus_fast.model import JanusModel
from janus_fast.ops import mask_predict_remask


@dataclass
class FinishedRows:
    """Every row of a group after its last pass: tokens (N, W) int64, scores (N, W) float32
    (the log-probability each token was filled with), lengths (N,) int64 and steps (N,) int64 (the
    0-based pass after which the row stopped); ``ar_scores`` (N,) float32 where the policy asked for
    the model's AR scores of the rows."""

    tokens: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor
    steps: torch.Tensor
    length_beam: int
    ar_scores: torch.Tensor | None = None


class MaskPredictPolicy:
    """This project's mask-predict: the ``length_beam`` most probable lengths >= 3; each pass fills
    the masked positions with the argmax without the mask; after pass t of T the
    floor((L - 2)(T - 1 - t) / T) lowest-scoring real tokens are masked again
    (``janus_fast.ops.mask_predict_remask``); all T passes run; per sentence the candidate with the
    highest rank under ``ranking`` wins (``best_length_candidates``)."""

    length_rule = "top"
    adaptive_stop = False

    def __init__(self, ranking: CandidateRanking = PLAIN_RANKING) -> None:
        self.ranking = ranking

    def exclude_id(self, model: JanusModel) -> int:
        """The token a fill never chooses (-1: none)."""
        return model.config.mask_id

    def remask(self, tokens: Tensor, scores: Tensor, lengths: Tensor, step: int, passes: int, mask_id: int) -> None:
        """Re-mask rows in place after pass ``step`` (0-based) of ``passes`` (not after the last)."""
        mask_predict_remask(tokens, scores, lengths, step, passes, mask_id)

    def finish(self, model: JanusModel, rows: FinishedRows) -> Hypotheses:
        """One hypothesis per sentence from its rows."""
        return best_length_candidates(
            model, rows.tokens, rows.scores, rows.lengths, rows.length_beam, rows.ar_scores, self.ranking
        )


def mask_predict(
    model: JanusModel,
    passes: DecoderPasses,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    num_passes: int,
    length_beam: int,
    policy: MaskPredictPolicy,
) -> list:
    """Mask-predict of a batch over ``passes`` under ``policy``: ``num_passes`` decoder passes at
    most (fewer for rows that stop early under an adaptive policy); returns the concatenation of
    ``policy.finish`` over the batch's memory-bounded groups (``MaskPredictState.split``): a
    ``Hypotheses`` or a list of hypotheses, one per sentence.

    src_tokens (B, S) int64, src_lengths (B,) int64 >= 1.
    """
    if num_passes < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_passes}")
    if length_beam < 1:
        raise ValueError(f"length_beam must be >= 1, got {length_beam}")
    encoder_out = passes.encode(src_tokens, src_lengths)
    start = start_mask_predict(model, encoder_out, length_beam, policy.length_rule)
    parts = [policy.finish(model, _iterate(model, passes, group, num_passes, policy)) for group in start.split()]
    if isinstance(parts[0], Hypotheses):
        return Hypotheses.concatenate(parts)
    return [hypothesis for part in parts for hypothesis in part]


def _iterate(
    model: JanusModel, passes: DecoderPasses, group: MaskPredictState, num_passes: int, policy: MaskPredictPolicy
) -> FinishedRows:
    """The passes over one group of rows; rows that stop early (adaptive policies) leave it."""
    mask_id = model.config.mask_id
    exclude_id = policy.exclude_id(model)
    tokens, scores, lengths = group.tokens, group.scores, group.lengths
    finished = FinishedRows(tokens, scores, lengths, torch.full_like(lengths, num_passes - 1), group.length_beam)
    active = torch.arange(len(lengths), device=lengths.device)  # the row of the group each active row is
    passes.bind(group.sentences, group.sentence_of_row)
    rows = PackedRows(lengths, tokens.shape[1])  # the rows' lengths stay fixed: packed once (and when rows leave)
    for step in range(num_passes):
        before = tokens.clone() if policy.adaptive_stop else None
        masked = (tokens.view(-1).index_select(0, rows.index) == mask_id).nonzero().squeeze(1)
        filled, filled_scores = passes.nar_fill(tokens, rows, masked, exclude_id)
        where = rows.index[masked]
        tokens.view(-1).index_copy_(0, where, filled)
        scores.view(-1).index_copy_(0, where, filled_scores)
        if step + 1 == num_passes:
            break
        policy.remask(tokens, scores, lengths, step, num_passes, mask_id)
        if before is None:
            continue
        done = (before == tokens).all(1)
        if not bool(done.any()):
            continue
        ended = active[done]
        finished.tokens[ended], finished.scores[ended], finished.steps[ended] = tokens[done], scores[done], step
        if bool(done.all()):
            active = active[:0]
            break
        keep = (~done).nonzero().squeeze(1)
        tokens, scores, lengths, active = tokens[keep], scores[keep], lengths[keep], active[keep]
        passes.keep(keep)
        rows = PackedRows(lengths, tokens.shape[1])
    if len(active) and tokens is not finished.tokens:  # rows still active after the last pass, not in place
        finished.tokens[active], finished.scores[active] = tokens, scores
    if policy.ranking.ar_rescore:
        passes.bind(group.sentences, group.sentence_of_row)
        finished.ar_scores = passes.ar_scores(finished.tokens, finished.lengths)
    return finished
