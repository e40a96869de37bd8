"""Fused length prediction: masked mean-pool, projection, log-softmax and top-l, in one kernel.

One program per sentence: it mean-pools the encoder states over the sentence's real tokens (in
blocks of the model width), projects them with the length-embedding matrix (num_classes, d),
takes a log-softmax over the classes that give a length >= ``min_length`` and extracts the top-l
candidates by repeated argmax (ties -> the smaller class, i.e. the shorter length).

With ``offset=True`` class c means target length ``c - num_classes // 2 + src_length``.
"""

from __future__ import annotations

import torch

from .attention import interpreting

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None


if triton is not None:

    @triton.jit
    def _length_kernel(
        States,
        SrcLengths,
        Weight,
        OutLengths,
        OutLogProbs,
        stride_sb,
        stride_ss,
        stride_sd,
        stride_wc,
        stride_wd,
        seq_len,
        model_dim,
        num_classes,
        min_length,
        BEAM: tl.constexpr,
        OFFSET: tl.constexpr,
        BLOCK_S: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        sentence = tl.program_id(0)
        src_length = tl.load(SrcLengths + sentence).to(tl.int32)
        classes = tl.arange(0, BLOCK_C)
        logits = tl.zeros((BLOCK_C,), tl.float32)
        denominator = tl.maximum(src_length, 1).to(tl.float32)
        for d_start in range(0, model_dim, BLOCK_D):
            dims = d_start + tl.arange(0, BLOCK_D)
            pooled = tl.zeros((BLOCK_D,), tl.float32)
            for s_start in range(0, seq_len, BLOCK_S):
                positions = s_start + tl.arange(0, BLOCK_S)
                ptrs = States + sentence * stride_sb + positions[:, None] * stride_ss + dims[None, :] * stride_sd
                valid = (positions[:, None] < src_length) & (dims[None, :] < model_dim)
                pooled += tl.sum(tl.load(ptrs, mask=valid, other=0.0).to(tl.float32), 0)
            pooled = pooled / denominator
            w_ptrs = Weight + classes[:, None] * stride_wc + dims[None, :] * stride_wd
            w_valid = (classes[:, None] < num_classes) & (dims[None, :] < model_dim)
            weight = tl.load(w_ptrs, mask=w_valid, other=0.0).to(tl.float32)
            logits += tl.sum(weight * pooled[None, :], 1)
        lengths = classes
        if OFFSET:
            lengths = classes - num_classes // 2 + src_length
        usable = (classes < num_classes) & (lengths >= min_length)
        logits = tl.where(usable, logits, float("-inf"))
        top = tl.max(logits, 0)
        log_sum = tl.log(tl.sum(tl.where(usable, tl.exp(logits - top), 0.0), 0)) + top
        log_probs = logits - log_sum
        for rank in tl.static_range(BEAM):
            best = tl.argmax(log_probs, 0)  # first maximum: ties -> smaller class
            best_value = tl.max(log_probs, 0)
            best_length = best
            if OFFSET:
                best_length = best - num_classes // 2 + src_length
            tl.store(OutLengths + sentence * BEAM + rank, best_length.to(tl.int64))
            tl.store(OutLogProbs + sentence * BEAM + rank, best_value)
            log_probs = tl.where(classes == best, float("-inf"), log_probs)


# The most classes a length head may have for the kernel, which holds them all in one block: compiling
# it for sm_90 takes seconds at 1,024 classes, 1.5 minutes at 2,048 and 9 at 4,096
# (janus_fast.kernels.ahead_of_time, which compiles it for heads of 256 and 1,024). The decoders use the
# PyTorch path for larger heads.
LENGTH_MAX_CLASSES = 1024


def length_candidates(
    encoder_states: torch.Tensor,
    src_lengths: torch.Tensor,
    length_weight: torch.Tensor,
    beam: int,
    *,
    offset: bool = False,
    min_length: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``janus_fast.length.length_candidates_reference`` (same arguments and results).

    encoder_states (B, S, d) fp32/fp16/bf16, src_lengths (B,) int, length_weight (C, d);
    1 <= beam <= 16 and beam <= the number of usable classes.
    """
    if encoder_states.dim() != 3 or src_lengths.shape != (encoder_states.shape[0],):
        raise ValueError(
            f"encoder_states must be (B, S, d) and src_lengths (B,); got {tuple(encoder_states.shape)}, "
            f"{tuple(src_lengths.shape)}"
        )
    if length_weight.dim() != 2 or length_weight.shape[1] != encoder_states.shape[2]:
        raise ValueError(f"length_weight must be (C, {encoder_states.shape[2]}), got {tuple(length_weight.shape)}")
    if not 1 <= beam <= min(16, length_weight.shape[0] - min_length):
        raise ValueError(f"beam must be in [1, {min(16, length_weight.shape[0] - min_length)}], got {beam}")
    if length_weight.shape[0] > LENGTH_MAX_CLASSES:
        raise ValueError(
            f"the Triton length kernel takes at most {LENGTH_MAX_CLASSES} length classes, got {length_weight.shape[0]} "
            "(use length_candidates_reference)"
        )
    if triton is None:
        raise RuntimeError("triton is not installed: use length_candidates_reference")
    if not encoder_states.is_cuda and not interpreting():
        raise ValueError("the Triton length kernel needs CUDA tensors (or TRITON_INTERPRET=1 for testing)")
    batch, seq_len, model_dim = encoder_states.shape
    num_classes = length_weight.shape[0]
    out_lengths = torch.empty(batch, beam, dtype=torch.int64, device=encoder_states.device)
    out_log_probs = torch.empty(batch, beam, dtype=torch.float32, device=encoder_states.device)
    _length_kernel[(batch,)](
        encoder_states,
        src_lengths,
        length_weight,
        out_lengths,
        out_log_probs,
        *encoder_states.stride(),
        *length_weight.stride(),
        seq_len,
        model_dim,
        num_classes,
        min_length,
        BEAM=beam,
        OFFSET=offset,
        **block_sizes(num_classes),
    )
    return out_lengths, out_log_probs


def block_sizes(num_classes: int) -> dict[str, int]:
    """The length kernel's tiles for a head of ``num_classes`` classes (all of them in one block; the
    interpreter's narrower BLOCK_D keeps its NumPy arrays small)."""
    return {"BLOCK_S": 16, "BLOCK_D": 32 if interpreting() else 64, "BLOCK_C": triton.next_power_of_2(num_classes)}
