"""Whole encoder and decoder passes in one native call each (``csrc/cpu/decoder_ops.cpp`` and the passes
it names), for the CPU engine.

The PyTorch decoder spends most of a small batch's time dispatching ~100 small ops per layer and
running general GEMMs on 1-4 rows. ``NativeDecoder`` hands the whole AR step (both streams, key/
value caches updated in place) or the whole mask-predict pass (packed rows, logits of the
requested positions only) to C++: fused residuals, GELU and layer norms, attention over the short
sequences, and matrix products written for few rows (``csrc/core/small_gemm.h``, AVX-512 / AVX2 /
plain C++ chosen from what the CPU reports). The PyTorch model stays the reference; the tests
compare logits and tokens.

Weights are converted once per model (and again whenever a parameter changes) into the layout
the kernels read, in one of three storage types: ``fp32`` (same numbers as the model), ``bf16``
(weights rounded to bfloat16, half the bytes to stream) or ``int8`` (per-output-channel symmetric
int8 with a float32 scale, a quarter). Activations are float32 and products accumulate in float32,
except where the CPU has a dot-product instruction for the type: ``bf16`` on AVX-512 BF16 rounds the
activations to bfloat16 (twice the multiply-adds per instruction), and ``int8`` on AVX-512 VNNI
quantizes each row of activations to uint8 between its min and max and sums the products in int32
(four times), the offset and scales applied after.

The weights are named by the dataclasses of ``janus_fast/native/weights.py`` (``DecoderWeights``,
``EncoderWeights``: embeddings, final norm, per layer its self-attention, cross-attention and FFN
sublayers), every matrix as panels (``pack_panels``) with its scale and bias, and a model without final
norms passes empty tensors for them. The ops take them flattened in field order
(``NativeDecoder.tensors``, ``NativeDecoder.encoder_tensors``; ``weights.flatten``), and
``csrc/cpu/decoder_weights.h`` reads them back by the same names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from janus_fast.model import EncoderOutput, JanusModel, LayerCache
from janus_fast.native.cpu_features import has_avx512_vnni
from janus_fast.native.interrupts import raise_pending
from janus_fast.native.weights import (
    DecoderLayerWeights,
    DecoderWeights,
    EncoderLayerWeights,
    EncoderWeights,
    FeedForwardWeights,
    Norm,
    PackedMatrix,
    SelfAttentionWeights,
    flatten,
)
from janus_fast.ops import uses_native_ops
from janus_fast.parameter_stamp import MODEL_CACHE_LOCK, ParameterStamp

# a batch's cross-attention keys and values per decoder layer (float32, contiguous) and its source lengths
Memory = tuple[list[Tensor], list[Tensor], Tensor]
WEIGHT_TYPES = ("fp32", "bf16", "int8")
_EMPTY = torch.empty(0, dtype=torch.float32)


ISA_NAMES = ("scalar", "avx2", "avx512", "avx512_bf16", "amx")


def check_isa_env() -> None:
    """Raise ValueError unless ``JANUS_FAST_ISA`` is unset or one of ``ISA_NAMES``: the native
    decoder (``csrc/cpu/decoder_passes.cpp``) caps its instruction set by it and ignores any other
    value, so a typo would silently leave the CPU's own."""
    value = os.environ.get("JANUS_FAST_ISA")
    if value is not None and value not in ISA_NAMES:
        raise ValueError(f"JANUS_FAST_ISA={value!r}: expected one of {', '.join(ISA_NAMES)}")


def native_decoder_available() -> bool:
    """True when the extension has the decoder ops (built with this version of the sources);
    ValueError for a ``JANUS_FAST_ISA`` the native decoder does not know (``check_isa_env``)."""
    check_isa_env()
    return uses_native_ops() and hasattr(torch.ops.janus_fast, "decoder_ar_step")


def unsupported_reason(model: JanusModel) -> str | None:
    """Why ``model`` cannot run on the native decoder, or None if it can."""
    if not native_decoder_available():
        return "the native extension (with the decoder ops) is not built"
    parameter = next(model.parameters())
    if parameter.device.type != "cpu":
        return "the native decoder runs on the CPU only"
    if parameter.dtype != torch.float32:
        return f"the model's parameters are {parameter.dtype}, not float32"
    if model.training:
        return "the model is in training mode"
    if model.output_projection is not None:
        return "the model has a separate (quantized) output projection"
    for module in model.decoder_layers.modules():
        if isinstance(module, nn.Linear) and type(module) is not nn.Linear:
            return f"the decoder has {type(module).__name__} layers"
    return None


def cpu_isa() -> str:
    """The instruction set the native matrix products use here, from what the CPU reports:
    amx (AVX-512 BF16 and VNNI, and the AMX tile products: Intel Xeon since Sapphire Rapids, on Linux),
    avx512_bf16, avx512, avx2 or scalar (JANUS_FAST_ISA caps it)."""
    return torch.ops.janus_fast.decoder_isa() if native_decoder_available() else "none"


PANEL = 64  # output columns per stored panel (csrc/core/small_gemm.h)


def pack_panels(weight: torch.Tensor) -> torch.Tensor:
    """nn.Linear weight (out, in) -> panels (ceil(out / 64), in, 64): panel p holds columns
    64p .. 64p + 63 of the (in, out) transpose, zero-padded past ``out``."""
    out_features, in_features = weight.shape
    padded = -(-out_features // PANEL) * PANEL
    wide = torch.zeros(padded, in_features, dtype=weight.dtype)
    wide[:out_features] = weight
    return wide.view(padded // PANEL, PANEL, in_features).transpose(1, 2).contiguous()


def pack_groups(weight: torch.Tensor, group: int) -> torch.Tensor:
    """nn.Linear weight (out, in) -> (ceil(out / 64), ceil(in / group), 64, group), same dtype: in
    panel p, row r holds (w[group r][n] .. w[group r + group - 1][n]) of the (in, out) transpose for
    its 64 columns n, zero-padded. The layout of a dot-product instruction: ``group`` 2 for bfloat16
    (AVX-512 BF16), 4 for int8 (AVX-512 VNNI)."""
    out_features, in_features = weight.shape
    padded_out, padded_in = -(-out_features // PANEL) * PANEL, -(-in_features // group) * group
    wide = torch.zeros(padded_out, padded_in, dtype=weight.dtype)
    wide[:out_features, :in_features] = weight
    return wide.view(padded_out // PANEL, PANEL, padded_in // group, group).permute(0, 2, 1, 3).contiguous()


def int8_computes_in_int8() -> bool:
    """True where int8 weights also run int8 products (the CPU reports AVX-512 VNNI and the native
    products use AVX-512): each row of activations is then quantized to uint8, else only weights are
    int8."""
    return cpu_isa() in ("avx512", "avx512_bf16", "amx") and has_avx512_vnni()


def bf16_computes_in_bf16() -> bool:
    """True where bf16 weights also run bf16 dot products (the CPU reports AVX-512 BF16): the
    activations are then rounded to bfloat16 before each product, else only weights are rounded."""
    return cpu_isa() in ("avx512_bf16", "amx")


def _matrix(weight: torch.Tensor, bias: torch.Tensor | None, weight_type: str) -> PackedMatrix:
    """nn.Linear weight (out, in) -> panels, scale (out,) or empty, bias (out,) or empty."""
    w = weight.detach().float()
    bias_tensor = _EMPTY if bias is None else bias.detach().float().contiguous()
    if weight_type == "fp32":
        return PackedMatrix(pack_panels(w), _EMPTY, bias_tensor)
    if weight_type == "bf16":
        if bf16_computes_in_bf16():
            return PackedMatrix(pack_groups(w.to(torch.bfloat16), 2), _EMPTY, bias_tensor)
        return PackedMatrix(pack_panels(w.to(torch.bfloat16)), _EMPTY, bias_tensor)
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    quantized = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    if int8_computes_in_int8():  # scales then the column sums the uint8 activations' offset needs
        column_sums = quantized.sum(dim=1, dtype=torch.int32).float()
        return PackedMatrix(pack_groups(quantized, 4), torch.cat([scale, column_sums]).contiguous(), bias_tensor)
    return PackedMatrix(pack_panels(quantized), scale.contiguous(), bias_tensor)


def _vector(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous()


def _norm(module: nn.Module) -> Norm:
    if isinstance(module, nn.Identity):  # no final norm: empty tensors
        return Norm(_EMPTY, _EMPTY)
    return Norm(_vector(module.weight), _vector(module.bias))


def _linear(linear: nn.Linear, weight_type: str) -> PackedMatrix:
    return _matrix(linear.weight, linear.bias, weight_type)


def _self_attention(layer: nn.Module, weight_type: str) -> SelfAttentionWeights:
    attention = layer.self_attn
    return SelfAttentionWeights(
        _norm(layer.norm1),
        _linear(attention.q_proj, weight_type),
        _linear(attention.kv_proj, weight_type),
        _linear(attention.out_proj, weight_type),
    )


def _feed_forward(norm: nn.Module, layer: nn.Module, weight_type: str) -> FeedForwardWeights:
    return FeedForwardWeights(_norm(norm), _linear(layer.ffn.fc1, weight_type), _linear(layer.ffn.fc2, weight_type))


def decoder_weights(model: JanusModel, weight_type: str) -> DecoderWeights:
    """The decoder ops' weights of ``model``, matrices stored as ``weight_type``."""
    layers = [
        DecoderLayerWeights(
            _self_attention(layer, weight_type),
            _norm(layer.norm2),
            _linear(layer.cross_attn.q_proj, weight_type),
            _linear(layer.cross_attn.out_proj, weight_type),
            _feed_forward(layer.norm3, layer, weight_type),
        )
        for layer in model.decoder_layers
    ]
    return DecoderWeights(
        _vector(model.embed_tokens.weight),
        _vector(model.embed_target_positions.weight),
        _norm(model.decoder_norm),
        _matrix(model.embed_tokens.weight, None, weight_type),
        layers,
    )


def encoder_weights(model: JanusModel, weight_type: str) -> EncoderWeights:
    """``encoder_forward``'s weights of ``model``: the encoder and each decoder layer's cross-attention
    keys/values, matrices stored as ``weight_type``."""
    layers = [
        EncoderLayerWeights(_self_attention(layer, weight_type), _feed_forward(layer.norm2, layer, weight_type))
        for layer in model.encoder_layers
    ]
    return EncoderWeights(
        _vector(model.embed_tokens.weight),
        _vector(model.embed_source_positions.weight),
        _norm(model.encoder_norm),
        layers,
        [_linear(layer.cross_attn.kv_proj, weight_type) for layer in model.decoder_layers],
    )


class NativeDecoder:
    """The decoder of ``model`` with weights stored as ``weight_type`` for the native passes."""

    def __init__(self, model: JanusModel, weight_type: str = "fp32") -> None:
        if weight_type not in WEIGHT_TYPES:
            raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
        reason = unsupported_reason(model)
        if reason is not None:
            raise RuntimeError(f"NativeDecoder: {reason}")
        config = model.config
        self.weight_type = weight_type
        self.num_heads = config.num_heads
        self.embed_scale = float(model.embed_scale)
        self.mask_id = config.mask_id
        self.query_position_offset = config.query_position_offset
        # False: a plain transformer decoder, whose content row predicts (JanusConfig.ar_stream)
        self.query_stream = config.ar_stream == "query"
        self.post_norm = not config.normalize_before
        self.relu = config.activation == "relu"
        # what the weights are converted from (kept alive, so their ids stay theirs): for_model
        # compares the model's parameters with them on every call
        self.stamp = ParameterStamp(model)

        # the weights by name (janus_fast/native/weights.py) and flattened as the ops take them
        self.weights = decoder_weights(model, weight_type)
        self.tensors = flatten(self.weights)
        self.encoder_weights = encoder_weights(model, weight_type)
        self.encoder_tensors = flatten(self.encoder_weights)
        self.num_encoder_layers = len(model.encoder_layers)

    @staticmethod
    def for_model(model: JanusModel, weight_type: str = "fp32") -> NativeDecoder:
        """The model's native decoder, converted on first use and again after any parameter update:
        in-place (optimizer steps, ``load_state_dict``, ``p.data.copy_``) or by new tensors
        (``load_state_dict(..., assign=True)``, ``p.data = ...``). Checked on every call, without
        reading every weight: ``janus_fast.parameter_stamp.ParameterStamp``."""
        with MODEL_CACHE_LOCK:  # one thread converts; another's copy of the model never sees the cache grow
            return NativeDecoder._cached_for_model(model, weight_type)

    @staticmethod
    def _cached_for_model(model: JanusModel, weight_type: str) -> NativeDecoder:
        cache: dict[str, NativeDecoder] = model.__dict__.setdefault("_native_decoders", {})
        decoder = cache.get(weight_type)
        held = engine_held_weights(model)
        if held is not None:  # the layers' fp32 matrices are gone: only the decoder made then can run
            if decoder is None:
                raise ValueError(
                    f"this model's layer weights are held only by the engine, as {held} "
                    f"(release_layer_weights); it cannot decode with {weight_type} weights"
                )
            if decoder.stamp.changed(model):
                raise ValueError(
                    "this model's weights changed after its layer weights were released to the engine "
                    "(release_weights): the engine cannot convert them again; load the model again"
                )
            return decoder
        if decoder is None or decoder.stamp.changed(model):
            decoder = cache[weight_type] = NativeDecoder(model, weight_type)
        return decoder

    def encode(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        """``JanusModel.encode`` in one native call: src_tokens (B, S) int64, src_lengths (B,) int64.

        States and cross-attention keys/values at padded positions are zeros (the model computes
        values there that nothing reads).
        """
        states, *memory = torch.ops.janus_fast.encoder_forward(
            self.encoder_tensors,
            self.num_encoder_layers,
            self.num_heads,
            self.embed_scale,
            self.post_norm,
            self.relu,
            src_tokens,
            src_lengths,
        )
        return EncoderOutput(states, src_lengths, list(zip(memory[0::2], memory[1::2])))

    @staticmethod
    def memory(encoder_out: EncoderOutput) -> Memory:
        """The cross-attention keys and values per layer as contiguous float32, and the lengths."""
        keys = [k.float().contiguous() for k, _ in encoder_out.memory_kv]
        values = [v.float().contiguous() for _, v in encoder_out.memory_kv]
        return keys, values, encoder_out.lengths

    @staticmethod
    def select_memory(memory: Memory, index: Tensor) -> Memory:
        """Rows ``index`` (R,) int64 of a ``memory`` (e.g. the sentences still decoding)."""
        keys, values, lengths = memory
        return [k.index_select(0, index) for k in keys], [v.index_select(0, index) for v in values], lengths[index]

    @staticmethod
    def reorder_caches(caches: Sequence[LayerCache], index: Tensor) -> None:
        """``LayerCache.reorder`` of every cache in one native call, in place (``reorder_caches_``):
        keep rows ``index`` (R',) int64 (a beam search's reorder; R' < R drops the rows of finished
        sentences), reading and writing only the rows that change, once."""
        for length in sorted({cache.length for cache in caches}):  # (one length in every decoding loop)
            same = [cache for cache in caches if cache.length == length]
            tensors = [tensor for cache in same for tensor in (cache.keys, cache.values)]
            torch.ops.janus_fast.reorder_caches_(tensors, index, length)
        for cache in caches:
            cache.keys, cache.values = cache.keys[: len(index)], cache.values[: len(index)]

    def ar_step(
        self, tokens: Tensor, step: int, memory: Memory, caches: list[LayerCache], memory_rows: Tensor | None = None
    ) -> Tensor:
        """``JanusModel.ar_step``: tokens (B,) int64 at position ``step`` -> (B, V) float32 logits.

        ``memory`` is ``NativeDecoder.memory(encoder_out)``: one entry per row, or per sentence with
        ``memory_rows`` (B,) int64 the entry of each row (every op takes it: a sentence's beams or
        length candidates share its entry); the caches (float32, from ``model.new_caches``) get this
        step's keys/values at index ``step``.
        """
        return self._step(torch.ops.janus_fast.decoder_ar_step, tokens, step, memory, caches, memory_rows=memory_rows)

    def ar_greedy_step(
        self, tokens: Tensor, step: int, memory: Memory, caches: list[LayerCache], excluded_ids: Tensor,
        forced: Tensor, forced_id: int, memory_rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``ar_step`` followed by greedy search's choice, without the (B, V) logits: per sentence
        the argmax over the vocabulary without ``excluded_ids`` (K,) int64 (ties -> lowest id), or
        ``forced_id`` where ``forced`` (B,) bool is set, and that token's log-softmax over the whole
        vocabulary. Returns tokens (B,) int64 and log-probabilities (B,) float32.
        """
        op = torch.ops.janus_fast.decoder_ar_greedy
        return self._step(op, tokens, step, memory, caches, excluded_ids, forced, forced_id, memory_rows=memory_rows)

    def ar_greedy_search(
        self, memory: Memory, limits: Tensor, excluded_ids: Tensor, bos_id: int, eos_id: int, pad_id: int,
        memory_rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """AR greedy search to its end in one native call: ``ar_greedy_step`` for every step, each
        row from ``bos_id`` until it chooses ``eos_id`` (forced at its ``limits`` (B,) int64 >= 1-th
        token; ``excluded_ids`` (K,) int64 never chosen), finished rows leaving the pass; the
        key/value caches live inside the call. The tokens and scores of the same steps run one
        call at a time (``janus_fast.decoding.ar.greedy_steps``).

        Returns tokens (B, max(limits)) int64 after bos (``pad_id`` after a row's eos), the summed
        log-probability of each row's tokens (B,) float32 (eos included) and their count (B,) int64.
        """
        max_steps = int(limits.max()) if len(limits) else 0
        found = torch.ops.janus_fast.decoder_ar_greedy_search(
            *self._decoder_arguments(), self.mask_id, self.query_position_offset, self.query_stream,
            *memory, limits, max_steps, excluded_ids, bos_id, eos_id, pad_id, memory_rows=memory_rows,
        )  # fmt: skip
        raise_pending()  # a signal handler's exception that stopped the search (its outputs are partial)
        return found

    def speculative_search(
        self, memory: Memory, limits: Tensor, draft_lengths: Tensor, excluded_ids: Tensor, ids: tuple[int, int, int],
        max_verify: int, min_draft: int, memory_rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        """Speculative decoding with exact verification to its end in one native call
        (``janus_fast.decoding.speculative.speculative_greedy``'s rounds with one draft iteration:
        ``decoder_nar_fill``'s draft and ``ar_extend``'s verification inside, the key/value caches too).
        limits (B,) int64 >= 1 tokens per row, eos forced at the limit; draft_lengths (B,) int64 the
        first round's draft length (bos .. eos, in [0, limit + 1]); excluded_ids (K,) int64 never
        chosen by AR; ids = (bos_id, eos_id, pad_id).

        Returns AR greedy's tokens (B, max(limits)) int64 after bos (pad after eos), the summed
        log-probabilities (B,) float32 (eos included), the counts (B,) int64 and the verification
        rounds of each row (B,) int64.
        """
        if not self.query_stream:
            raise ValueError("speculative decoding runs the two-stream pass; this model is a plain transformer")
        max_steps = int(limits.max()) if len(limits) else 0
        found = torch.ops.janus_fast.decoder_speculative_search(
            *self._decoder_arguments(), self.mask_id, self.query_position_offset, *memory, limits, draft_lengths,
            max_steps, excluded_ids, *ids, max_verify, min_draft, memory_rows=memory_rows,
        )  # fmt: skip
        raise_pending()  # a signal handler's exception that stopped the search (its outputs are partial)
        return found

    def ar_topk_step(
        self, tokens: Tensor, step: int, memory: Memory, caches: list[LayerCache], excluded_ids: Tensor,
        forced: Tensor, forced_id: int, k: int, nan_as_impossible: bool, memory_rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """``ar_step`` followed by a beam search step's choice, without the (B, V) logits: per row the
        min(k, V) tokens of largest log-softmax outside ``excluded_ids`` (K,) int64 (ties -> lowest
        id), or ``forced_id`` alone where ``forced`` (B,) bool is set (the other entries -inf); rows
        with NaN or infinities as ``janus_fast.decoding.beam.BeamChoice.choose``. Returns ids (B,
        k') int64 and log-probabilities (B, k') float32, best first.
        """
        choice = (excluded_ids, forced, forced_id, k, nan_as_impossible)
        return self._step(
            torch.ops.janus_fast.decoder_ar_topk, tokens, step, memory, caches, *choice, memory_rows=memory_rows
        )

    def ar_extend(
        self, tokens: Tensor, row_offsets: Tensor, cache_lengths: Tensor, memory: Memory, caches: list[LayerCache],
        excluded_ids: Tensor, forced: Tensor, forced_id: int, candidates: Tensor | None = None,
        memory_rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        """AR passes of both streams over several new tokens per sentence, each sentence from its own
        cache length, with greedy search's choice after every new token (``ar_greedy_step``'s rules,
        ``forced`` per new token): the verification of speculative decoding.

        tokens (P,) int64: sentence r's new tokens at ``row_offsets[r] .. row_offsets[r + 1] - 1``
        (>= 1 each), the i-th at position ``cache_lengths[r] + i``; row_offsets (N + 1,) int64;
        cache_lengths (N,) int64: positions already in sentence r's caches; forced (P,) bool.
        The caches get the new tokens' keys/values (a later call counts the ones it keeps in its
        cache_lengths). Returns tokens (P,) int64 and log-probabilities (P,) float32: the greedy
        choice of the position after each new token, equal to ``ar_greedy_step`` run one token at a
        time; then, for ``candidates`` (P,) int64 (-1: none), each candidate's log-probability (P,)
        float32 at that position and its rank (P,) int64 (ids outside ``excluded_ids`` with a larger
        logit; V for an excluded candidate or none), both empty without candidates.
        """
        written = int((cache_lengths + (row_offsets[1:] - row_offsets[:-1])).max()) if len(tokens) else 0
        for cache in caches:
            cache.reserve(written)
        candidates = candidates if candidates is not None else torch.empty(0, dtype=torch.long)
        chosen = torch.ops.janus_fast.decoder_ar_extend(
            *self._decoder_arguments(), self.mask_id, self.query_position_offset, self.query_stream,
            tokens, row_offsets, cache_lengths, *memory, *_cache_tensors(caches),
            excluded_ids, forced, forced_id, candidates, memory_rows=memory_rows,
        )  # fmt: skip
        for cache in caches:  # every position written so far (reorders keep them all)
            cache.length = max(cache.length, written)
        return chosen

    def _step(
        self, op: object, tokens: Tensor, step: int, memory: Memory, caches: list[LayerCache], *choice: object,
        memory_rows: Tensor | None,
    ) -> object:  # fmt: skip
        """One AR step op (``decoder_ar_step`` / ``_greedy`` / ``_topk``) with its ``choice``
        arguments; the caches then count the step."""
        out = op(*self._ar_step_arguments(tokens, step, memory, caches), *choice, memory_rows=memory_rows)
        for cache in caches:
            cache.length = step + 1
        return out

    def _ar_step_arguments(self, tokens: Tensor, step: int, memory: Memory, caches: list[LayerCache]) -> tuple:
        """The arguments of the AR step ops: the decoder's, the step's tokens, memory and caches
        (with room made for this step's keys/values)."""
        for cache in caches:
            cache.reserve(step + 1)
        return (
            *self._decoder_arguments(), self.mask_id, self.query_position_offset, self.query_stream,
            tokens, step, *memory, *_cache_tensors(caches),
        )  # fmt: skip

    def _decoder_arguments(self) -> tuple:
        """The leading arguments of the decoder ops: weights, heads, embedding scale, wiring."""
        return self.tensors, self.num_heads, self.embed_scale, self.post_norm, self.relu

    def nar_logits(
        self, tokens: Tensor, positions: Tensor, row_offsets: Tensor, memory: Memory, output_positions: Tensor,
        memory_rows: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """Content-stream logits of packed rows, as ``model.nar_logits`` at the same positions.

        tokens, positions (P,) int64: the real positions of N rows, row by row; row_offsets (N + 1,)
        int64 where each row starts; memory per row (or per sentence with ``memory_rows``, as
        ``ar_step``); output_positions (M,) int64 indices into P. Returns (M, V) float32.
        """
        rows = (tokens, positions, row_offsets, *memory, output_positions)
        return torch.ops.janus_fast.decoder_nar_pass(*self._decoder_arguments(), *rows, memory_rows=memory_rows)

    def nar_fill(
        self, tokens: Tensor, positions: Tensor, row_offsets: Tensor, memory: Memory, output_positions: Tensor,
        exclude_id: int, memory_rows: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Mask-predict's fill at ``output_positions`` without the (M, V) logits: the argmax token
        over the vocabulary without ``exclude_id`` (-1: over all of it, fairseq's fill; ties ->
        lowest id) and its log-softmax over the whole vocabulary, as ``nar_logits`` followed by
        ``mask_predict_step``'s step 1.

        Arguments as ``nar_logits``; returns tokens (M,) int64 and scores (M,) float32.
        """
        rows = (tokens, positions, row_offsets, *memory, output_positions)
        return torch.ops.janus_fast.decoder_nar_fill(
            *self._decoder_arguments(), *rows, exclude_id, memory_rows=memory_rows
        )

    def ar_scores(
        self, tokens: Tensor, positions: Tensor, row_offsets: Tensor, memory: Memory, targets: Tensor,
        memory_rows: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        """Teacher-forced P_AR log-probabilities of packed rows, as ``model.ar_hidden`` followed by a
        log-softmax: tokens, positions (P,) int64 the content tokens of N rows, row by row (each
        sees its row up to itself); row_offsets (N + 1,) int64; memory per row; targets (P,) int64
        the token to score after each position. Returns (P,) float32 log-probabilities. JANUS
        models only (the two-stream pass; AR rescoring of NAR candidates).
        """
        if not self.query_stream:
            raise ValueError("ar_scores runs the two-stream pass; this model is a plain transformer")
        rows = (tokens, positions, row_offsets, *memory, targets)
        return torch.ops.janus_fast.decoder_ar_score(
            *self._decoder_arguments(), self.mask_id, self.query_position_offset, *rows, memory_rows=memory_rows
        )


_HELD_KEY = "_engine_held_weights"  # model.__dict__ key: the weight type its layers are held as


def engine_held_weights(model: nn.Module) -> str | None:
    """The weight type the native decoder holds ``model``'s layer matrices as, when
    ``release_layer_weights`` freed the model's own (None: the model still has them)."""
    return model.__dict__.get(_HELD_KEY)


def release_layer_weights(model: JanusModel, weight_type: str) -> NativeDecoder:
    """Convert ``model`` for the native passes at ``weight_type``, then free its own copy of every
    matrix the conversion stored (the encoder's and decoder's linear layers): they become meta tensors
    (shape kept, no memory), so the model's weights are held once, at ``weight_type`` (int8: a
    quarter of the fp32 bytes). Embeddings, layer norms, biases and the length head stay (the
    native passes read the embeddings and vectors in place). From then on the model decodes only
    through this decoder: its PyTorch forward, the reference decoder and another weight type raise.
    Returns the decoder."""
    if engine_held_weights(model) is not None:
        raise ValueError(f"the model's layer weights are already held by the engine, as {engine_held_weights(model)}")
    decoder = NativeDecoder.for_model(model, weight_type)
    # the decoder's change check holds references to the parameters (and views of their memory):
    # dropped, so that each replaced matrix is freed, then made again over what the model holds after
    del decoder.stamp
    model.__dict__["_native_decoders"] = {weight_type: decoder}
    for index, layer in enumerate([*model.encoder_layers, *model.decoder_layers]):
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                module.weight = nn.Parameter(torch.empty_like(module.weight, device="meta"), requires_grad=False)
                module.forward = _HeldByEngine(f"layer {index} {name}")
    model.__dict__[_HELD_KEY] = weight_type
    # a later change to the model (load_state_dict, .half(), an edit of the embeddings, which the
    # passes read in place) cannot be converted again: for_model refuses to decode after one
    decoder.stamp = ParameterStamp(model)
    return decoder


class _HeldByEngine:
    """The ``forward`` of a linear layer whose weight ``release_layer_weights`` freed: raises (a meta
    weight would otherwise let ``F.linear`` return uninitialised memory)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: object, **kwargs: object) -> Tensor:
        raise ValueError(
            f"{self.name}: this layer's weights are held only by the engine's native passes (a Translator made "
            "with release_weights=True); the PyTorch model cannot run it: load the model again"
        )


def _cache_tensors(caches: list[LayerCache]) -> tuple[list[Tensor], list[Tensor]]:
    """The key and the value tensors of the caches, per layer, as the AR ops take them."""
    return [cache.keys for cache in caches], [cache.values for cache in caches]
