"""The decoder passes every fast decoding loop runs, in two implementations, chosen once.

A loop (``janus_fast.decoding.mask_predict``, ``.ar``, ``.speculative``) sees only
``DecoderPasses``: encode; bind the rows it decodes (each row's encoder output) and keep some of
them; a NAR pass that fills given positions; an AR step with a key/value cache (logits, or greedy
search's choice inside the pass); an AR pass over several new tokens per row appended to the
caches (speculative verification); a teacher-forced AR pass scoring whole rows (AR rescoring).

* ``NativePasses``: one native CPU call per pass (``janus_fast.native.decoder``), weights stored
  as fp32, bf16 or int8; no (rows, V) logits where the choice is made inside the pass.
* ``TorchPasses``: the PyTorch model (any device; the NAR pass over packed real positions,
  ``janus_fast.decoding.packed``).

``PassChoice`` decides which, once per (model, precision, native allowed), when a ``Translator`` is
made or a ``generate`` call starts; that is the only place that decides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from janus_fast.attention import attention_backend
from janus_fast.decoding.beam import BeamChoice
from janus_fast.decoding.options import PRECISIONS
from janus_fast.decoding.packed import PackedRows, packed_decode
from janus_fast.model import EncoderOutput, JanusModel, LayerCache
from janus_fast.native.decoder import (
    Memory,
    NativeDecoder,
    engine_held_weights,
    release_layer_weights,
    unsupported_reason,
)
from janus_fast.ops import warn_if_native_missing
from janus_fast.parameter_stamp import ParameterStamp
from janus_fast.quantize import quantize_int8


@dataclass
class GreedyRule:
    """Greedy search's choice after each of R positions: the argmax without ``banned`` (K,) int64
    ids (ties -> lowest id), or ``forced_id`` where ``forced`` (R,) bool."""

    banned: Tensor
    forced: Tensor
    forced_id: int

    def choose(self, log_probs: Tensor) -> tuple[Tensor, Tensor]:
        """(R, V) float32 log-probabilities -> the tokens (R,) int64 and their log-probabilities (R,)."""
        allowed = log_probs.index_fill(1, self.banned, float("-inf"))
        chosen = torch.where(self.forced, self.forced_id, allowed.argmax(-1))
        return chosen, log_probs.gather(1, chosen[:, None]).squeeze(1)


@dataclass
class NewTokens:
    """Several new tokens per row, appended to the rows' key/value caches (speculative
    verification): ``tokens`` (P,) int64, row r's at ``row_offsets[r] .. row_offsets[r + 1] - 1``
    (>= 1 each) from position ``cache_lengths[r]``; ``candidates`` (P,) int64 or None: a token to
    rank after each new token (-1: none)."""

    tokens: Tensor
    row_offsets: Tensor
    cache_lengths: Tensor
    candidates: Tensor | None = None


# after each new token: greedy's choice (P,) int64, its log-probability (P,) float32, and the
# candidate's log-probability (P,) float32 and rank (P,) int64 (both empty without candidates)
Verdicts = tuple[Tensor, Tensor, Tensor, Tensor]


class DecoderPasses:
    """The passes over a set of rows, each with its encoder output (``bind``, ``keep``).

    Shapes: N rows, W padded width, P packed (real) positions, M output positions, V vocabulary.
    """

    native = False

    def __init__(self, model: JanusModel) -> None:
        self.model = model
        self.encoder_out: EncoderOutput | None = None

    @property
    def rows(self) -> int:
        return 0 if self.encoder_out is None else len(self.encoder_out.lengths)

    def encode(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        """The encoder: src_tokens (B, S) int64, src_lengths (B,) int64."""
        raise NotImplementedError

    def bind(self, encoder_out: EncoderOutput, rows: Tensor | None = None) -> None:
        """Decode rows with this encoder output: row i with its sentence ``rows[i]`` (R,) int64 (e.g.
        each sentence repeated per length candidate or beam), or with sentence i (None)."""
        self.encoder_out = encoder_out if rows is None else encoder_out.select(rows)

    def keep(self, index: Tensor, caches: Sequence[LayerCache] = ()) -> None:
        """Keep rows ``index`` (R,) int64 (finished ones leave; beams reorder), of the rows' encoder
        output and of ``caches``."""
        self.reorder_caches(caches, index)
        self.bind(self.encoder_out.select(index))

    def reorder_caches(self, caches: Sequence[LayerCache], index: Tensor) -> None:
        """Keep rows ``index`` (R',) int64 of ``caches`` (``LayerCache.reorder`` of each)."""
        LayerCache.reorder_all(caches, index)

    def new_caches(self, max_len: int) -> list[LayerCache]:
        """Empty key/value caches for the bound rows, room for ``max_len`` positions."""
        return self.model.new_caches(self.rows, max_len, self.encoder_out.states)

    def nar_fill(
        self, tokens: torch.Tensor, rows: PackedRows, outputs: torch.Tensor, exclude_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One NAR pass over the real positions of ``tokens`` (N, W) int64 (``rows``: their
        packing) and, at ``outputs`` (M,) int64 indices into the packed positions, the argmax
        token without ``exclude_id`` (-1: over the whole vocabulary; ties -> lowest id) and its
        log-softmax over the whole vocabulary: tokens (M,) int64, log-probabilities (M,) float32."""
        raise NotImplementedError

    def ar_logits(self, tokens: torch.Tensor, step: int, caches: list[LayerCache]) -> torch.Tensor:
        """One AR step: tokens (N,) int64 at position ``step`` -> (N, V) logits; caches updated."""
        raise NotImplementedError

    def ar_greedy(self, tokens: Tensor, step: int, caches: list[LayerCache], rule: GreedyRule) -> tuple[Tensor, Tensor]:
        """``ar_logits`` followed by ``rule.choose``: tokens (N,) int64, log-probabilities (N,)."""
        raise NotImplementedError

    def ar_greedy_search(self, limits: Tensor, banned: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """AR greedy search over every bound row to its end in one call (``NativeDecoder.ar_greedy_search``:
        limits (N,) int64 tokens per row, eos forced at the limit; ``banned`` (K,) int64 never chosen)
        -> tokens (N, max(limits)) int64 after bos, summed log-probabilities (N,) float32, lengths
        (N,) int64; or None where these passes run it a step at a time (``ar_greedy``)."""
        return None

    def speculative_search(
        self, limits: Tensor, draft_lengths: Tensor, banned: Tensor, max_verify: int, min_draft: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """Speculative decoding with exact verification and one-iteration drafts over every bound row
        to its end in one call (``NativeDecoder.speculative_search``) -> tokens (N, max(limits)) int64
        after bos, summed log-probabilities (N,) float32, lengths (N,) int64, verification rounds (N,)
        int64; or None where these passes run its rounds one pass at a time."""
        return None

    def ar_candidates(
        self, tokens: Tensor, step: int, caches: list[LayerCache], choice: BeamChoice
    ) -> tuple[Tensor, Tensor]:
        """``ar_logits`` followed by ``choice.choose``: ids (N, k) int64, log-probabilities (N, k)."""
        return choice.choose(self.ar_logits(tokens, step, caches))

    def ar_extend(self, history: Tensor, new: NewTokens, caches: list[LayerCache], rule: GreedyRule) -> Verdicts:
        """AR passes of both streams over several new tokens per row (``NativeDecoder.ar_extend``),
        with greedy's choice after each; history (N, W) int64 the rows' tokens so far (bos first)."""
        raise NotImplementedError

    def ar_scores(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The model's AR verdict on finished rows ``<bos> y <eos>`` (N, W) int64 right-padded,
        lengths (N,) int64 >= 2: the mean P_AR log-probability of the tokens after bos (eos
        included), teacher-forced in one pass of both decoder streams -> (N,) float32."""
        raise NotImplementedError


class TorchPasses(DecoderPasses):
    """The passes as PyTorch ops of the model (any device)."""

    def encode(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        return self.model.encode(src_tokens, src_lengths)

    def nar_fill(
        self, tokens: torch.Tensor, rows: PackedRows, outputs: torch.Tensor, exclude_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = packed_decode(self.model, tokens, rows.lengths, self.encoder_out, rows)  # (P, d)
        log_probs = F.log_softmax(self.model.output_logits(hidden[outputs]).float(), dim=-1)
        allowed = log_probs
        if exclude_id >= 0:
            allowed = log_probs.clone()
            allowed[:, exclude_id] = float("-inf")
        best = allowed.argmax(-1)
        return best, log_probs.gather(1, best[:, None]).squeeze(1)

    def ar_logits(self, tokens: torch.Tensor, step: int, caches: list[LayerCache]) -> torch.Tensor:
        return self.model.ar_step(tokens, step, self.encoder_out, caches)

    def ar_greedy(self, tokens: Tensor, step: int, caches: list[LayerCache], rule: GreedyRule) -> tuple[Tensor, Tensor]:
        return rule.choose(F.log_softmax(self.ar_logits(tokens, step, caches).float(), dim=-1))

    def ar_extend(self, history: Tensor, new: NewTokens, caches: list[LayerCache], rule: GreedyRule) -> Verdicts:
        """As ``NativeDecoder.ar_extend``, recomputing each row's prefix (the caches are not used)."""
        counts = new.row_offsets[1:] - new.row_offsets[:-1]
        ends = new.cache_lengths + counts  # content tokens per row: prefix + new
        row_of = torch.arange(len(counts), device=history.device).repeat_interleave(counts)
        index = torch.arange(len(new.tokens), device=history.device) - new.row_offsets[:-1][row_of]
        at = new.cache_lengths[row_of] + index  # each new token's position
        content = history[:, : int(ends.max()) + 1].clone()
        content[row_of, at] = new.tokens
        hidden = self.model.ar_hidden(content, ends + 1, self.encoder_out)  # row i predicts position i + 1
        log_probs = F.log_softmax(self.model.output_logits(hidden[row_of, at]).float(), dim=-1)
        best, best_log_probs = rule.choose(log_probs)
        candidates = new.candidates
        if candidates is None:
            empty = torch.empty(0, dtype=torch.float32, device=best.device)
            return best, best_log_probs, empty, empty.long()
        some = candidates.clamp(min=0)[:, None]
        allowed = log_probs.index_fill(1, rule.banned, float("-inf"))
        ranks = (allowed > allowed.gather(1, some)).sum(1)
        unranked = (candidates < 0) | torch.isin(candidates, rule.banned) | ~log_probs.isfinite().all(1)
        ranks = torch.where(unranked, log_probs.shape[1], ranks)
        candidate_log_probs = torch.where(candidates < 0, float("nan"), log_probs.gather(1, some).squeeze(1))
        return best, best_log_probs, candidate_log_probs, ranks

    def ar_scores(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model.ar_scores(tokens, lengths, self.encoder_out)


class NativePasses(DecoderPasses):
    """The passes as one native CPU call each (``NativeDecoder``)."""

    native = True

    def __init__(self, model: JanusModel, decoder: NativeDecoder) -> None:
        super().__init__(model)
        self.decoder = decoder
        self.memory: Memory | None = None  # the encoder memory, one entry per sentence bound
        self.memory_rows: Tensor | None = None  # (N,) int64: each row's entry (None: row i has entry i)

    def encode(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        return self.decoder.encode(src_tokens, src_lengths)

    def bind(self, encoder_out: EncoderOutput, rows: Tensor | None = None) -> None:
        """As ``DecoderPasses.bind``, without repeating the memory per row: the native ops take each
        row's sentence (``memory_rows``), so length candidates and beams share one copy."""
        self.encoder_out = None  # the native passes read the memory alone
        self.memory = NativeDecoder.memory(encoder_out)
        self.memory_rows = rows

    @property
    def rows(self) -> int:
        if self.memory_rows is not None:
            return len(self.memory_rows)
        return 0 if self.memory is None else len(self.memory[2])

    def keep(self, index: Tensor, caches: Sequence[LayerCache] = ()) -> None:
        """As ``DecoderPasses.keep``, of the rows' memory entries (no memory is copied)."""
        self.reorder_caches(caches, index)
        self.memory_rows = index if self.memory_rows is None else self.memory_rows.index_select(0, index)

    def reorder_caches(self, caches: Sequence[LayerCache], index: Tensor) -> None:
        """In place, in one native call (``NativeDecoder.reorder_caches``)."""
        if caches:
            NativeDecoder.reorder_caches(caches, index)

    def new_caches(self, max_len: int) -> list[LayerCache]:
        return self.model.new_caches(self.rows, max_len, self.memory[0][0])

    def nar_fill(
        self, tokens: torch.Tensor, rows: PackedRows, outputs: torch.Tensor, exclude_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        packed_tokens = tokens.reshape(-1).index_select(0, rows.index)
        return self.decoder.nar_fill(
            packed_tokens, rows.positions, rows.offsets, self.memory, outputs, exclude_id, self.memory_rows
        )

    def ar_logits(self, tokens: torch.Tensor, step: int, caches: list[LayerCache]) -> torch.Tensor:
        return self.decoder.ar_step(tokens, step, self.memory, caches, self.memory_rows)

    def ar_greedy(self, tokens: Tensor, step: int, caches: list[LayerCache], rule: GreedyRule) -> tuple[Tensor, Tensor]:
        return self.decoder.ar_greedy_step(
            tokens, step, self.memory, caches, rule.banned, rule.forced, rule.forced_id, self.memory_rows
        )

    def ar_greedy_search(self, limits: Tensor, banned: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        config = self.model.config
        ids = (config.bos_id, config.eos_id, config.pad_id)
        return self.decoder.ar_greedy_search(self.memory, limits, banned, *ids, self.memory_rows)

    def speculative_search(
        self, limits: Tensor, draft_lengths: Tensor, banned: Tensor, max_verify: int, min_draft: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        config = self.model.config
        ids = (config.bos_id, config.eos_id, config.pad_id)
        return self.decoder.speculative_search(
            self.memory, limits, draft_lengths, banned, ids, max_verify, min_draft, self.memory_rows
        )

    def ar_candidates(
        self, tokens: Tensor, step: int, caches: list[LayerCache], choice: BeamChoice
    ) -> tuple[Tensor, Tensor]:
        return self.decoder.ar_topk_step(
            tokens, step, self.memory, caches, choice.banned, choice.forced, choice.forced_id, choice.k,
            choice.nan_as_impossible, self.memory_rows,
        )  # fmt: skip

    def ar_extend(self, history: Tensor, new: NewTokens, caches: list[LayerCache], rule: GreedyRule) -> Verdicts:
        return self.decoder.ar_extend(
            new.tokens, new.row_offsets, new.cache_lengths, self.memory, caches, rule.banned, rule.forced,
            rule.forced_id, new.candidates, self.memory_rows,
        )  # fmt: skip

    def ar_scores(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        contexts = PackedRows(lengths - 1, tokens.shape[1])  # each row's content: <bos> y (eos is only predicted)
        flat = tokens.reshape(-1)
        log_probs = self.decoder.ar_scores(
            flat.index_select(0, contexts.index),
            contexts.positions,
            contexts.offsets,
            self.memory,
            flat.index_select(0, contexts.index + 1),
            self.memory_rows,
        )
        rows = torch.arange(len(lengths), device=lengths.device).repeat_interleave(lengths - 1)
        return torch.zeros(len(lengths), dtype=torch.float32, device=lengths.device).index_add_(0, rows, log_probs) / (
            lengths - 1
        )


class PassChoice:
    """Which passes decode a model at a decode precision, decided once (``__init__``).

    precision "fp32", "bf16" or "int8"; ``native`` False asks for the PyTorch passes (the reference
    decoder). Native passes wherever ``unsupported_reason`` allows, their weights stored in the
    precision (bf16 / int8 products where the CPU has the instructions); else PyTorch passes: on
    the model itself (fp32), on a dynamic-int8 copy (int8, CPU only; ``janus_fast.quantize``), or
    a ValueError (bf16 has no PyTorch passes). The PyTorch int8 layers quantize a batch's
    activations with one range, so there a sentence's int8 tokens may depend on its batch; the
    native passes' never do (each row quantized alone where the CPU has VNNI, int8 weights widened
    to fp32 where it has not).
    """

    def __init__(self, model: JanusModel, precision: str = "fp32", native: bool = True) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        attention_backend()  # a wrong value is refused whether or not these passes read it
        self.model = model
        self.precision = precision
        parameter = next(model.parameters())
        if precision != "fp32" and parameter.device.type != "cpu":
            raise ValueError(f"precision {precision!r} runs on the CPU only")
        if precision != "fp32" and parameter.dtype != torch.float32:
            raise ValueError(f"precision {precision!r} needs a float32 model; its parameters are {parameter.dtype}")
        reason = unsupported_reason(model) if native else None
        self.native = native and reason is None
        if native and not self.native and parameter.device.type == "cpu":  # the extension did not load: say so
            warn_if_native_missing("decoding")
        if precision == "bf16" and not self.native:
            if not native:
                raise ValueError(
                    "precision 'bf16' needs the engine's native CPU decoder, not the reference decoder: "
                    "use --decoder engine (decoder='engine')"
                )
            raise ValueError(
                f"precision 'bf16' needs the engine's native CPU decoder, which cannot run this model: {reason}"
            )
        # the PyTorch dynamic int8 copy, made on first use and again when the model's weights change
        self._int8_model: JanusModel | None = None
        self._int8_stamp: ParameterStamp | None = None
        # int8 runs PyTorch's dynamic int8 layers only without the native passes: their one activation
        # range per batch makes a sentence's tokens depend on its batch (the native passes quantize
        # each row alone, or only store int8 weights where the CPU has no VNNI)
        self.dynamic_int8 = precision == "int8" and not self.native
        self._check_held()

    def _check_held(self) -> None:
        """ValueError where the model's layer weights were released to the engine at another
        precision, or these passes need the PyTorch model (checked again on every batch: a
        translator made before the release shares the model)."""
        held = engine_held_weights(self.model)
        if held is not None and (not self.native or self.precision != held):
            raise ValueError(
                f"this model's layer weights are held only by the engine's native passes, as {held} (a "
                f"Translator made with release_weights=True): it decodes with decoder='engine' and "
                f"precision={held!r} only; load it again to decode otherwise"
            )

    @property
    def can_release_weights(self) -> bool:
        """Whether ``release_weights`` can free the model's fp32 layer matrices: these passes never
        need the PyTorch model."""
        return self.native and engine_held_weights(self.model) is None

    def release_weights(self) -> None:
        """Free the model's own fp32 layer matrices once the native passes hold them at this
        precision (``janus_fast.native.decoder.release_layer_weights``): the weights in memory once.
        ValueError where the PyTorch model decodes (no native passes)."""
        if not self.native:
            raise ValueError(
                f"release_weights: precision {self.precision!r} decodes here with the PyTorch model, which needs them"
            )
        release_layer_weights(self.model, self.precision)

    @property
    def torch_model(self) -> JanusModel:
        """The model the PyTorch passes and the reference decoders run: the model, or its int8 copy
        (made again after any change of the model's weights, as the native passes' conversion)."""
        self._check_held()
        if not self.dynamic_int8:
            return self.model
        if self._int8_model is None or self._int8_stamp is None or self._int8_stamp.changed(self.model):
            self._int8_stamp = ParameterStamp(self.model)
            self._int8_model = quantize_int8(self.model)
        return self._int8_model

    def passes(self) -> DecoderPasses:
        """The passes for a batch: native (the model converted at this precision) or PyTorch's."""
        self._check_held()
        if self.native:
            try:
                decoder = NativeDecoder.for_model(self.model, self.precision)
            except RuntimeError:
                reason = unsupported_reason(self.model)
                if reason is None:
                    raise
                raise ValueError(  # e.g. model.half() on a Translator's model
                    f"the model changed after its decoding passes were chosen ({reason}): make a new Translator "
                    "for it (generate() chooses the passes on every call)"
                ) from None
            return NativePasses(self.model, decoder)
        return TorchPasses(self.torch_model)
