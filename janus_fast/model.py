"""The JANUS model: a transformer encoder and ONE two-stream decoder shared by P_AR, P_NAR, P_AUX.

The decoder runs a content stream and a query stream as one sequence ``[content | query]`` whose
self-attention keys/values come from the content part only (XLNet style): both streams share every
weight, and the query stream never sees its own token. Which element may see which is decided by
``janus_fast.masks`` from a few integers per sentence, carried here by ``MaskSpec``.

Shapes: B batch, S source length, T target/content length, Q query rows, d model width, V vocab.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from janus_fast.arguments import check_field_types, named, option, setting
from janus_fast.attention import masked_attention
from janus_fast.length import length_classes, mean_pool
from janus_fast.masks import MaskSpec
from janus_fast.memory import check_fits_in_memory
from janus_fast.vocab import BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}  # the FFN activations a config may name


MAX_LAYERS = 1024  # a config asking for more is an edit or a mistake
# upper bounds of the size-like fields: past them a config is an edit or a mistake, and its
# embeddings alone would take gigabytes (the model's whole size is checked against memory too)
MAX_SIZES = {
    "vocab_size": 1 << 21,
    "d_model": 1 << 16,
    "ffn_dim": 1 << 18,
    "num_heads": 1 << 12,
    "max_source_positions": 1 << 16,
    "max_target_positions": 1 << 16,
    "num_length_classes": 1 << 16,
}
# JanusConfig.extra's record of the objectives that trained a model, and the sides each trains
TRAINED_OBJECTIVES = "trained_objectives"
OBJECTIVE_SIDES = {"janus": ("ar", "nar"), "ar": ("ar",), "cmlm": ("nar",)}
AR_STREAMS = ("query", "content")  # the decoder stream that predicts P_AR (see JanusConfig.ar_stream)


def decoding_defaults() -> tuple[str, ...]:
    """The ``JanusConfig`` fields that are decoding defaults kept with a model, not its architecture
    (field metadata "decoding_default": the side that uses it, "ar" or "nar"): a run may change them,
    ``export`` may set them."""
    return tuple(item.name for item in fields(JanusConfig) if item.metadata.get("decoding_default"))


def decoding_default_side(name: str) -> str:
    """The side ("ar" or "nar") that uses the decoding default ``name`` (``decoding_defaults``)."""
    return next(item.metadata["decoding_default"] for item in fields(JanusConfig) if item.name == name)


@dataclass
class JanusConfig:
    """Hyper-parameters of a JANUS model (saved as ``config.json``)."""

    vocab_size: int = option(
        8000,
        (
            "vocabulary size the joint SentencePiece tokenizer is trained for (the model takes the "
            "tokenizer's actual size, which may be smaller on a small corpus; with --init-from its own)"
        ),
    )
    d_model: int = option(256, "model width: embeddings and hidden states (a multiple of --num-heads)")
    num_heads: int = option(4, "attention heads per attention layer")
    ffn_dim: int = option(1024, "hidden width of each layer's feed-forward block")
    encoder_layers: int = option(3, "number of encoder layers")
    decoder_layers: int = option(3, "number of decoder layers (one decoder serves both AR and NAR)")
    dropout: float = option(
        0.1,
        (
            "dropout probability on the embeddings, on the outputs of the attention and feed-forward "
            "blocks and inside the feed-forward blocks, in [0, 1); training only"
        ),
    )
    attention_dropout: float = option(0.0, "dropout probability on the attention weights, in [0, 1); training only")
    max_source_positions: int = option(
        128,
        (
            "longest source in tokens (learned position embeddings); longer training sources are cut, "
            "longer inputs to translate are cut or refused"
        ),
    )
    max_target_positions: int = option(
        128,
        (
            "longest target in tokens counting <bos> and <eos> (learned position embeddings); longer "
            "training targets are cut"
        ),
    )
    num_length_classes: int = option(
        256,
        (
            "classes N of the NAR target-length head: target lengths 0 .. N-1 counting <bos> and <eos> "
            "(with --length-offset, target minus source length + N/2)"
        ),
    )
    length_offset: bool = option(
        False,
        (
            "the length head predicts the target length minus the source length (offset by N/2) instead "
            "of the target length itself"
        ),
    )
    # a decoding default kept with the model: NAR ranks its length candidates by score + this x
    # length (``candidates.best_length_candidates``); tuned on validation (``export --length-bonus``)
    length_bonus: float = field(
        default=0.0,
        metadata={
            "cli": False,
            "decoding_default": "nar",
            "help": "NAR length bonus stored as the copy's decoding default (see translate --length-bonus; "
            "default: keep the source's)",
        },
    )
    # architecture variants (defaults: this project's models; converted fairseq models set them)
    normalize_before: bool = field(default=True, metadata={"cli": False})  # pre-norm (False: post-norm)
    final_norms: bool = field(default=True, metadata={"cli": False})  # layer norms after the encoder/decoder
    activation: str = field(default="gelu", metadata={"cli": False})  # FFN activation: gelu | relu
    scale_embedding: bool = field(default=True, metadata={"cli": False})  # token embeddings * sqrt(d_model)
    source_bos: bool = field(default=False, metadata={"cli": False})  # sources start with <bos>
    source_eos: bool = field(default=False, metadata={"cli": False})  # sources end with <eos>
    # the AR query stream's position: that of the token it predicts (1, this project) or of the last
    # visible content token (0, the public JANUS plugin's janus_transformer)
    query_position_offset: int = field(default=1, metadata={"cli": False})
    # which decoder stream predicts P_AR: "query" (JANUS) or "content" (a plain transformer decoder,
    # causal over its own tokens; such a model has no NAR side), and the token AR decoding starts
    # from: "bos", or "eos" (fairseq's translation task starts the target with </s>)
    ar_stream: str = field(default="query", metadata={"cli": False})
    ar_start: str = field(default="bos", metadata={"cli": False})
    pad_id: int = field(default=PAD_ID, metadata={"cli": False})
    unk_id: int = field(default=UNK_ID, metadata={"cli": False})
    bos_id: int = field(default=BOS_ID, metadata={"cli": False})
    eos_id: int = field(default=EOS_ID, metadata={"cli": False})
    mask_id: int = field(default=MASK_ID, metadata={"cli": False})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})

    def __post_init__(self) -> None:
        check_field_types(self)
        minimum = {"vocab_size": 6, "d_model": 1, "num_heads": 1, "ffn_dim": 1, "encoder_layers": 1}
        minimum.update(decoder_layers=1, max_source_positions=1, max_target_positions=3, num_length_classes=4)
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(f"{named(name)} must be >= {low}, got {getattr(self, name)}")
        limits = {**MAX_SIZES, "encoder_layers": MAX_LAYERS, "decoder_layers": MAX_LAYERS}
        for name, high in limits.items():  # layers: Python modules each, even on the meta device
            if getattr(self, name) > high:
                raise ValueError(f"{named(name)} must be <= {high}, got {getattr(self, name)}")
        if not math.isfinite(self.length_bonus):
            raise ValueError(f"{named('length_bonus')} must be a finite number, got {self.length_bonus}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{named(name)} must be in [0, 1), got {getattr(self, name)}")
        if not isinstance(self.extra, dict):
            raise TypeError(f"extra must be a mapping, got {type(self.extra).__name__}")
        objectives = self.extra.get(TRAINED_OBJECTIVES)
        if objectives is not None and not (
            isinstance(objectives, list) and all(isinstance(objective, str) for objective in objectives)
        ):
            raise TypeError(f"extra[{TRAINED_OBJECTIVES!r}] must be a list of objective names, got {objectives!r:.200}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"{setting('d_model', self.d_model)} must be divisible by {setting('num_heads', self.num_heads)}"
            )
        if self.query_position_offset not in (0, 1):
            raise ValueError(f"query_position_offset must be 0 or 1, got {self.query_position_offset}")
        if self.ar_stream not in AR_STREAMS:
            raise ValueError(f"ar_stream must be one of {AR_STREAMS}, got {self.ar_stream!r}")
        if self.ar_start not in ("bos", "eos"):
            raise ValueError(f"ar_start must be 'bos' or 'eos', got {self.ar_start!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        special = (self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.mask_id)
        # the mask may be <unk> (fairseq's CMLM masks with it); every other id is distinct
        distinct = len(set(special[:4])) == 4 and self.mask_id not in (self.pad_id, self.bos_id, self.eos_id)
        if not distinct or max(special) >= self.vocab_size or min(special) < 0:
            raise ValueError(
                f"special token ids {special} (pad, unk, bos, eos, mask) must be distinct "
                "(the mask may equal unk) and < vocab_size"
            )

    def parameter_count(self) -> int:
        """The number of parameters a JanusModel of this config has (its weights' fp32 bytes / 4),
        from the sizes alone: embeddings, positions, layers (projections, FFN, norms, biases),
        length head."""
        d, f = self.d_model, self.ffn_dim
        attention = 4 * d * d + 4 * d + 2 * d  # q, k, v, o with biases, and the norm
        feed_forward = 2 * d * f + f + d + 2 * d
        encoder = self.encoder_layers * (attention + feed_forward)
        decoder = self.decoder_layers * (2 * attention + feed_forward)
        positions = (self.max_source_positions + self.max_target_positions) * d
        return self.vocab_size * d + positions + encoder + decoder + 4 * d + self.num_length_classes * d

    @property
    def trained_sides(self) -> frozenset[str] | None:
        """The decoder sides ("ar", "nar") training reached, from the objectives recorded in ``extra``
        (``TRAINED_OBJECTIVES``: set by ``janus-fast train`` and ``convert``); None where no record
        says (a checkpoint saved before it was kept): then every side is assumed trained."""
        objectives = self.extra.get(TRAINED_OBJECTIVES)
        if not isinstance(objectives, list) or not objectives:
            return None
        return frozenset(side for objective in objectives for side in OBJECTIVE_SIDES.get(objective, ("ar", "nar")))

    @property
    def has_nar(self) -> bool:
        """Whether the model has a NAR side (mask-predict): not a plain transformer decoder."""
        return self.ar_stream == "query"

    @property
    def ar_start_id(self) -> int:
        """The token AR decoding starts from (bos, or eos for fairseq's translation models)."""
        return self.bos_id if self.ar_start == "bos" else self.eos_id

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JanusConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**values)


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``memory`` is None, else cross-attention."""

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (B, H, T, d/H)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project (B, T, d) to keys and values, each (B, H, T, d/H)."""
        key, value = self.kv_proj(x).chunk(2, dim=-1)
        return self.split_heads(key), self.split_heads(value)

    def forward(
        self,
        x: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: MaskSpec | None,
    ) -> torch.Tensor:
        """x (B, Tq, d) attends to key/value (B, H, Tk, d/H) under ``mask``; returns (B, Tq, d)."""
        query = self.split_heads(self.q_proj(x))
        dropout = self.dropout if self.training else 0.0
        out = masked_attention(query, key, value, mask, dropout_p=dropout)
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class Dropout(nn.Module):
    """Inverted dropout. On the CPU the keep mask comes from 16 random bits per element (one int32
    draw for two elements): ~1.6x cheaper than ``bernoulli_``, which dominated the CPU profile of a
    training update. The drop probability is ``p`` rounded to a multiple of 1/65536."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.is_cuda:
            return F.dropout(x, self.p, True)
        count = x.numel()
        words = torch.randint(-(2**31), 2**31, ((count + 1) // 2,), dtype=torch.int32, device=x.device)
        bits = words.view(torch.int16)[:count].view(x.shape)
        dropped = round(self.p * 65536)
        keep = (bits >= dropped - 32768).to(x.dtype).mul_(65536 / (65536 - dropped))
        return x * keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.dropout = Dropout(dropout)
        self.activation = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


def residual(
    x: torch.Tensor,
    norm: nn.Module,
    sublayer: Callable[[torch.Tensor], torch.Tensor],
    dropout: nn.Module,
    normalize_before: bool,
) -> torch.Tensor:
    """One residual block: ``x + dropout(sublayer(norm(x)))`` (pre-norm) or
    ``norm(x + dropout(sublayer(x)))`` (post-norm, fairseq's ``normalize_before=False``)."""
    if normalize_before:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Encoder layer: pre-norm (default) or post-norm (``normalize_before=False``, fairseq's default)."""

    def __init__(self, config: JanusConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config.d_model, config.num_heads, config.attention_dropout)
        self.ffn = FeedForward(config.d_model, config.ffn_dim, config.dropout, config.activation)
        self.norm1 = nn.LayerNorm(config.d_model)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.dropout = Dropout(config.dropout)
        self.normalize_before = config.normalize_before

    def forward(self, x: torch.Tensor, mask: MaskSpec) -> torch.Tensor:
        """x (B, S, d) -> (B, S, d)."""

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, *self.self_attn.keys_values(h), mask)

        x = residual(x, self.norm1, self_attention, self.dropout, self.normalize_before)
        return residual(x, self.norm2, self.ffn, self.dropout, self.normalize_before)


class DecoderLayer(nn.Module):
    """Pre-norm (default) or post-norm decoder layer over the stacked ``[content | query]`` sequence.

    Self-attention keys/values are computed from the first ``num_content`` elements only; with a
    ``cache`` (incremental decoding) they are appended to the cached ones first.
    """

    def __init__(self, config: JanusConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config.d_model, config.num_heads, config.attention_dropout)
        self.cross_attn = Attention(config.d_model, config.num_heads, config.attention_dropout)
        self.ffn = FeedForward(config.d_model, config.ffn_dim, config.dropout, config.activation)
        self.norm1 = nn.LayerNorm(config.d_model)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.norm3 = nn.LayerNorm(config.d_model)
        self.dropout = Dropout(config.dropout)
        self.normalize_before = config.normalize_before

    def forward(
        self,
        x: torch.Tensor,
        num_content: int,
        self_mask: MaskSpec | None,
        memory_kv: tuple[torch.Tensor, torch.Tensor],
        memory_mask: MaskSpec,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d)."""

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            key, value = self.self_attn.keys_values(h[:, :num_content])
            if cache is not None:
                key, value = cache.append(key, value)
            return self.self_attn(h, key, value, self_mask)

        def cross_attention(h: torch.Tensor) -> torch.Tensor:
            return self.cross_attn(h, *memory_kv, memory_mask)

        x = residual(x, self.norm1, self_attention, self.dropout, self.normalize_before)
        x = residual(x, self.norm2, cross_attention, self.dropout, self.normalize_before)
        return residual(x, self.norm3, self.ffn, self.dropout, self.normalize_before)


CACHE_START_POSITIONS = 32  # a new LayerCache's room; it doubles as the steps need, up to max_len


class LayerCache:
    """Self-attention keys/values of one decoder layer for incremental AR decoding: (B, H,
    capacity, d/H) each, of which the first ``length`` positions are filled. The capacity starts
    at ``min(max_len, CACHE_START_POSITIONS)`` and doubles as steps need it (``reserve``), so a
    length limit far above what a batch decodes (fairseq's 200 tokens) costs no memory."""

    def __init__(self, batch: int, num_heads: int, max_len: int, head_dim: int, like: torch.Tensor) -> None:
        capacity = min(max_len, CACHE_START_POSITIONS)
        self.keys = like.new_zeros(batch, num_heads, capacity, head_dim)
        self.values = like.new_zeros(batch, num_heads, capacity, head_dim)
        self.max_len = max_len
        self.length = 0

    def reserve(self, length: int) -> None:
        """Make room for ``length`` positions (at most ``max_len``), keeping the filled ones."""
        capacity = self.keys.shape[2]
        if length <= capacity:
            return
        if length > self.max_len:
            raise ValueError(f"the key/value caches hold at most {self.max_len} positions, {length} asked")
        capacity = min(self.max_len, max(length, 2 * capacity))
        grown = []
        for cache in (self.keys, self.values):
            room = cache.new_zeros(cache.shape[0], cache.shape[1], capacity, cache.shape[3])
            room[:, :, : self.length] = cache[:, :, : self.length]
            grown.append(room)
        self.keys, self.values = grown

    def append(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, t, d/H) new keys/values; return all cached so far, (B, H, length, d/H)."""
        end = self.length + key.shape[2]
        self.reserve(end)
        self.keys[:, :, self.length : end] = key
        self.values[:, :, self.length : end] = value
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    @staticmethod
    def reorder_all(caches: Sequence[LayerCache], index: torch.Tensor) -> None:
        """``reorder`` of each of ``caches`` (every layer's)."""
        for cache in caches:
            cache.reorder(index)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (B',) int64 (beam search; B' < B drops rows of finished sentences):
        only the ``length`` positions filled so far are copied (the rest is never read before it
        is written), in place when B' = B."""
        kept = []
        for cache in (self.keys, self.values):
            filled = cache[:, :, : self.length].index_select(0, index)
            if len(index) != cache.shape[0]:
                cache = cache.new_empty((len(index), *cache.shape[1:]))
            cache[:, :, : self.length] = filled
            kept.append(cache)
        self.keys, self.values = kept


@dataclass
class EncoderOutput:
    """Encoder states and what the decoder needs from them, computed once per batch.

    states: (B, S, d); lengths: (B,) int64; memory_kv: per decoder layer, cross-attention keys and
    values (B, H, S, d/H).
    """

    states: torch.Tensor
    lengths: torch.Tensor
    memory_kv: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def mask(self) -> MaskSpec:
        return MaskSpec.padding(self.lengths)

    def select(self, index: torch.Tensor) -> EncoderOutput:
        """Rows ``index`` (e.g. each sentence repeated for its length candidates or beams)."""
        return EncoderOutput(
            self.states.index_select(0, index),
            self.lengths.index_select(0, index),
            [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.memory_kv],
        )


class JanusModel(nn.Module):
    """JANUS encoder-decoder; see ``docs/method.md``.

    Token embeddings are shared by the source, the target and the output projection.
    """

    def __init__(self, config: JanusConfig) -> None:
        super().__init__()
        if torch.empty(0).device.type != "meta":  # a model built on the meta device holds no memory
            parameters = config.parameter_count()
            check_fits_in_memory(
                4 * parameters,
                f"a model of d_model {config.d_model}, ffn_dim {config.ffn_dim}, {config.encoder_layers}+"
                f"{config.decoder_layers} layers, vocabulary {config.vocab_size} "
                f"({parameters / 1e6:.0f}M parameters, fp32)",
                "choose a smaller shape",
            )
        self.config = config
        d = config.d_model
        self.embed_tokens = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_id)
        self.embed_source_positions = nn.Embedding(config.max_source_positions, d)
        self.embed_target_positions = nn.Embedding(config.max_target_positions, d)
        self.embed_scale = math.sqrt(d) if config.scale_embedding else 1.0
        self.embed_dropout = Dropout(config.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        # post-norm models (fairseq's default) have no final norms: identities without weights
        self.encoder_norm: nn.Module = nn.LayerNorm(d) if config.final_norms else nn.Identity()
        self.decoder_norm: nn.Module = nn.LayerNorm(d) if config.final_norms else nn.Identity()
        self.length_embed = nn.Linear(d, config.num_length_classes, bias=False)
        # None: the tied embedding matrix in fp32; an int8 copy sets a quantized module (quantize.py)
        self.output_projection: nn.Module | None = None
        self.precision = "fp32"
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT-style init: normal(0, 0.02) weights, zero biases, zero pad embedding."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=self.config.d_model**-0.5)
        with torch.no_grad():
            self.embed_tokens.weight[self.config.pad_id].zero_()

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----------------------------------------------------------------------------------- encoder
    def encode(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        """src_tokens (B, S) int64 (right-padded), src_lengths (B,) int64 -> EncoderOutput."""
        positions = torch.arange(src_tokens.shape[1], device=src_tokens.device)
        x = self.embed_scale * self.embed_tokens(src_tokens) + self.embed_source_positions(positions)
        x = self.embed_dropout(x)
        mask = MaskSpec.padding(src_lengths)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        states = self.encoder_norm(x)
        memory_kv = [layer.cross_attn.keys_values(states) for layer in self.decoder_layers]
        return EncoderOutput(states, src_lengths, memory_kv)

    def length_logits(self, encoder_out: EncoderOutput) -> torch.Tensor:
        """The length head (``janus_fast.length``): mean-pooled encoder states -> (B, C) logits."""
        return self.length_embed(mean_pool(encoder_out.states, encoder_out.lengths))

    def length_targets(self, tgt_lengths: torch.Tensor, src_lengths: torch.Tensor) -> torch.Tensor:
        """Length classes (B,) of target lengths counting bos/eos, clamped to the class range."""
        config = self.config
        return length_classes(tgt_lengths, src_lengths, config.num_length_classes, config.length_offset)

    # ----------------------------------------------------------------------------------- decoder
    def embed_target(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens, positions (B, T) int64 -> (B, T, d)."""
        x = self.embed_scale * self.embed_tokens(tokens) + self.embed_target_positions(positions)
        return self.embed_dropout(x)

    def decode(
        self,
        x: torch.Tensor,
        num_content: int,
        self_mask: MaskSpec | None,
        encoder_out: EncoderOutput,
        caches: list[LayerCache] | None = None,
    ) -> torch.Tensor:
        """Run the decoder over embedded ``[content | query]`` x (B, T, d); returns (B, T, d).

        With ``caches`` (one per layer) the content part is appended to the cached keys/values.
        """
        layer_caches = caches if caches is not None else [None] * len(self.decoder_layers)
        for layer, memory_kv, cache in zip(self.decoder_layers, encoder_out.memory_kv, layer_caches):
            x = layer(x, num_content, self_mask, memory_kv, encoder_out.mask, cache)
        return self.decoder_norm(x)

    def new_caches(self, batch: int, max_len: int, like: torch.Tensor) -> list[LayerCache]:
        """Empty key/value caches for incremental AR decoding of ``batch`` rows."""
        config = self.config
        head_dim = config.d_model // config.num_heads
        return [LayerCache(batch, config.num_heads, max_len, head_dim, like) for _ in self.decoder_layers]

    def ar_step(
        self, tokens: torch.Tensor, step: int, encoder_out: EncoderOutput, caches: list[LayerCache]
    ) -> torch.Tensor:
        """One incremental AR step: content token y_step (B,) at position ``step`` is appended to
        the caches and the query stream at position ``step + query_position_offset`` predicts the next
        token (with ``ar_stream="content"``: the content token's own state predicts it).

        Returns (B, V) logits of P_AR(y_{step+1} | y_0 .. y_step, x).
        """
        positions = torch.full_like(tokens, step)[:, None]
        if self.config.ar_stream == "content":
            hidden = self.decode(self.embed_target(tokens[:, None], positions), 1, None, encoder_out, caches)
            return self.output_logits(hidden[:, 0])
        x = torch.cat(
            [
                self.embed_target(tokens[:, None], positions),
                self.embed_target(
                    torch.full_like(tokens, self.config.mask_id)[:, None],
                    positions + self.config.query_position_offset,
                ),
            ],
            1,
        )
        hidden = self.decode(x, 1, None, encoder_out, caches)
        return self.output_logits(hidden[:, 1])

    def output_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., V) through the shared embedding matrix."""
        if self.output_projection is not None:
            return self.output_projection(hidden)
        return F.linear(hidden, self.embed_tokens.weight)

    def nar_logits(self, tokens: torch.Tensor, lengths: torch.Tensor, encoder_out: EncoderOutput) -> torch.Tensor:
        """P_NAR logits of the content stream alone (mask-predict inference / CMLM training).

        tokens (B, T) int64 with ``mask_id`` at the positions to predict, lengths (B,) -> (B, T, V).
        """
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        x = self.embed_target(tokens, positions)
        hidden = self.decode(x, tokens.shape[1], MaskSpec.padding(lengths), encoder_out)
        return self.output_logits(hidden)

    def ar_scores(self, tokens: torch.Tensor, lengths: torch.Tensor, encoder_out: EncoderOutput) -> torch.Tensor:
        """The model's AR verdict on whole rows: per row, the mean P_AR log-probability of its
        tokens after bos (eos included), teacher-forced in one pass (``ar_hidden``). Picking a NAR
        length candidate by it instead of by its NAR score is "AR rescoring".

        tokens (N, T) int64 ``<bos> y <eos>`` right-padded (no mask), lengths (N,) int64 >= 2,
        encoder_out per row -> (N,) float32.
        """
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
        inside = positions < lengths[:, None]
        rows = torch.where(inside, tokens, self.config.pad_id)
        log_probs = F.log_softmax(self.output_logits(self.ar_hidden(rows, lengths, encoder_out)).float(), dim=-1)
        predicted = log_probs.gather(2, rows[:, 1:, None]).squeeze(2)  # (N, T-1): tokens[1:] given their prefix
        real = inside[:, 1:]
        return (predicted * real).sum(1) / real.sum(1).clamp(min=1)

    def ar_hidden(
        self, tgt_tokens: torch.Tensor, tgt_lengths: torch.Tensor, encoder_out: EncoderOutput
    ) -> torch.Tensor:
        """P_AR query-stream states for every target position after bos (``ar_stream="content"``:
        the causal content stream's states).

        tgt_tokens (B, L) ``<bos> y .. <eos>``; returns (B, L-1, d) where row i predicts
        tgt_tokens[:, i + 1] having seen tgt_tokens[:, :i + 1].
        """
        content = tgt_tokens[:, :-1]
        num_positions = content.shape[1]
        positions = torch.arange(num_positions, device=content.device).expand_as(content)
        if self.config.ar_stream == "content":
            mask = MaskSpec.causal(tgt_lengths - 1)
            return self.decode(self.embed_target(content, positions), num_positions, mask, encoder_out)
        query_tokens = torch.full_like(content, self.config.mask_id)
        query_positions = positions + self.config.query_position_offset
        x = torch.cat([self.embed_target(content, positions), self.embed_target(query_tokens, query_positions)], 1)
        mask = MaskSpec.ar_two_stream(tgt_lengths - 1)
        hidden = self.decode(x, num_positions, mask, encoder_out)
        return hidden[:, num_positions:]

    def forward(
        self,
        src_tokens: torch.Tensor,
        src_lengths: torch.Tensor,
        tgt_tokens: torch.Tensor,
        tgt_lengths: torch.Tensor,
        masked: torch.Tensor | None,
        objective: str = "janus",
    ) -> dict[str, torch.Tensor]:
        """Training forward pass.

        Args:
            src_tokens (B, S), src_lengths (B,), tgt_tokens (B, L) ``<bos> y <eos>`` right-padded,
            tgt_lengths (B,) counting bos/eos, masked (B, L) bool: NAR-masked target positions
            (never bos/eos/pad; needed for "janus" and "cmlm"), objective "janus" | "ar" | "cmlm".
        Returns:
            dict with ``ar_logits`` (B, L-1, V) predicting tgt_tokens[:, 1:]; ``nar_logits`` and
            ``aux_logits`` (B, K, V) for the k-th masked position of each sentence;
            ``masked_positions`` (B, K) and ``masked_valid`` (B, K) bool; ``length_logits`` (B, C).
        """
        if objective != "ar" and not self.config.has_nar:
            raise ValueError(f"objective {objective!r} needs a NAR side; this model's decoder is a plain transformer's")
        encoder_out = self.encode(src_tokens, src_lengths)
        out: dict[str, torch.Tensor] = {}
        if objective in ("janus", "ar"):
            out["ar_logits"] = self.output_logits(self.ar_hidden(tgt_tokens, tgt_lengths, encoder_out))
        if objective in ("janus", "cmlm"):
            if masked is None:
                raise ValueError(f"objective {objective!r} needs the NAR mask `masked`")
            out["length_logits"] = self.length_logits(encoder_out)
            layout = nar_layout(tgt_tokens, tgt_lengths, masked, self.config.mask_id, self.config.pad_id)
            out["masked_positions"], out["masked_valid"] = layout.masked_positions, layout.masked_valid
            if objective == "cmlm":
                inputs = torch.where(masked, self.config.mask_id, tgt_tokens)
                logits = self.nar_logits(inputs, tgt_lengths, encoder_out)
                index = layout.masked_positions[..., None].expand(-1, -1, logits.shape[-1])
                out["nar_logits"] = logits.gather(1, index)
            else:
                x = torch.cat(
                    [
                        self.embed_target(layout.content_tokens, layout.content_positions),
                        self.embed_target(layout.query_tokens, layout.masked_positions),
                    ],
                    1,
                )
                num_content = layout.content_tokens.shape[1]
                mask = MaskSpec.two_stream(layout.content_lengths, layout.num_masked)
                hidden = self.decode(x, num_content, mask, encoder_out)
                slots = layout.slot_index[..., None].expand(-1, -1, hidden.shape[-1])
                out["nar_logits"] = self.output_logits(hidden.gather(1, slots))
                out["aux_logits"] = self.output_logits(hidden[:, num_content:])
        if objective not in ("janus", "ar", "cmlm"):
            raise ValueError(f"unknown objective {objective!r}; expected janus, ar or cmlm")
        return out


@dataclass
class NarLayout:
    """The JANUS two-stream NAR input of a batch (see ``janus_fast.masks.two_stream_mask``).

    content_tokens, content_positions: (B, A) int64, ``[observed | mask slots | copies]``;
    content_lengths (B,) = a; num_masked (B,) = b; masked_positions (B, K) target positions of the
    masked tokens in order (0 where invalid); masked_valid (B, K) bool; query_tokens (B, K) all
    ``mask_id``; slot_index (B, K) content index of mask slot k.
    """

    content_tokens: torch.Tensor
    content_positions: torch.Tensor
    content_lengths: torch.Tensor
    num_masked: torch.Tensor
    masked_positions: torch.Tensor
    masked_valid: torch.Tensor
    query_tokens: torch.Tensor
    slot_index: torch.Tensor


def nar_layout(
    tgt_tokens: torch.Tensor, tgt_lengths: torch.Tensor, masked: torch.Tensor, mask_id: int, pad_id: int = PAD_ID
) -> NarLayout:
    """Build the NAR two-stream layout with tensor ops only (no loop over the batch).

    tgt_tokens (B, L) int64, tgt_lengths (B,) int64, masked (B, L) bool -> NarLayout.
    """
    batch, length = tgt_tokens.shape
    device = tgt_tokens.device
    positions = torch.arange(length, device=device).expand(batch, -1)
    real = positions < tgt_lengths[:, None]
    masked = masked & real
    num_masked = masked.sum(1)
    # observed first, then masked, each in left-to-right order, padding last
    order_key = positions + length * masked.long() + 2 * length * (~real).long()
    sorted_positions = order_key.argsort(dim=1)
    content_lengths = tgt_lengths + num_masked
    width = int(content_lengths.max())
    max_masked = max(int(num_masked.max()), 1)

    content_index = torch.arange(width, device=device).expand(batch, -1)
    copies_start = (tgt_lengths)[:, None]  # a - b = L
    source = torch.where(content_index < copies_start, content_index, content_index - num_masked[:, None])
    source = source.clamp(0, length - 1)
    content_positions = sorted_positions.gather(1, source)
    content_valid = content_index < content_lengths[:, None]
    slots_start = (tgt_lengths - num_masked)[:, None]
    is_slot = (content_index >= slots_start) & (content_index < copies_start)
    content_tokens = tgt_tokens.gather(1, content_positions)
    content_tokens = torch.where(is_slot, mask_id, content_tokens)
    content_tokens = torch.where(content_valid, content_tokens, pad_id)
    content_positions = torch.where(content_valid, content_positions, 0)

    k = torch.arange(max_masked, device=device).expand(batch, -1)
    masked_valid = k < num_masked[:, None]
    slot_index = (slots_start + k).clamp(max=width - 1)
    masked_positions = sorted_positions.gather(1, slot_index.clamp(max=length - 1))
    masked_positions = torch.where(masked_valid, masked_positions, 0)
    slot_index = torch.where(masked_valid, slot_index, 0)
    query_tokens = torch.full_like(masked_positions, mask_id)
    return NarLayout(
        content_tokens,
        content_positions,
        content_lengths,
        num_masked,
        masked_positions,
        masked_valid,
        query_tokens,
        slot_index,
    )


__all__ = ["JanusConfig", "JanusModel", "EncoderOutput", "LayerCache", "NarLayout", "nar_layout"]
