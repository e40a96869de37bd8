"""Masked attention of the model: one entry point, the mask described by a few integers.

``MaskSpec`` names the kind of mask (padding, causal, JANUS two-stream, AR two-stream) and carries
its per-sentence integers. ``masked_attention`` turns it into a dense boolean mask with
``janus_fast.masks`` and calls ``torch.nn.functional.scaled_dot_product_attention`` (the CPU path);
on CUDA tensors the fused Triton kernels of ``janus_fast.kernels`` compute the same mask inside
the kernel instead (``JANUS_FAST_ATTENTION_BACKEND=torch|triton|auto`` forces either).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from janus_fast.masks import MaskSpec


def attention_backend() -> str:
    """``JANUS_FAST_ATTENTION_BACKEND`` ("auto" when unset); ValueError for another value than
    auto, torch or triton (checked where a decoding starts too, whichever passes it then runs)."""
    backend = os.environ.get("JANUS_FAST_ATTENTION_BACKEND", "auto")
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"JANUS_FAST_ATTENTION_BACKEND={backend!r}; expected auto, torch or triton")
    return backend


def use_triton(query: torch.Tensor) -> bool:
    """Whether attention on ``query`` runs the Triton kernel: ``JANUS_FAST_ATTENTION_BACKEND``
    "torch" / "triton" forces a path; "auto" (default) picks Triton for CUDA tensors when triton
    is installed and the head dim is supported."""
    backend = attention_backend()
    if backend != "auto":
        return backend == "triton"
    if not query.is_cuda:
        return False
    import janus_fast.kernels as kernels

    return kernels.TRITON_AVAILABLE and query.shape[-1] in kernels.HEAD_DIMS


def masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: MaskSpec | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention under ``mask``.

    Args:
        query (B, H, Tq, D), key/value (B, H, Tk, D), any float dtype; mask None = all keys.
    Returns:
        (B, H, Tq, D); rows with no visible key are zeros.
    """
    if mask is not None and dropout_p == 0.0 and use_triton(query):
        from janus_fast.kernels import fused_attention

        return fused_attention(query, key, value, mask)
    dense = None if mask is None else mask.dense(query.shape[2], key.shape[2])[:, None]
    if not query.is_cuda and query.requires_grad:
        return explicit_attention(query, key, value, dense, dropout_p)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=dense, dropout_p=dropout_p)


def explicit_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dense_mask: torch.Tensor | None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention as two matmuls around an fp32 softmax: the CPU training path.

    On the CPU, SDPA's fused kernel with a boolean mask runs its backward several times slower
    than these plain matmuls at training shapes (e.g. 5x in bf16 at B 48, Tq 70, Tk 40, D 64).
    query (B, H, Tq, D), key/value (B, H, Tk, D), dense_mask (B, 1, Tq, Tk) bool or None;
    returns (B, H, Tq, D) in the query's dtype, zeros for rows with no visible key.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * query.shape[-1] ** -0.5
    if dense_mask is not None:
        scores = scores.masked_fill(~dense_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dense_mask is not None:
        probs = probs.masked_fill(~dense_mask, 0.0)  # rows with no visible key: NaN -> 0
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    return torch.matmul(probs.to(value.dtype), value)
