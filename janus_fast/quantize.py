"""Optional dynamic int8 compute for CPU decoding (``precision="int8"``).

Every ``nn.Linear`` of a copy of the model (attention projections, feed-forward, length head) and
the tied output projection run through PyTorch's dynamic int8 kernels (fbgemm / x86 backend):
weights are stored int8 per output channel, activations are quantized per call, accumulation is
int32, outputs are fp32. Outputs differ slightly from fp32, so an int8 translator is NOT held to the
reference's token-for-token equality; ``janus-fast bench`` measures its speed and BLEU side by
side with fp32.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from janus_fast.model import JanusModel

PRECISIONS = ("fp32", "bf16", "int8")


def quantize_int8(model: JanusModel) -> JanusModel:
    """An inference-only int8 copy of ``model`` (the original is left untouched)."""
    if not torch.backends.quantized.supported_engines or "fbgemm" not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"int8 needs the fbgemm backend; this torch has {torch.backends.quantized.supported_engines}"
        )
    quantized = copy.deepcopy(model).eval().cpu()
    config = quantized.config
    output = nn.Linear(config.d_model, config.vocab_size, bias=False)
    output.weight = nn.Parameter(quantized.embed_tokens.weight.detach().clone(), requires_grad=False)
    quantized.output_projection = output
    with warnings.catch_warnings():
        # torch.ao's eager quantization is deprecated in favour of torchao, still complete in 2.x
        warnings.simplefilter("ignore")
        per_channel = torch.ao.quantization.per_channel_dynamic_qconfig
        torch.ao.quantization.quantize_dynamic(quantized, {nn.Linear: per_channel}, dtype=torch.qint8, inplace=True)
    quantized.precision = "int8"
    return quantized
