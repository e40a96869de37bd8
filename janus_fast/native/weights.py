"""The weights of the native encoder and decoder passes, by name.

The native ops take their weights as one flat list of tensors; these dataclasses say what each tensor
is. ``csrc/cpu/decoder_weights.h`` declares the same structures with the same fields in the same order
and reads a list front to back, field by field, so the order lives in the two declarations only (the
tests break each tensor of a list in turn and check that the op names the same field). ``flatten``
turns a structure into the list, in field order, recursing into nested dataclasses and lists:
``PackedMatrix`` is three tensors, ``Norm`` two, so a ``DecoderLayerWeights`` is 27 and an
``EncoderLayerWeights`` 19; a ``DecoderWeights`` list is 7 + 27 per layer and an ``EncoderWeights``
list 4 + 19 per encoder layer + 3 per decoder layer.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class PackedMatrix:
    """A matrix of the passes: ``weight`` its panels (``pack_panels``, or ``pack_groups`` for bf16 pairs and
    int8 quads), ``scale`` its int8 scales (empty otherwise), ``bias`` (empty: none)."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Norm:
    """A layer norm's weight and bias, (d,) each; two empty tensors: no such layer norm."""

    weight: torch.Tensor
    bias: torch.Tensor


@dataclasses.dataclass(frozen=True)
class SelfAttentionWeights:
    """The self-attention sublayer: its layer norm (the model's ``norm1``) and projections."""

    norm: Norm
    q: PackedMatrix
    kv: PackedMatrix
    out: PackedMatrix


@dataclasses.dataclass(frozen=True)
class FeedForwardWeights:
    """The FFN sublayer: its layer norm (``norm3`` of a decoder layer, ``norm2`` of an encoder layer)."""

    norm: Norm
    fc1: PackedMatrix
    fc2: PackedMatrix


@dataclasses.dataclass(frozen=True)
class DecoderLayerWeights:
    self_attention: SelfAttentionWeights
    cross_norm: Norm  # the model's norm2
    cross_q: PackedMatrix
    cross_out: PackedMatrix
    ffn: FeedForwardWeights


@dataclasses.dataclass(frozen=True)
class EncoderLayerWeights:
    self_attention: SelfAttentionWeights
    ffn: FeedForwardWeights


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """The leading fields of both lists: token embeddings (V, d), position embeddings (positions, d) and
    the final layer norm (empty: none)."""

    embed_tokens: torch.Tensor
    positions: torch.Tensor
    final_norm: Norm


@dataclasses.dataclass(frozen=True)
class DecoderWeights(Embeddings):
    """The decoder ops' weights (``positions``: the target positions)."""

    vocab_projection: PackedMatrix  # the tied embeddings, as a matrix (d, V)
    layers: list[DecoderLayerWeights]


@dataclasses.dataclass(frozen=True)
class EncoderWeights(Embeddings):
    """``encoder_forward``'s weights (``positions``: the source positions, ``final_norm``: the encoder's)."""

    layers: list[EncoderLayerWeights]
    cross_kv: list[PackedMatrix]  # the cross-attention keys/values of each decoder layer


def named_tensors(weights: object, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """The tensors of ``weights`` (a dataclass above, a list of them, or a tensor) in field order, each
    with its dotted name (``layers.1.ffn.fc1.bias``): the names the native ops' errors use."""
    if isinstance(weights, torch.Tensor):
        return [(prefix, weights)]
    if dataclasses.is_dataclass(weights) and not isinstance(weights, type):
        items = [(field.name, getattr(weights, field.name)) for field in dataclasses.fields(weights)]
    elif isinstance(weights, (list, tuple)):
        items = [(str(index), item) for index, item in enumerate(weights)]
    else:
        raise TypeError(f"weights: {prefix or 'value'} is a {type(weights).__name__}, not a tensor or weights")
    found: list[tuple[str, torch.Tensor]] = []
    for name, item in items:
        found += named_tensors(item, f"{prefix}.{name}" if prefix else name)
    return found


def flatten(weights: object) -> list[torch.Tensor]:
    """The flat tensor list the native ops take: ``named_tensors`` without the names."""
    return [tensor for _, tensor in named_tensors(weights)]
