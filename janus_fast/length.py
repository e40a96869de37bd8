"""Length prediction, defined once: the model's length head, the decoders' length candidates and
the Triton kernel (``janus_fast.kernels.length_candidates``, tested against
``length_candidates_reference``) all follow these functions.

The head mean-pools the encoder states over the real source positions and projects them to
``C`` length classes. Class ``c`` stands for target length ``c`` (bos and eos counted) or, with
``offset``, ``c - C // 2 + source length``. Candidates: a log-softmax over the classes whose
length is at least ``min_length``, then the ``beam`` best (ties: the shorter length).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "mean_pool",
    "class_lengths",
    "length_classes",
    "candidates_from_logits",
    "centred_candidates_from_logits",
    "length_candidates_reference",
]


def mean_pool(states: torch.Tensor, lengths: torch.Tensor, divide_first: bool = False) -> torch.Tensor:
    """states (B, S, d), lengths (B,) int64 -> (B, d): the mean over the first lengths[b] positions;
    ``divide_first`` divides each state by the length before the sum (fairseq's order of
    operations, for its rounding)."""
    real = (torch.arange(states.shape[1], device=states.device)[None, :] < lengths[:, None]).to(states.dtype)
    if divide_first:
        return ((states / real.sum(1)[:, None, None]) * real[..., None]).sum(1)
    pooled = (states * real[..., None]).sum(1)
    return pooled / lengths.clamp(min=1)[:, None].to(states.dtype)


def class_lengths(num_classes: int, src_lengths: torch.Tensor, offset: bool) -> torch.Tensor:
    """(B, C) int64: the target length each class stands for."""
    classes = torch.arange(num_classes, device=src_lengths.device)[None].expand(len(src_lengths), -1)
    return classes + src_lengths[:, None] - num_classes // 2 if offset else classes


def length_classes(
    tgt_lengths: torch.Tensor, src_lengths: torch.Tensor, num_classes: int, offset: bool
) -> torch.Tensor:
    """(B,) int64 training targets: the class of each target length, clamped to the class range."""
    classes = tgt_lengths - src_lengths + num_classes // 2 if offset else tgt_lengths
    return classes.clamp(0, num_classes - 1)


def candidates_from_logits(
    logits: torch.Tensor, src_lengths: torch.Tensor, beam: int, *, offset: bool = False, min_length: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, C) of the length head -> lengths (B, beam) int64 and log-probs (B, beam) fp32, best
    first; the log-softmax runs over the classes whose length is >= ``min_length``."""
    lengths = class_lengths(logits.shape[-1], src_lengths, offset)
    log_probs = F.log_softmax(logits.float().masked_fill(lengths < min_length, float("-inf")), dim=-1)
    # stable descending sort: equal log-probs keep the smaller class first
    order = torch.sort(log_probs, dim=-1, descending=True, stable=True).indices[:, :beam]
    return lengths.gather(1, order), log_probs.gather(1, order)


def centred_candidates_from_logits(
    logits: torch.Tensor, src_lengths: torch.Tensor, beam: int, *, offset: bool = False, min_length: int = 2
) -> torch.Tensor:
    """fairseq's length beam: the argmax class's length (>= ``min_length``) plus the offsets
    ``arange(beam) - beam // 2``, each clamped to >= ``min_length`` again: (B, beam) int64."""
    predicted = F.log_softmax(logits.float(), dim=-1).max(-1, keepdim=True).indices  # fairseq's argmax
    best = class_lengths(logits.shape[-1], src_lengths, offset).gather(1, predicted)
    offsets = torch.arange(beam, device=best.device) - beam // 2
    return (best.clamp(min=min_length) + offsets[None, :]).clamp(min=min_length)


def length_candidates_reference(
    encoder_states: torch.Tensor,
    src_lengths: torch.Tensor,
    length_weight: torch.Tensor,
    beam: int,
    *,
    offset: bool = False,
    min_length: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole head in fp32 from its weight, what the Triton kernel fuses.

    encoder_states (B, S, d), src_lengths (B,) int, length_weight (C, d) -> as ``candidates_from_logits``.
    """
    logits = F.linear(mean_pool(encoder_states.float(), src_lengths), length_weight.float())
    return candidates_from_logits(logits, src_lengths, beam, offset=offset, min_length=min_length)
