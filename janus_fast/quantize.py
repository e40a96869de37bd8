"""Optional dynamic int8 compute for CPU decoding (``precision="int8"``) where the engine's native
passes do not run at all: the reference decoder, a model the native passes cannot run, or no native
extension (``janus_fast.decoding.passes.PassChoice``). Where they run, the native passes decode int8
themselves at every batch size: with VNNI they quantize activations per row, without it they widen
int8 weights to fp32 (``janus_fast.native.decoder``).

Every ``nn.Linear`` of a copy of the model (attention projections, feed-forward, length head) and
the tied output projection run through PyTorch's dynamic int8 kernels (fbgemm / x86 backend):
weights are stored int8 per output channel, activations are quantized per call (one affine uint8
scale per tensor), accumulation is int32, outputs are fp32. The activations' range is chosen at run
time from what the CPU reports: the full 0..255 where it has AVX-512 VNNI (``vpdpbusd`` accumulates
into int32), else PyTorch's default 0..127, which keeps the AVX2 kernels' pairwise int16 sums from
saturating. The reduced range costs NAR 0.4 BLEU on the shipped model (500 test sentences, T=2 and
T=4, README "CPU decoding"); the full range is within 0.1 of fp32. Outputs differ slightly from
fp32, so an int8 translator is NOT held to the reference's token-for-token equality;
``janus-fast bench`` measures its speed and BLEU side by side with fp32.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from janus_fast.model import JanusModel
from janus_fast.native.cpu_features import has_avx512_vnni
from janus_fast.parameter_stamp import MODEL_CACHE_LOCK


class FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """PyTorch's dynamic int8 linear with activations quantized over the full uint8 range (only
    where int8 products accumulate without int16 saturation: ``has_avx512_vnni()``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) float32 -> (..., out) float32."""
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)


def dynamic_linear_type(full_range: bool | None = None) -> type[nn.Module]:
    """The dynamic int8 module ``quantize_int8`` uses: full-range activations when ``full_range``
    (default: where the CPU reports AVX-512 VNNI), PyTorch's reduced range otherwise."""
    if full_range is None:
        full_range = has_avx512_vnni()
    return FullRangeDynamicLinear if full_range else torch.ao.nn.quantized.dynamic.Linear


def quantize_int8(model: JanusModel, full_range: bool | None = None) -> JanusModel:
    """An inference-only int8 copy of ``model`` (the original is left untouched); ``full_range``
    as in ``dynamic_linear_type``."""
    if not torch.backends.quantized.supported_engines or "fbgemm" not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"int8 needs the fbgemm backend; this torch has {torch.backends.quantized.supported_engines}"
        )
    with MODEL_CACHE_LOCK:  # not while another thread adds the engine's weights to the model's __dict__
        cache = model.__dict__.get("_native_decoders")
        memo = {id(cache): {}} if cache is not None else {}  # the engine's converted weights are not copied
        quantized = copy.deepcopy(model, memo).eval().cpu()
    config = quantized.config
    output = nn.Linear(config.d_model, config.vocab_size, bias=False)
    output.weight = nn.Parameter(quantized.embed_tokens.weight.detach().clone(), requires_grad=False)
    quantized.output_projection = output
    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, still complete in 2.x
        warnings.simplefilter("ignore")
        per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
        torch.ao.quantization.quantize_dynamic(
            quantized,
            {nn.Linear: per_channel},
            dtype=torch.qint8,
            mapping={nn.Linear: dynamic_linear_type(full_range)},
            inplace=True,
        )
    quantized.precision = "int8"
    return quantized
