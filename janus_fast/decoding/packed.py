"""Padding-free decoder passes for the engine's mask-predict ("remove padding").

A batch of mask-predict rows (sentences x length candidates) is padded to its longest candidate.
Everything in a decoder layer except attention acts on each position alone (layer norms, the
q/k/v/out projections, the feed-forward), so those run on the P real positions packed into a
(P, d) matrix; only attention scatters its inputs back to the padded (N, H, W, d/H) layout, where
padded keys are masked out exactly as in the padded pass. Real positions get the same values as
in ``JanusModel.decode`` (the tests check the tokens against the reference decoder); the linear
layers do P / (N W) of the work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from janus_fast.attention import masked_attention
from janus_fast.masks import MaskSpec
from janus_fast.model import Attention, DecoderLayer, EncoderOutput, JanusModel


class PackedRows:
    """Where the real positions of a padded (N, W) batch of rows of ``lengths`` (N,) int64 sit:
    ``index`` (P,) into the flattened (N * W) positions, in row-major order, ``positions`` (P,)
    each one's position in its row and ``offsets`` (N + 1,) where each row starts."""

    def __init__(self, lengths: torch.Tensor, width: int) -> None:
        self.lengths = lengths
        self.offsets = F.pad(lengths.cumsum(0), (1, 0))
        positions = torch.arange(width, device=lengths.device)
        real = positions[None, :] < lengths[:, None]
        self.num_rows, self.width = len(lengths), width
        self.index = real.reshape(-1).nonzero().squeeze(1)
        self.positions = positions.expand(self.num_rows, width).reshape(-1).index_select(0, self.index)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """(P, C) -> (N, W, C) with zeros at padded positions."""
        padded = packed.new_zeros(self.num_rows * self.width, packed.shape[-1])
        padded.index_copy_(0, self.index, packed)
        return padded.view(self.num_rows, self.width, -1)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(N, W, C) -> (P, C)."""
        return padded.reshape(self.num_rows * self.width, -1).index_select(0, self.index)


def _attend(
    attention: Attention,
    query_packed: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: MaskSpec,
    rows: PackedRows,
) -> torch.Tensor:
    """Attention of packed queries (P, d) to padded key/value (N, H, Tk, d/H); returns (P, d)."""
    query = attention.split_heads(rows.pad(attention.q_proj(query_packed)))
    out = masked_attention(query, key, value, mask)
    out = out.transpose(1, 2).reshape(rows.num_rows, rows.width, -1)
    return attention.out_proj(rows.pack(out))


def _packed_layer(
    layer: DecoderLayer, x: torch.Tensor, rows: PackedRows, self_mask: MaskSpec, memory_kv, memory_mask: MaskSpec
) -> torch.Tensor:
    """``DecoderLayer.forward`` (inference, content stream only) on packed positions (P, d)."""
    if not layer.normalize_before:  # post-norm (fairseq's default): norm(x + sublayer(x))
        key, value = layer.self_attn.keys_values(rows.pad(x))
        x = layer.norm1(x + _attend(layer.self_attn, x, key, value, self_mask, rows))
        x = layer.norm2(x + _attend(layer.cross_attn, x, *memory_kv, memory_mask, rows))
        return layer.norm3(x + layer.ffn(x))
    h = layer.norm1(x)
    key, value = layer.self_attn.keys_values(rows.pad(h))
    x = x + _attend(layer.self_attn, h, key, value, self_mask, rows)
    x = x + _attend(layer.cross_attn, layer.norm2(x), *memory_kv, memory_mask, rows)
    return x + layer.ffn(layer.norm3(x))


def packed_decode(
    model: JanusModel, tokens: torch.Tensor, lengths: torch.Tensor, encoder_out: EncoderOutput, rows: PackedRows
) -> torch.Tensor:
    """Final decoder states (P, d) of the real positions of ``tokens`` (N, W) int64, row lengths
    (N,), as ``model.decode`` of the content stream would give them at those positions."""
    if model.training:
        raise RuntimeError("packed_decode is an inference path; call model.eval() first")
    x = model.embed_target(tokens.reshape(-1).index_select(0, rows.index), rows.positions)
    self_mask = MaskSpec.padding(lengths)
    for layer, memory_kv in zip(model.decoder_layers, encoder_out.memory_kv):
        x = _packed_layer(layer, x, rows, self_mask, memory_kv, encoder_out.mask)
    return model.decoder_norm(x)
