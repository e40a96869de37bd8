"""Pure-PyTorch reference of the mask-predict step: the readable spec of the native op.

It materialises the log-softmax of the masked positions, so it is simple rather than fast; the
native kernels in ``csrc/`` compute the same thing in one pass over the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "mask_predict_remask_reference",
    "mask_predict_step_reference",
    "num_to_remask",
    "speculative_accept_reference",
]


def num_to_remask(lengths: torch.Tensor, iteration: int, num_iterations: int) -> torch.Tensor:
    """Number of real tokens re-masked after ``iteration``: floor((L - 2) * (T - 1 - t) / T).

    Args:
        lengths: (N,) int64 sentence lengths counting bos and eos.
        iteration: t in [0, num_iterations).
        num_iterations: T >= 1.

    Returns:
        (N,) int64, zero on the last iteration.
    """
    return (lengths - 2) * (num_iterations - 1 - iteration) // num_iterations


def mask_predict_step_reference(
    logits: Tensor, tokens: Tensor, scores: Tensor, lengths: Tensor, iteration: int, num_iterations: int, mask_id: int
) -> Tensor:
    """One mask-predict iteration, in place on ``tokens`` and ``scores``.

    Step 1 (fill): every real position ``1 <= p <= lengths[r] - 2`` holding ``mask_id`` gets the
    argmax token over ``v != mask_id`` (ties -> lowest v) and, as score, that token's
    log-softmax over the full vocabulary (fp32). Other positions are not read or changed.
    Non-finite logits follow torch: a NaN candidate is the argmax (the first one), and a row holding
    NaN or +inf anywhere (or only -inf) scores NaN.
    Step 2 (re-mask): the ``num_to_remask`` real positions with the lowest scores (ties -> lower
    position; NaN counts as highest) are set back to ``mask_id``; their scores are kept.

    Args:
        logits: (N, T, V) float32 / bfloat16 / float16 decoder output.
        tokens: (N, T) int64, updated in place.
        scores: (N, T) float32, updated in place.
        lengths: (N,) int64, 2 <= lengths <= T, counting bos and eos.
        iteration: t in [0, num_iterations).
        num_iterations: number of mask-predict iterations (>= 1).
        mask_id: the mask token, in [0, V).

    Returns:
        (N, T) bool, True where step 2 re-masked.
    """
    num_rows, max_length, vocab_size = logits.shape
    positions = torch.arange(max_length, device=tokens.device)
    real = (positions >= 1) & (positions < (lengths - 1).unsqueeze(1))  # (N, T)
    fill = real & (tokens == mask_id)

    # Step 1: argmax over the vocabulary without the mask token, log-softmax over all of it.
    masked_logits = logits[fill].float()  # (K, V)
    log_probs = torch.log_softmax(masked_logits, dim=-1)
    candidates = torch.cat([masked_logits[:, :mask_id], masked_logits[:, mask_id + 1 :]], dim=-1)
    best = candidates.argmax(dim=-1)
    best = best + (best >= mask_id).long()
    tokens[fill] = best
    scores[fill] = log_probs.gather(1, best.unsqueeze(1)).squeeze(1)

    return mask_predict_remask_reference(tokens, scores, lengths, iteration, num_iterations, mask_id)


def mask_predict_remask_reference(
    tokens: Tensor, scores: Tensor, lengths: Tensor, iteration: int, num_iterations: int, mask_id: int
) -> Tensor:
    """Step 2 of ``mask_predict_step_reference`` alone (the spec of ``mask_predict_remask``), in
    place on ``tokens``; arguments as there (mask_id >= 0). Returns (N, T) bool, True where re-masked."""
    num_rows, max_length = tokens.shape
    positions = torch.arange(max_length, device=tokens.device)
    real = (positions >= 1) & (positions < (lengths - 1).unsqueeze(1))  # (N, T)
    # rank real positions by (score, position); padding, bos and eos rank after them
    by_score = torch.sort(scores, dim=1, stable=True).indices  # NaN sorts last
    by_real = torch.sort((~real).gather(1, by_score).to(torch.uint8), dim=1, stable=True).indices
    order = by_score.gather(1, by_real)
    ranks = torch.empty_like(order).scatter_(1, order, positions.expand(num_rows, max_length).contiguous())
    remasked = real & (ranks < num_to_remask(lengths, iteration, num_iterations).unsqueeze(1))
    tokens.masked_fill_(remasked, mask_id)
    return remasked


def speculative_accept_reference(
    draft: Tensor, draft_counts: Tensor, verified: Tensor, relaxed: Tensor | None, eos_id: int
) -> tuple[Tensor, Tensor]:
    """Which drafted tokens a speculative decoding round keeps, per sentence (row).

    Row r drafted ``draft[r, :k]`` (k = ``draft_counts[r]``) after its accepted prefix; ``verified[r,
    i]`` is AR's choice given the prefix and ``draft[r, :i]`` (i <= k). Kept: the drafted tokens up to
    the first that neither equals its verified token nor is marked in ``relaxed`` (None: none
    are), then the verified token at that position (``verified[r, k]`` when all k are kept); the
    kept tokens end after the first eos among them.

    Args:
        draft: (N, K) int64.
        draft_counts: (N,) int64 in [0, K].
        verified: (N, K + 1) int64.
        relaxed: None or (N, K) bool.
        eos_id: the end-of-sentence id.

    Returns:
        kept (N,) int64 in [1, k + 1] and tokens (N, K + 1) int64: the kept tokens, then -1.
    """
    rows, width = draft.shape
    kept = torch.empty(rows, dtype=torch.long, device=draft.device)
    tokens = torch.full((rows, width + 1), -1, dtype=torch.long, device=draft.device)
    for r, (row_draft, row_verified, count) in enumerate(zip(draft.tolist(), verified.tolist(), draft_counts.tolist())):
        if not 0 <= count <= width:
            raise ValueError(f"speculative_accept: draft count {count} outside [0, {width}]")
        out: list[int] = []
        for i in range(count + 1):
            drafted = i < count and (row_draft[i] == row_verified[i] or (relaxed is not None and bool(relaxed[r, i])))
            out.append(row_draft[i] if drafted else row_verified[i])
            if not drafted or out[-1] == eos_id:
                break
        kept[r] = len(out)
        tokens[r, : len(out)] = torch.tensor(out, dtype=torch.long)
    return kept, tokens
