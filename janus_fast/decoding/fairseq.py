"""Mask-predict as ``fairseq-generate`` runs it (``--task translation_lev``, a CMLM model), for
converted fairseq checkpoints (``janus_fast.fairseq.convert``): same tokens, same scores.

Written from a reading of fairseq 0.12.2 (``IterativeRefinementGenerator`` and
``CMLMNATransformerModel``) and checked against its outputs (``python_tests/test_fairseq.py``).
What it does differently from the project's own mask-predict (``janus_fast.decoding.reference``),
all on purpose (see ``docs/fairseq.md``):

* ``max_iter`` = fairseq's ``--iter-decode-max-iter``: ``max_iter + 1`` decoder passes;
* the length is the argmax of the length head over all classes (no minimum), clamped to >= 2 and
  the length beam is that argmax plus centred offsets ``-(l // 2) .. l - 1 - l // 2``, each
  clamped to >= 2 (the project: the l most probable lengths >= 3);
* every pass fills the positions holding the mask (``<unk>``) with the argmax over the whole
  vocabulary, so ``<unk>`` can be predicted, stays and is filled again by the next pass;
* after pass ``t`` (0-based) of ``T = max_iter + 1`` it re-masks ``int((L - 2) * (1 - (t+1)/T))``
  lowest-scoring positions (fp32 product, truncated) and sets their scores to 0;
* adaptive stop (unless ``force_max_iter``): a row whose tokens after a pass (re-masks included)
  equal its tokens before it is finished there, ``<unk>`` and zero scores included;
* a candidate's score is the mean of its position scores over ``<bos> .. <eos>`` (both 0); the
  length candidate with the highest score wins (the first on ties).

``ar_beam_search`` is fairseq-generate's AR decoding (``--beam N``, its ``SequenceGenerator``), for
models with an AR side (the JANUS plugin's ``janus_transformer``, ``--inference-mode ar``):
``beam.finished_beam_search`` from ``<bos>`` with ``<pad>`` banned (``<unk>`` allowed), ``</s>``
banned at the first step (min length 1) and forced at step
``max_len = min(int(max_len_a * W + max_len_b), max_target_positions - 1)`` (W the padded source
width, as fairseq); a hypothesis' score is its summed log-probability over the tokens including
``</s>``, divided by their number.

Both are policies of the engine's loops: ``FairseqPolicy`` of the one mask-predict loop
(``janus_fast.decoding.mask_predict``), ``fairseq_rules`` of the one beam search
(``janus_fast.decoding.ar``), over the passes ``PassChoice`` picks (``janus_fast.decoding.passes``:
native on the CPU where they can run, with float32 weights the same tokens; PyTorch elsewhere, or
with ``native=False``). ``precision`` ("fp32", "bf16", "int8") is the decode precision; anything
but fp32 changes scores slightly.

Shapes: B sentences, l length beam, N = B * l rows (a sentence's candidates adjacent), W width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from janus_fast.decoding.ar import beam_search
from janus_fast.decoding.beam import BeamRules
from janus_fast.decoding.candidates import length_candidates
from janus_fast.decoding.mask_predict import FinishedRows, MaskPredictPolicy
from janus_fast.decoding.mask_predict import mask_predict as mask_predict_loop
from janus_fast.decoding.options import FAIRSEQ_MAX_LEN, named
from janus_fast.decoding.passes import PassChoice
from janus_fast.model import EncoderOutput, JanusModel

__all__ = [
    "FairseqHypothesis",
    "FairseqPolicy",
    "ar_beam_search",
    "fairseq_rules",
    "length_beam_lengths",
    "mask_predict",
    "remask_counts",
]


@dataclass
class FairseqHypothesis:
    """One finished sentence as fairseq-generate reports it: ``tokens`` from ``<bos>`` to
    ``<eos>`` (``<unk>`` kept), ``positional_scores`` one natural-log score per token (0 for
    ``<bos>``, ``<eos>`` and re-masked positions), ``score`` their mean and ``steps`` the 0-based
    pass at which it was finished."""

    tokens: list[int]
    positional_scores: list[float]
    score: float
    steps: int


def length_beam_lengths(model: JanusModel, encoder_out: EncoderOutput, length_beam: int) -> torch.Tensor:
    """Target lengths (bos/eos counted) of each sentence's candidates: (B, l) int64, fairseq's
    centred length beam (``candidates.length_candidates``, rule "centred")."""
    return length_candidates(model, encoder_out, length_beam, "centred")[0]


def remask_counts(lengths: torch.Tensor, step: int, num_passes: int) -> torch.Tensor:
    """How many tokens pass ``step`` (0-based) of ``num_passes`` re-masks in rows of ``lengths``
    (bos/eos counted): (N,) int64, ``int((L - 2) * (1 - (step + 1) / num_passes))`` in fp32."""
    return ((lengths.to(torch.float32) - 2) * (1 - (step + 1) / num_passes)).long()


class FairseqPolicy(MaskPredictPolicy):
    """fairseq-generate's mask-predict as a policy of the engine's loop: the centred length beam;
    fills over the whole vocabulary (the mask ``<unk>`` included); after pass t of T the
    ``remask_counts`` lowest-scoring positions (bos, eos and padding score 0 and take part, as in
    fairseq) are masked again with score 0; a row whose tokens after a pass equal those before it
    stops there (unless ``force_max_iter``); per sentence the candidate with the highest mean score
    over ``<bos> .. <eos>`` wins (the first on ties)."""

    length_rule = "centred"

    def __init__(self, force_max_iter: bool = False) -> None:
        super().__init__()
        self.adaptive_stop = not force_max_iter

    def exclude_id(self, model: JanusModel) -> int:
        return -1

    def remask(self, tokens: Tensor, scores: Tensor, lengths: Tensor, step: int, passes: int, mask_id: int) -> None:
        counts = remask_counts(lengths, step, passes)
        order = scores.sort(-1).indices  # ascending; bos, eos and pad score 0
        ranks = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < counts[:, None]
        remask = torch.zeros_like(tokens, dtype=torch.bool).scatter(1, order, ranks)
        tokens.masked_fill_(remask, mask_id)
        scores.masked_fill_(remask, 0.0)

    def finish(self, model: JanusModel, rows: FinishedRows) -> list[FairseqHypothesis]:
        pad_id = model.config.pad_id
        found = []
        for tokens, scores, steps in zip(rows.tokens, rows.scores, rows.steps.tolist()):
            real = tokens != pad_id
            row_scores = scores[real]
            found.append(FairseqHypothesis(tokens[real].tolist(), row_scores.tolist(), float(row_scores.mean()), steps))
        beam = rows.length_beam
        best = []
        for sentence in range(len(found) // beam):
            group = found[sentence * beam : (sentence + 1) * beam]
            group_scores = [hypothesis.score for hypothesis in group]
            best.append(group[group_scores.index(max(group_scores))])
        return best


@torch.inference_mode()
def mask_predict(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    max_iter: int = 10,
    length_beam: int = 1,
    force_max_iter: bool = False,
    native: bool = True,
    precision: str = "fp32",
    choice: PassChoice | None = None,
) -> list[FairseqHypothesis]:
    """fairseq-generate's mask-predict on a batch; one hypothesis per sentence.

    src_tokens (B, S) int64 right-padded (as the task gives them: ``<bos> x <eos>`` for
    translation_lev), src_lengths (B,) int64; ``max_iter`` >= 0 (``max_iter + 1`` passes),
    ``length_beam`` >= 1, ``force_max_iter`` disables the adaptive stop; ``native`` False keeps the
    PyTorch passes even where the native ones could run; ``precision`` ("fp32", "bf16", "int8"):
    the decode precision (``PassChoice``); ``choice``: passes chosen already (then ``native`` and
    ``precision`` are its own).
    """
    choice = choice if choice is not None else PassChoice(model, precision, native)
    passes = choice.passes()
    policy = FairseqPolicy(force_max_iter)
    return mask_predict_loop(passes.model, passes, src_tokens, src_lengths, max_iter + 1, length_beam, policy)


def fairseq_rules(model: JanusModel) -> BeamRules:
    """fairseq-generate's AR rules: from ``config.ar_start_id`` (``<bos>`` for the JANUS plugin,
    ``</s>`` for a plain transformer); ``<pad>`` never generated (``<unk>`` allowed); ``</s>`` not
    at the first step (``--min-len 1``); a NaN log-probability counts as impossible."""
    config = model.config
    return BeamRules(
        config.ar_start_id, config.eos_id, config.pad_id, (config.pad_id,), min_length=1, nan_as_impossible=True
    )


@torch.inference_mode()
def ar_beam_search(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    beam: int = 1,
    max_len: tuple[float, int] = FAIRSEQ_MAX_LEN,
    native: bool = True,
    precision: str = "fp32",
    choice: PassChoice | None = None,
) -> list[FairseqHypothesis]:
    """fairseq-generate's AR decoding (``--beam N``, its ``SequenceGenerator`` with its defaults
    ``--lenpen 1 --unkpen 0 --min-len 1 --max-len-a 0 --max-len-b 200``), from ``<bos>`` (the JANUS
    plugin) or ``</s>`` (a plain transformer: ``config.ar_start``); the best finished hypothesis
    per sentence, tokens ``y .. </s>`` (no start token), one score per token.

    src_tokens (B, S) int64 right-padded (``<bos> x <eos>``), src_lengths (B,) int64; ``native``,
    ``precision`` and ``choice`` as ``mask_predict``.
    """
    if not isinstance(beam, int) or isinstance(beam, bool) or beam < 1:
        raise ValueError(f"beam must be an integer >= 1, got {beam!r}")
    config = model.config
    # fairseq's cap (max positions - 1); a query stream one position ahead of its content (this
    # project's models) reads one position further, so its cap is one lower
    query_ahead = config.query_position_offset if config.ar_stream == "query" else 0
    max_len_a, max_len_b = max_len
    limit = min(int(max_len_a * src_tokens.shape[1] + max_len_b), config.max_target_positions - 1 - query_ahead)
    if limit < 1:
        a, b = named("max_len_a"), named("max_len_b")
        raise ValueError(
            f"{a} {max_len_a} x this batch's source width {src_tokens.shape[1]} + {b} {max_len_b} allows no target "
            f"token (fairseq's AR limit follows the batch's padded source width, so it differs between batches): "
            f"raise {b} to 1 or more"
        )
    choice = choice if choice is not None else PassChoice(model, precision, native)
    passes = choice.passes()
    row_limits = torch.full((len(src_lengths) * beam,), limit + 1, dtype=torch.long, device=src_tokens.device)
    found = beam_search(passes, src_tokens, src_lengths, fairseq_rules(model), beam, row_limits)
    return [
        FairseqHypothesis(tokens, positional, score, max(len(tokens) - 1, 0))  # (none: nothing finished)
        for tokens, positional, score in zip(found.tokens, found.positional_scores, found.scores)
    ]
