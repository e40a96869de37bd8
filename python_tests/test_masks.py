"""The vectorised mask builders against direct, loop-based constructions of the method's rules."""

from __future__ import annotations

import random

import torch

from janus_fast.masks import ar_two_stream_mask, causal_mask, padding_mask, two_stream_mask


def element_kind(index: int, a: int, b: int) -> tuple[str, int]:
    """(kind, k) of content element ``index`` in ``[observed (a-2b) | slots (b) | copies (b)]``."""
    if index >= a:
        return "pad", -1
    if index < a - 2 * b:
        return "observed", -1
    if index < a - b:
        return "slot", index - (a - 2 * b)
    return "copy", index - (a - b)


def may_see(row_kind: str, row_k: int, col_kind: str, col_k: int) -> bool:
    """The rules of docs/method.md, written out case by case."""
    if row_kind == "pad" or col_kind == "pad":
        return False
    if row_kind in ("observed", "slot"):
        return col_kind in ("observed", "slot")
    if row_kind == "copy":
        return (
            col_kind == "observed" or (col_kind == "slot" and col_k > row_k) or (col_kind == "copy" and col_k <= row_k)
        )
    if row_kind == "query":
        return (
            col_kind == "observed" or (col_kind == "slot" and col_k >= row_k) or (col_kind == "copy" and col_k < row_k)
        )
    raise AssertionError(row_kind)


def loop_two_stream(a: int, b: int, num_content: int, num_query: int) -> torch.Tensor:
    mask = torch.zeros(num_content + num_query, num_content, dtype=torch.bool)
    for row in range(num_content + num_query):
        if row < num_content:
            row_kind, row_k = element_kind(row, a, b)
        else:
            k = row - num_content
            row_kind, row_k = ("query", k) if k < b else ("pad", -1)
        for col in range(num_content):
            col_kind, col_k = element_kind(col, a, b)
            mask[row, col] = may_see(row_kind, row_k, col_kind, col_k)
    return mask


def test_two_stream_mask_matches_loop_construction_for_random_a_b():
    rng = random.Random(0)
    for _ in range(20):
        batch = rng.randint(1, 5)
        pairs = []
        for _ in range(batch):
            b = rng.randint(0, 6)
            observed = rng.randint(0, 6) if b else rng.randint(1, 6)
            pairs.append((observed + 2 * b, b))
        num_content = max(a for a, _ in pairs) + rng.randint(0, 2)
        num_query = max(max(b for _, b in pairs), 1) + rng.randint(0, 2)
        a = torch.tensor([p[0] for p in pairs])
        b = torch.tensor([p[1] for p in pairs])
        built = two_stream_mask(a, b, num_content, num_query)
        for i, (ai, bi) in enumerate(pairs):
            assert torch.equal(built[i], loop_two_stream(ai, bi, num_content, num_query)), (ai, bi)


def test_method_doc_example_masked_positions_2_3_5():
    # y1..y6 with masked {2, 3, 5}: content = bos y1 y4 y6 eos | m2 m3 m5 | y2 y3 y5
    a, b = 8 + 3, 3
    mask = two_stream_mask(torch.tensor([a]), torch.tensor([b]), a, b)[0]
    query_for_y3 = mask[a + 1]  # k = 1
    observed = list(range(5))
    slots, copies = [5, 6, 7], [8, 9, 10]
    seen = set(torch.nonzero(query_for_y3).flatten().tolist())
    # P_AUX(y3 | x, y1, y2, y4, m5, y6): observed, true y2 (copy 0), masks at own and later slots
    assert seen == set(observed) | {copies[0]} | {slots[1], slots[2]}


def test_ar_two_stream_mask_is_causal_for_both_streams():
    lengths = torch.tensor([4, 2])
    mask = ar_two_stream_mask(lengths, 4)
    for i, length in enumerate(lengths.tolist()):
        for row in range(8):
            position = row % 4
            for col in range(4):
                expected = position < length and col <= position
                assert bool(mask[i, row, col]) == expected


def test_padding_and_causal_masks():
    lengths = torch.tensor([3, 1])
    pad = padding_mask(lengths, 2, 4)
    assert pad.shape == (2, 2, 4)
    assert pad[0, 1].tolist() == [True, True, True, False]
    assert pad[1, 0].tolist() == [True, False, False, False]
    causal = causal_mask(torch.tensor([4]), 2, 4, query_offset=2)
    assert causal[0].tolist() == [[True, True, True, False], [True, True, True, True]]
