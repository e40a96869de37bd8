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
``search.finished_beam_search`` from ``<bos>`` with ``<pad>`` banned (``<unk>`` allowed), ``</s>``
banned at the first step (min length 1) and forced at step
``max_len = min(int(max_len_a * W + max_len_b), max_target_positions - 1)`` (W the padded source
width, as fairseq); a hypothesis' score is its summed log-probability over the tokens including
``</s>``, divided by their number.

Each pass runs the decoder over the real positions only and projects only the masked ones to
the vocabulary: on the CPU as one native call (``janus_fast.native.decoder``; with float32
weights, the same tokens), elsewhere through the PyTorch model. ``decoder_weights`` ("fp32",
"bf16", "int8") is the type the native passes store their weights in (the decode precision, as
``janus_fast.decoding.engine``); anything but fp32 needs the native passes (a ValueError where they cannot
run) and changes scores slightly.

Shapes: B sentences, l length beam, N = B * l rows (a sentence's candidates adjacent), W width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from janus_fast.attention import MaskSpec
from janus_fast.decoding.engine import native_decoder
from janus_fast.decoding.packed import PackedRows
from janus_fast.decoding.search import FAIRSEQ_MAX_LEN, BeamRows, BeamRules, finished_beam_search
from janus_fast.model import EncoderOutput, JanusModel, LayerCache
from janus_fast.native.decoder import WEIGHT_TYPES, NativeDecoder

__all__ = ["FairseqHypothesis", "ar_beam_search", "mask_predict", "length_beam_lengths", "remask_counts"]


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


def _mean_pool(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """states (B, S, d), lengths (B,) -> (B, d): the mean over real positions, each state divided by
    the length before the sum (fairseq's order of operations, for the same rounding)."""
    real = (torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]).to(states.dtype)
    return ((states / real.sum(1)[:, None, None]) * real[..., None]).sum(1)


def length_beam_lengths(model: JanusModel, encoder_out: EncoderOutput, length_beam: int) -> torch.Tensor:
    """Target lengths (bos/eos counted) of each sentence's candidates: (B, l) int64.

    The argmax of the length head's log-softmax (with ``length_offset``: minus C // 2 plus the
    source length) clamped to >= 2, plus offsets ``arange(l) - l // 2``, clamped to >= 2 again.
    """
    config = model.config
    logits = F.linear(_mean_pool(encoder_out.states, encoder_out.lengths), model.length_embed.weight)
    predicted = F.log_softmax(logits.float(), dim=-1).max(-1).indices
    if config.length_offset:
        predicted = predicted - config.num_length_classes // 2 + encoder_out.lengths
    best = predicted.clamp(min=2)
    offsets = torch.arange(length_beam, device=best.device) - length_beam // 2
    return (best[:, None] + offsets[None, :]).clamp(min=2)


def remask_counts(lengths: torch.Tensor, step: int, num_passes: int) -> torch.Tensor:
    """How many tokens pass ``step`` (0-based) of ``num_passes`` re-masks in rows of ``lengths``
    (bos/eos counted): (N,) int64, ``int((L - 2) * (1 - (step + 1) / num_passes))`` in fp32."""
    return ((lengths.to(torch.float32) - 2) * (1 - (step + 1) / num_passes)).long()


def _initial_tokens(lengths: torch.Tensor, pad_id: int, bos_id: int, eos_id: int, mask_id: int) -> torch.Tensor:
    """``<bos> <mask>*(L-2) <eos>`` right-padded: lengths (N,) -> (N, max L) int64."""
    positions = torch.arange(int(lengths.max()), device=lengths.device)[None, :]
    tokens = torch.where(positions < lengths[:, None], mask_id, pad_id)
    tokens = torch.where(positions == lengths[:, None] - 1, eos_id, tokens)
    tokens[:, 0] = bos_id
    return tokens


class _Decoder:
    """The decoder passes of one batch: native (one call per pass over the packed real positions,
    weights stored as ``decoder_weights``) where ``native`` and ``unsupported_reason`` allow, else the
    PyTorch model over the padded rows (fp32 only: ValueError for other ``decoder_weights``)."""

    def __init__(self, model: JanusModel, native: bool, decoder_weights: str = "fp32") -> None:
        if decoder_weights not in WEIGHT_TYPES:
            raise ValueError(f"decoder_weights must be one of {WEIGHT_TYPES}, got {decoder_weights!r}")
        if not native and decoder_weights != "fp32":
            raise ValueError(f"decoder_weights={decoder_weights!r} needs the native decoder, but native=False")
        self.model = model
        self.native = native_decoder(model, decoder_weights) if native else None
        self.memory: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor] | None = None

    def encode(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        if self.native is not None:
            return self.native.encode(src_tokens, src_lengths)
        return self.model.encode(src_tokens, src_lengths)

    def ar_step(
        self, tokens: torch.Tensor, step: int, encoder_out: EncoderOutput, caches: list[LayerCache]
    ) -> torch.Tensor:
        """``JanusModel.ar_step``: tokens (B,) at position ``step`` -> (B, V) logits; caches updated."""
        if self.native is not None:
            return self.native.ar_step(tokens, step, self.memory, caches)
        return self.model.ar_step(tokens, step, encoder_out, caches)

    def set_rows(self, encoder_out: EncoderOutput) -> None:
        """The rows' encoder output changed (length candidates expanded, finished rows dropped)."""
        self.memory = NativeDecoder.memory(encoder_out) if self.native is not None else None

    def fill_masked(
        self, tokens: torch.Tensor, lengths: torch.Tensor, encoder_out: EncoderOutput
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoder pass; returns the masked positions (N, W) bool and, for those only (row-major),
        the argmax token (M,) and its log-probability (M,) over the whole vocabulary."""
        model = self.model
        masked = tokens == model.config.mask_id
        if self.native is not None:
            rows = PackedRows(lengths, tokens.shape[1])
            packed_tokens = tokens.reshape(-1).index_select(0, rows.index)
            offsets = F.pad(lengths.cumsum(0), (1, 0))
            outputs = (packed_tokens == model.config.mask_id).nonzero().squeeze(1)
            # argmax over the whole vocabulary (the mask included) and its log-probability, no logits
            filled, filled_scores = self.native.nar_fill(
                packed_tokens, rows.positions, offsets, self.memory, outputs, exclude_id=-1
            )
            return masked, filled, filled_scores
        else:
            positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
            hidden = model.decode(
                model.embed_target(tokens, positions), tokens.shape[1], MaskSpec.padding(lengths), encoder_out
            )
            logits = model.output_logits(hidden[masked])
        best = F.log_softmax(logits.float(), dim=-1).max(-1)
        return masked, best.indices, best.values


@torch.inference_mode()
def mask_predict(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    max_iter: int = 10,
    length_beam: int = 1,
    force_max_iter: bool = False,
    native: bool = True,
    decoder_weights: str = "fp32",
) -> list[FairseqHypothesis]:
    """fairseq-generate's mask-predict on a batch; one hypothesis per sentence.

    src_tokens (B, S) int64 right-padded (as the task gives them: ``<bos> x <eos>`` for
    translation_lev), src_lengths (B,) int64; ``max_iter`` >= 0 (``max_iter + 1`` passes),
    ``length_beam`` >= 1, ``force_max_iter`` disables the adaptive stop; ``native`` False keeps the
    PyTorch passes even where the native ones could run; ``decoder_weights`` ("fp32", "bf16",
    "int8"): the native passes' weight type (not fp32: ValueError where they cannot run).
    """
    config = model.config
    num_passes = max_iter + 1
    decoder = _Decoder(model, native, decoder_weights)
    encoder_out = decoder.encode(src_tokens, src_lengths)
    candidates = length_beam_lengths(model, encoder_out, length_beam)
    batch = candidates.shape[0]
    lengths = candidates.reshape(-1).clamp(max=config.max_target_positions)
    rows = torch.arange(batch, device=lengths.device).repeat_interleave(length_beam)
    encoder_out = encoder_out.select(rows)
    decoder.set_rows(encoder_out)
    tokens = _initial_tokens(lengths, config.pad_id, config.bos_id, config.eos_id, config.mask_id)
    scores = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    active = torch.arange(len(lengths), device=lengths.device)  # the row each active row is
    finished: list[FairseqHypothesis | None] = [None] * len(lengths)

    for step in range(num_passes):
        before = tokens.clone()
        masked, new_tokens, new_scores = decoder.fill_masked(tokens, lengths, encoder_out)
        tokens[masked] = new_tokens
        scores[masked] = new_scores
        if step + 1 < num_passes:
            counts = remask_counts(lengths, step, num_passes)
            order = scores.sort(-1).indices  # ascending; bos, eos and pad score 0
            remask = torch.zeros_like(masked).scatter(
                1, order, torch.arange(tokens.shape[1], device=tokens.device)[None, :] < counts[:, None]
            )
            tokens.masked_fill_(remask, config.mask_id)
            scores.masked_fill_(remask, 0.0)
        if step == max_iter:
            done = torch.ones(len(active), dtype=torch.bool, device=tokens.device)
        elif force_max_iter:
            done = torch.zeros(len(active), dtype=torch.bool, device=tokens.device)
        else:
            done = (before == tokens).all(1)
        for index in done.nonzero().squeeze(1).tolist():
            real = tokens[index] != config.pad_id
            row_scores = scores[index][real]
            finished[int(active[index])] = FairseqHypothesis(
                tokens[index][real].tolist(), row_scores.tolist(), float(row_scores.mean()), step
            )
        if bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)
        tokens, scores, lengths, active = tokens[keep], scores[keep], lengths[keep], active[keep]
        encoder_out = encoder_out.select(keep)
        decoder.set_rows(encoder_out)

    best = []
    for sentence in range(batch):
        group = finished[sentence * length_beam : (sentence + 1) * length_beam]
        group_scores = [hypothesis.score for hypothesis in group]  # type: ignore[union-attr]
        best.append(group[group_scores.index(max(group_scores))])
    return best  # type: ignore[return-value]


@torch.inference_mode()
def ar_beam_search(
    model: JanusModel,
    src_tokens: torch.Tensor,
    src_lengths: torch.Tensor,
    beam: int = 1,
    max_len_a: float = FAIRSEQ_MAX_LEN[0],
    max_len_b: int = FAIRSEQ_MAX_LEN[1],
    native: bool = True,
    decoder_weights: str = "fp32",
) -> list[FairseqHypothesis]:
    """fairseq-generate's AR decoding (``--beam N``, its ``SequenceGenerator`` with its defaults
    ``--lenpen 1 --unkpen 0 --min-len 1 --max-len-a 0 --max-len-b 200``), from ``<bos>`` (the JANUS
    plugin) or ``</s>`` (a plain transformer: ``config.ar_start``); the best finished hypothesis
    per sentence, tokens ``y .. </s>`` (no start token), one score per token.

    src_tokens (B, S) int64 right-padded (``<bos> x <eos>``), src_lengths (B,) int64; ``native``
    and ``decoder_weights`` as ``mask_predict``.
    """
    if not isinstance(beam, int) or isinstance(beam, bool) or beam < 1:
        raise ValueError(f"beam must be an integer >= 1, got {beam!r}")
    config = model.config
    decoder = _Decoder(model, native, decoder_weights)
    batch = len(src_lengths)
    rows = torch.arange(batch, device=src_tokens.device).repeat_interleave(beam)
    encoder_out = decoder.encode(src_tokens, src_lengths).select(rows)
    decoder.set_rows(encoder_out)
    # fairseq's cap (max positions - 1); a query stream one position ahead of its content (this
    # project's models) reads one position further, so its cap is one lower
    query_ahead = config.query_position_offset if config.ar_stream == "query" else 0
    max_len = min(int(max_len_a * src_tokens.shape[1] + max_len_b), config.max_target_positions - 1 - query_ahead)
    if max_len < 1:
        raise ValueError(f"max_len_a * source width + max_len_b must allow >= 1 target token, got {max_len}")
    caches = model.new_caches(batch * beam, max_len + 1, encoder_out.states)
    row_limits = torch.full((batch * beam,), max_len + 1, dtype=torch.long, device=src_tokens.device)
    rules = BeamRules(
        config.ar_start_id, config.eos_id, config.pad_id, (config.pad_id,), min_length=1, nan_as_impossible=True
    )

    def select_rows(rows_out: EncoderOutput, origin: torch.Tensor) -> EncoderOutput:
        rows_out = rows_out.select(origin)
        decoder.set_rows(rows_out)
        return rows_out

    state = BeamRows(caches, encoder_out, select_rows, batch * beam)

    def step_logits(history: torch.Tensor, step: int) -> torch.Tensor:
        return decoder.ar_step(history[:, step], step, state.encoder, caches)

    found = finished_beam_search(step_logits, state.reorder, rules, beam, row_limits)
    return [
        FairseqHypothesis(tokens, positional, score, len(tokens) - 1)
        for tokens, positional, score in zip(found.tokens, found.positional_scores, found.scores)
    ]
