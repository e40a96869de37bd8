"""Attention masks of JANUS, built from a few integers per sentence.

Every mask here is boolean, ``True`` meaning "may attend". Masks are built with broadcasting only
(no Python loop over the batch) so that they cost O(B * Tq * Tk) comparisons and nothing else. The
Triton attention kernels in ``janus_fast.kernels`` compute the very same predicates inside the
kernel from the same integers; ``two_stream_mask`` is the single definition both are tested against.

Layout of the NAR two-stream decoder input of one sentence with ``a`` content elements of which
``b`` are masked target positions (``docs/method.md``)::

    content  [ observed (a - 2b) | mask slots k=0..b-1 | ground-truth copies k=0..b-1 | pad ]
    query    [ one row per masked position k=0..b-1 | pad ]

The decoder runs both streams as one sequence ``[content | query]`` whose keys/values are the
content part only, so the mask has shape ``(B, Tc + Tq, Tc)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "MaskSpec",
    "MASK_KINDS",
    "padding_mask",
    "causal_mask",
    "two_stream_mask",
    "ar_two_stream_mask",
    "dense_mask",
]

MASK_KINDS = ("padding", "causal", "two_stream", "ar_two_stream")


def padding_mask(key_lengths: torch.Tensor, num_queries: int, num_keys: int) -> torch.Tensor:
    """Bidirectional attention over the first ``key_lengths[i]`` keys.

    Args:
        key_lengths: (B,) int64, number of real keys per sentence (>= 1).
        num_queries: Tq. num_keys: Tk.
    Returns:
        (B, Tq, Tk) bool.
    """
    cols = torch.arange(num_keys, device=key_lengths.device)
    allowed = cols.view(1, 1, -1) < key_lengths.view(-1, 1, 1)
    return allowed.expand(-1, num_queries, -1)


def causal_mask(key_lengths: torch.Tensor, num_queries: int, num_keys: int, query_offset: int = 0) -> torch.Tensor:
    """Causal attention with key padding: query ``i`` sees keys ``j <= i + query_offset``.

    ``query_offset`` is the number of keys already in a key/value cache before the first query.

    Args:
        key_lengths: (B,) int64.
    Returns:
        (B, Tq, Tk) bool.
    """
    device = key_lengths.device
    rows = torch.arange(num_queries, device=device).view(1, -1, 1) + query_offset
    cols = torch.arange(num_keys, device=device).view(1, 1, -1)
    return (cols <= rows) & (cols < key_lengths.view(-1, 1, 1))


def two_stream_mask(
    content_lengths: torch.Tensor,
    num_masked: torch.Tensor,
    num_content: int,
    num_query: int,
) -> torch.Tensor:
    """The JANUS NAR training mask for the stacked ``[content | query]`` sequence.

    Rules (``a`` = content_lengths, ``b`` = num_masked, per sentence; "sees" = may attend):

    * observed rows and mask-slot rows see every observed element and every mask slot;
    * ground-truth copy ``k`` sees the observed elements, mask slots ``j > k`` and copies ``j <= k``;
    * query row ``k`` sees the observed elements, mask slots ``j >= k`` and copies ``j < k``;
    * padding is never seen, and padded rows see nothing (attention gives them zeros).

    Args:
        content_lengths: (B,) int64, ``a`` (observed + 2 * masked).
        num_masked: (B,) int64, ``b``, with ``0 <= 2b <= a``.
        num_content: Tc >= max(a). num_query: Tq >= max(b).
    Returns:
        (B, Tc + Tq, Tc) bool.
    """
    device = content_lengths.device
    a = content_lengths.view(-1, 1, 1)
    b = num_masked.view(-1, 1, 1)
    observed_end = a - 2 * b  # first mask slot
    slots_end = a - b  # first ground-truth copy

    cols = torch.arange(num_content, device=device).view(1, 1, -1)
    col_observed = cols < observed_end
    col_slot = (cols >= observed_end) & (cols < slots_end)
    col_copy = (cols >= slots_end) & (cols < a)
    col_k = torch.where(col_slot, cols - observed_end, cols - slots_end)  # k of a slot / copy column

    # content rows
    rows = torch.arange(num_content, device=device).view(1, -1, 1)
    row_is_copy = (rows >= slots_end) & (rows < a)
    row_k = rows - slots_end
    content = torch.where(
        row_is_copy,
        col_observed | (col_slot & (col_k > row_k)) | (col_copy & (col_k <= row_k)),
        col_observed | col_slot,
    )
    content = content & (rows < a)

    # query rows
    query_k = torch.arange(num_query, device=device).view(1, -1, 1)
    query = col_observed | (col_slot & (col_k >= query_k)) | (col_copy & (col_k < query_k))
    query = query & (query_k < b)

    return torch.cat([content, query], dim=1)


def ar_two_stream_mask(lengths: torch.Tensor, num_positions: int) -> torch.Tensor:
    """The AR two-stream mask for the stacked ``[content | query]`` sequence of ``T`` each.

    Content row ``i`` (token ``y_i`` at position ``i``) sees content ``j <= i``; query row ``i``
    (the mask token at position ``i + 1``, predicting ``y_{i+1}``) sees content ``j <= i``: the
    tokens ``y_0 .. y_i`` and never its own.

    Args:
        lengths: (B,) int64, number of real content positions (target length - 1).
    Returns:
        (B, 2T, T) bool.
    """
    causal = causal_mask(lengths, num_positions, num_positions)
    rows_real = torch.arange(num_positions, device=lengths.device).view(1, -1, 1) < lengths.view(-1, 1, 1)
    causal = causal & rows_real
    return torch.cat([causal, causal], dim=1)


def dense_mask(
    kind: str,
    key_lengths: torch.Tensor,
    num_queries: int,
    num_keys: int,
    num_masked: torch.Tensor | None = None,
    query_offset: int = 0,
) -> torch.Tensor:
    """The (B, Tq, Tk) bool mask of ``kind`` (one of ``MASK_KINDS``) from its integers.

    two_stream: rows are ``[content (Tk) | query (Tq - Tk)]``; ar_two_stream: Tq = 2 Tk.
    """
    if kind == "padding":
        return padding_mask(key_lengths, num_queries, num_keys)
    if kind == "causal":
        return causal_mask(key_lengths, num_queries, num_keys, query_offset)
    if kind == "two_stream":
        if num_masked is None:
            raise ValueError("the two_stream mask needs num_masked")
        return two_stream_mask(key_lengths, num_masked, num_keys, num_queries - num_keys)
    if kind == "ar_two_stream":
        return ar_two_stream_mask(key_lengths, num_keys)
    raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")


@dataclass(frozen=True)
class MaskSpec:
    """Which keys each query may see, from per-sentence integers.

    kind: one of ``MASK_KINDS``. key_lengths: (B,) int64 (for two_stream: a = content lengths).
    num_masked: (B,) int64, b of the two-stream mask. query_offset: keys already cached before the
    first query (causal only).
    """

    kind: str
    key_lengths: torch.Tensor
    num_masked: torch.Tensor | None = None
    query_offset: int = 0

    @staticmethod
    def padding(key_lengths: torch.Tensor) -> MaskSpec:
        return MaskSpec("padding", key_lengths)

    @staticmethod
    def causal(key_lengths: torch.Tensor, query_offset: int = 0) -> MaskSpec:
        return MaskSpec("causal", key_lengths, query_offset=query_offset)

    @staticmethod
    def two_stream(content_lengths: torch.Tensor, num_masked: torch.Tensor) -> MaskSpec:
        return MaskSpec("two_stream", content_lengths, num_masked)

    @staticmethod
    def ar_two_stream(lengths: torch.Tensor) -> MaskSpec:
        return MaskSpec("ar_two_stream", lengths)

    def dense(self, num_queries: int, num_keys: int) -> torch.Tensor:
        """The mask as a (B, Tq, Tk) bool tensor (True = may attend)."""
        return dense_mask(self.kind, self.key_lengths, num_queries, num_keys, self.num_masked, self.query_offset)
