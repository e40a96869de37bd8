"""Fused masked attention (flash-attention style, online softmax) with the mask computed in-kernel.

One kernel covers every attention of JANUS. The mask is never materialised: each program computes
the same predicates as ``janus_fast.masks`` from per-sentence integers:

* ``padding``: key ``j`` visible iff ``j < key_lengths[b]``;
* ``causal``: additionally ``j <= i + query_offset`` (incremental decoding with a KV cache);
* ``two_stream``: the JANUS NAR training mask over ``[content (Tk) | query (Tq - Tk)]`` rows from
  ``a = key_lengths[b]`` and ``b = num_masked[b]``;
* ``ar_two_stream``: the AR two-stream mask over ``[content (Tk) | query (Tk)]`` rows.

Rows with no visible key produce zeros. Accumulation is fp32 whatever the input dtype. The
backward pass recomputes attention with the PyTorch reference (the mask materialised only
there), so training on a GPU can use these masks; a Triton backward kernel is future work.

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set
before triton is imported), which is how the tests check it on machines without a GPU.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from janus_fast import masks
from janus_fast.masks import MaskSpec

MASK_KINDS = {kind: index for index, kind in enumerate(masks.MASK_KINDS)}  # kernel constexpr ids
HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU path of the package works without triton
    triton = None


def interpreting() -> bool:
    """True when Triton runs kernels with its NumPy interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: MaskSpec, *, scale: float | None = None
) -> torch.Tensor:
    """The PyTorch reference: the mask built by ``janus_fast.masks`` and SDPA (math in q's dtype).

    q (B, H, Tq, D), k/v (B, H, Tk, D); ``mask``: which keys each query may see (its key_lengths
    (B,) int, num_masked (B,) int for two_stream). Returns (B, H, Tq, D); fully masked rows are zeros.
    """
    dense = mask.dense(q.shape[2], k.shape[2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=dense[:, None], scale=scale)


if triton is not None:

    @triton.jit
    def _visible(rows, cols, num_keys, key_length, masked_count, query_offset, MASK_KIND: tl.constexpr):
        """(BLOCK_M, BLOCK_N) bool: may query row ``rows[i]`` see key ``cols[j]``."""
        r = rows[:, None]
        c = cols[None, :]
        if MASK_KIND == 0:  # padding
            allowed = (c < key_length) & (r >= 0)
        elif MASK_KIND == 1:  # causal with a cache offset
            allowed = (c < key_length) & (c <= r + query_offset)
        elif MASK_KIND == 2:  # JANUS two-stream: rows [content (num_keys) | queries]
            observed_end = key_length - 2 * masked_count
            slots_end = key_length - masked_count
            col_observed = c < observed_end
            col_slot = (c >= observed_end) & (c < slots_end)
            col_copy = (c >= slots_end) & (c < key_length)
            col_k = tl.where(col_slot, c - observed_end, c - slots_end)
            row_copy = (r >= slots_end) & (r < key_length)
            row_k = r - slots_end
            content = tl.where(
                row_copy,
                col_observed | (col_slot & (col_k > row_k)) | (col_copy & (col_k <= row_k)),
                col_observed | col_slot,
            )
            content = content & (r < key_length)
            query_k = r - num_keys
            query = col_observed | (col_slot & (col_k >= query_k)) | (col_copy & (col_k < query_k))
            query = query & (query_k < masked_count)
            allowed = tl.where(r < num_keys, content, query)
        else:  # AR two-stream: rows [content (num_keys) | queries (num_keys)], both causal
            position = tl.where(r < num_keys, r, r - num_keys)
            allowed = (c <= position) & (c < key_length) & (position < key_length)
        return allowed

    @triton.jit
    def _attention_forward_kernel(
        Q,
        K,
        V,
        Out,
        KeyLengths,
        NumMasked,
        stride_qb,
        stride_qh,
        stride_qm,
        stride_qd,
        stride_kb,
        stride_kh,
        stride_kn,
        stride_kd,
        stride_vb,
        stride_vh,
        stride_vn,
        stride_vd,
        stride_ob,
        stride_oh,
        stride_om,
        stride_od,
        num_heads,
        num_queries,
        num_keys,
        query_offset,
        scale,
        MASK_KIND: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        DOT_FP32: tl.constexpr = False,
    ):
        block_m = tl.program_id(0)
        batch_head = tl.program_id(1)
        batch = batch_head // num_heads
        head = batch_head % num_heads
        rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, HEAD_DIM)
        key_length = tl.load(KeyLengths + batch).to(tl.int32)
        masked_count = 0
        if MASK_KIND == 2:
            masked_count = tl.load(NumMasked + batch).to(tl.int32)

        q_ptrs = Q + batch * stride_qb + head * stride_qh + rows[:, None] * stride_qm + dims[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=rows[:, None] < num_queries, other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        running_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        running_sum = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
        k_base = K + batch * stride_kb + head * stride_kh
        v_base = V + batch * stride_vb + head * stride_vh
        for start in range(0, num_keys, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            in_range = cols[:, None] < num_keys
            k = tl.load(k_base + cols[:, None] * stride_kn + dims[None, :] * stride_kd, mask=in_range, other=0.0)
            v = tl.load(v_base + cols[:, None] * stride_vn + dims[None, :] * stride_vd, mask=in_range, other=0.0)
            if DOT_FP32:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            scores = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
            allowed = _visible(rows, cols, num_keys, key_length, masked_count, query_offset, MASK_KIND)
            allowed = allowed & (cols[None, :] < num_keys)
            scores = tl.where(allowed, scores, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(scores, 1))
            safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # all masked so far
            probabilities = tl.exp(scores - safe_max[:, None])
            correction = tl.exp(running_max - safe_max)
            running_sum = running_sum * correction + tl.sum(probabilities, 1)
            acc = acc * correction[:, None] + tl.dot(probabilities.to(v.dtype), v).to(tl.float32)
            running_max = new_max
        out = acc / tl.where(running_sum == 0.0, 1.0, running_sum)[:, None]  # no visible key: zeros
        o_ptrs = Out + batch * stride_ob + head * stride_oh + rows[:, None] * stride_om + dims[None, :] * stride_od
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=rows[:, None] < num_queries)

    # On a GPU: tile sizes tuned per (Tq, Tk, head dim); sensible for sm_80 / sm_90.
    _attention_forward_tuned = triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
            triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
            triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=4),
        ],
        key=["num_queries", "num_keys", "HEAD_DIM", "MASK_KIND"],
    )(_attention_forward_kernel)


def _check_attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask_kind: str,
    key_lengths: torch.Tensor | None,
    num_masked: torch.Tensor | None,
) -> None:
    if mask_kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {mask_kind!r}; expected one of {sorted(MASK_KINDS)}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (B, H, T, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[3] not in HEAD_DIMS:
        raise ValueError(f"head dim {q.shape[3]} not supported by the Triton kernel; supported: {HEAD_DIMS}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one dtype of {DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_lengths is None or key_lengths.shape != (q.shape[0],) or key_lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError("key_lengths must be an int tensor of shape (B,)")
    if mask_kind == "two_stream":
        if num_masked is None or num_masked.shape != (q.shape[0],):
            raise ValueError("two_stream attention needs num_masked, an int tensor of shape (B,)")
        if q.shape[2] < k.shape[2]:
            raise ValueError("two_stream attention needs Tq >= Tk (rows are [content | query])")
    if mask_kind == "ar_two_stream" and q.shape[2] != 2 * k.shape[2]:
        raise ValueError("ar_two_stream attention needs Tq == 2 * Tk (rows are [content | query])")
    devices = {t.device for t in (q, k, v, key_lengths) if t is not None}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
    if triton is None:
        raise RuntimeError("triton is not installed: use the PyTorch path (attention_reference)")
    if not q.is_cuda and not interpreting():
        raise ValueError(
            "the Triton attention kernel needs CUDA tensors (or TRITON_INTERPRET=1 set before importing "
            "triton, for testing on the CPU)"
        )


def _forward(q, k, v, mask_kind, key_lengths, num_masked, query_offset, scale, block_sizes):
    batch, heads, num_queries, head_dim = q.shape
    out = torch.empty_like(q)
    masked = num_masked if num_masked is not None else key_lengths
    args = (
        q,
        k,
        v,
        out,
        key_lengths,
        masked,
        *q.stride(),
        *k.stride(),
        *v.stride(),
        *out.stride(),
        heads,
        num_queries,
        k.shape[2],
        query_offset,
        scale,
    )
    kind = MASK_KINDS[mask_kind]
    if block_sizes is None and not interpreting():
        grid = lambda meta: (triton.cdiv(num_queries, meta["BLOCK_M"]), batch * heads)  # noqa: E731
        _attention_forward_tuned[grid](*args, MASK_KIND=kind, HEAD_DIM=head_dim)
    else:
        block_m, block_n = block_sizes or (16, 16)
        grid = (triton.cdiv(num_queries, block_m), batch * heads)
        # Triton 3.9's interpreter computes tl.dot on bf16 operands wrongly (it is right on a GPU and
        # for fp16/fp32): there the operands are upcast to fp32 first.
        dot_fp32 = interpreting() and q.dtype == torch.bfloat16
        _attention_forward_kernel[grid](
            *args, MASK_KIND=kind, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, DOT_FP32=dot_fp32
        )
    return out


class _FusedAttention(torch.autograd.Function):
    """Triton forward; backward recomputes with the PyTorch reference (mask materialised there)."""

    @staticmethod
    def forward(ctx, q, k, v, mask_kind, key_lengths, num_masked, query_offset, scale, block_sizes):
        ctx.save_for_backward(q, k, v, key_lengths, num_masked if num_masked is not None else key_lengths)
        ctx.options = (mask_kind, num_masked is not None, query_offset, scale)
        return _forward(q, k, v, mask_kind, key_lengths, num_masked, query_offset, scale, block_sizes)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, key_lengths, masked = ctx.saved_tensors
        mask_kind, has_masked, query_offset, scale = ctx.options
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
            mask = MaskSpec(mask_kind, key_lengths, masked if has_masked else None, query_offset)
            out = attention_reference(*inputs, mask, scale=scale)
            grads = torch.autograd.grad(out, inputs, grad_out)
        return (*grads, None, None, None, None, None, None)


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: MaskSpec,
    *,
    scale: float | None = None,
    block_sizes: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Masked attention in one Triton kernel; differentiable (backward through the reference).

    Args:
        q: (B, H, Tq, D), k/v: (B, H, Tk, D); fp32/fp16/bf16; D in (32, 64, 128).
        mask: ``janus_fast.masks.MaskSpec``: its kind ("padding" | "causal" | "two_stream" |
            "ar_two_stream", see module docstring), key_lengths (B,) int (real keys; for
            two_stream a = content length), num_masked (B,) int (b of the two-stream mask,
            two_stream only), query_offset (keys cached before the first query, causal only).
        scale: softmax scale, default 1/sqrt(D).
        block_sizes: (BLOCK_M, BLOCK_N) to bypass autotuning (the interpreter uses (16, 16)).
    Returns:
        (B, H, Tq, D) in q's dtype; rows with no visible key are zeros.
    """
    if not isinstance(mask, MaskSpec):
        raise TypeError(f"mask must be a janus_fast.masks.MaskSpec, got {type(mask).__name__}")
    _check_attention_inputs(q, k, v, mask.kind, mask.key_lengths, mask.num_masked)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[3])
    return _FusedAttention.apply(
        q,
        k,
        v,
        mask.kind,
        mask.key_lengths.contiguous(),
        None if mask.num_masked is None else mask.num_masked.contiguous(),
        int(mask.query_offset),
        float(scale),
        block_sizes,
    )
