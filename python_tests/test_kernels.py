"""Triton kernels through the interpreter (TRITON_INTERPRET=1, set in conftest.py) against float64
PyTorch references, plus the kernel's JANUS mask against the model's mask builder."""

from __future__ import annotations

import itertools

import pytest
import torch
from janus_fast.kernels import attention_reference, fused_attention, length_candidates, length_candidates_reference

from janus_fast import kernels
from janus_fast.masks import MaskSpec, dense_mask

if not kernels.TRITON_AVAILABLE or not kernels.interpreting():
    pytest.fail("the kernel tests need triton installed and TRITON_INTERPRET=1 (set by conftest.py)")

TOLERANCE = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}


def random_qkv(batch, heads, num_queries, num_keys, head_dim, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    shape_q, shape_k = (batch, heads, num_queries, head_dim), (batch, heads, num_keys, head_dim)
    return [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype) for s in (shape_q, shape_k, shape_k)]


def check(mask_kind, q, k, v, key_lengths, num_masked=None, query_offset=0):
    mask = MaskSpec(mask_kind, key_lengths, num_masked, query_offset)
    out = fused_attention(q, k, v, mask)
    expected = attention_reference(q.double(), k.double(), v.double(), mask)
    assert out.dtype == q.dtype and not out.isnan().any()
    torch.testing.assert_close(out.double(), expected, atol=TOLERANCE[q.dtype], rtol=TOLERANCE[q.dtype])


@pytest.mark.parametrize("dtype,head_dim", [(torch.float32, 32), (torch.float16, 64), (torch.bfloat16, 128)])
def test_padding_self_and_cross_attention(dtype, head_dim):
    q, k, v = random_qkv(3, 2, 7, 19, head_dim, dtype, seed=head_dim)
    check("padding", q, k, v, torch.tensor([19, 1, 0]))  # full, length 1, fully padded (zeros)
    q, k, v = random_qkv(2, 1, 17, 17, head_dim, dtype, seed=1)
    check("padding", q, k, v, torch.tensor([17, 9]))


@pytest.mark.parametrize("query_offset", [0, 5])
def test_causal_with_and_without_cache_offset(query_offset):
    q, k, v = random_qkv(2, 2, 9, 9 + query_offset, 32, torch.float32, seed=query_offset)
    check("causal", q, k, v, torch.tensor([9 + query_offset, 4]), query_offset=query_offset)


def test_janus_two_stream_cases():
    # (a, b) per sentence: b = 0, 2b = a (no observed element), typical, and padding
    pairs = [(8, 0), (6, 3), (11, 3), (5, 1)]
    num_content = 12
    num_query = 4
    q, k, v = random_qkv(len(pairs), 2, num_content + num_query, num_content, 32, torch.float32, seed=3)
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    check("two_stream", q, k, v, a, num_masked=b)


def test_ar_two_stream():
    q, k, v = random_qkv(2, 2, 20, 10, 64, torch.float16, seed=4)
    check("ar_two_stream", q, k, v, torch.tensor([10, 3]))


def test_kernel_mask_equals_model_mask_builder():
    """With V = identity over the keys, the kernel's output row shows which keys it attended to."""
    for (a, b), kind in itertools.product([(9, 2), (4, 2), (7, 0), (12, 5)], ["two_stream", "ar_two_stream"]):
        num_keys = 12
        num_queries = num_keys + 5 if kind == "two_stream" else 2 * num_keys
        q = torch.zeros(1, 1, num_queries, 32)  # equal scores: uniform weights over visible keys
        k = torch.zeros(1, 1, num_keys, 32)
        v = torch.zeros(1, 1, num_keys, 32)
        v[0, 0, torch.arange(num_keys), torch.arange(num_keys)] = 1.0
        key_lengths = torch.tensor([a])
        num_masked = torch.tensor([b]) if kind == "two_stream" else None
        out = fused_attention(q, k, v, MaskSpec(kind, key_lengths, num_masked))
        seen = out[0, 0, :, :num_keys] > 0
        expected = dense_mask(kind, key_lengths, num_queries, num_keys, num_masked)[0]
        assert torch.equal(seen, expected), (a, b, kind)


def test_backward_matches_reference():
    q, k, v = random_qkv(2, 1, 10, 6, 32, torch.float64, seed=5)
    q, k, v = (t.float().requires_grad_(True) for t in (q, k, v))
    key_lengths, num_masked = torch.tensor([6, 4]), torch.tensor([2, 1])
    mask = MaskSpec.two_stream(key_lengths, num_masked)
    fused_attention(q, k, v, mask).sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    attention_reference(q, k, v, mask).sum().backward()
    for got, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(got, t.grad, atol=1e-5, rtol=1e-5)


def test_attention_misuse_raises():
    q, k, v = random_qkv(1, 1, 4, 4, 32, torch.float32, seed=6)
    lengths = torch.tensor([4])
    with pytest.raises(ValueError, match="head dim"):
        fused_attention(q[..., :16], k[..., :16], v[..., :16], MaskSpec.padding(lengths))
    with pytest.raises(ValueError, match="mask kind 'diagonal'"):
        fused_attention(q, k, v, MaskSpec("diagonal", lengths))
    with pytest.raises(ValueError, match="num_masked"):
        fused_attention(q, k, v, MaskSpec("two_stream", lengths))
    with pytest.raises(ValueError, match="shape"):
        fused_attention(q, k[:, :, :, :16], v, MaskSpec.padding(lengths))
    with pytest.raises(TypeError, match="dtype"):
        fused_attention(q, k.double(), v, MaskSpec.padding(lengths))
    with pytest.raises(TypeError, match="MaskSpec"):
        fused_attention(q, k, v, "padding")


@pytest.mark.parametrize("offset", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_length_candidates_match_reference(offset, dtype):
    generator = torch.Generator().manual_seed(7)
    states = torch.randn(4, 13, 48, generator=generator).to(dtype)
    src_lengths = torch.tensor([13, 1, 6, 9])
    weight = torch.randn(256, 48, generator=generator).to(dtype)
    lengths, log_probs = length_candidates(states, src_lengths, weight, 3, offset=offset, min_length=3)
    ref_lengths, ref_log_probs = length_candidates_reference(
        states, src_lengths, weight, 3, offset=offset, min_length=3
    )
    assert torch.equal(lengths, ref_lengths)
    torch.testing.assert_close(log_probs, ref_log_probs, atol=1e-4, rtol=1e-4)
    assert (lengths >= 3).all()


def test_length_ties_prefer_shorter_lengths():
    states = torch.zeros(1, 4, 32)
    weight = torch.zeros(256, 32)  # every class equally likely
    lengths, _ = length_candidates(states, torch.tensor([4]), weight, 3)
    assert lengths.tolist() == [[2, 3, 4]]


def test_length_misuse_raises():
    with pytest.raises(ValueError, match="beam"):
        length_candidates(torch.zeros(1, 4, 32), torch.tensor([4]), torch.zeros(256, 32), 0)
    with pytest.raises(ValueError, match="length_weight"):
        length_candidates(torch.zeros(1, 4, 32), torch.tensor([4]), torch.zeros(256, 16), 2)
    with pytest.raises(ValueError, match="at most 1024 length classes, got 1025"):  # minutes to compile on a GPU
        length_candidates(torch.zeros(1, 4, 32), torch.tensor([4]), torch.zeros(1025, 32), 2)


def test_model_forward_through_triton_equals_torch_path(monkeypatch):
    """The model's attention dispatcher on the Triton kernel (forced) gives the same JANUS outputs."""
    from conftest import random_model
    from test_model import make_batch

    model = random_model(d_model=64, num_heads=2, ffn_dim=64)  # head dim 32
    src, src_lengths, tgt, tgt_lengths, masked = make_batch()
    with torch.no_grad():
        monkeypatch.setenv("JANUS_FAST_ATTENTION_BACKEND", "torch")
        expected = model(src, src_lengths, tgt, tgt_lengths, masked, "janus")
        monkeypatch.setenv("JANUS_FAST_ATTENTION_BACKEND", "triton")
        got = model(src, src_lengths, tgt, tgt_lengths, masked, "janus")
    for name in ("ar_logits", "nar_logits", "aux_logits", "length_logits"):
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("d_model", "offset"), [(256, False), (64, True)])
def test_decoders_length_candidates_kernel_equals_torch_branch(monkeypatch, d_model, offset):
    """``search.length_candidates`` through the kernel (forced) and through the torch branch, at
    the shipped model's width too (the branch the decoders take on CUDA)."""
    from conftest import random_model

    from janus_fast.decoding.candidates import length_candidates

    model = random_model(d_model=d_model, num_heads=4, ffn_dim=64, length_offset=offset)
    src = torch.randint(5, 60, (4, 9))
    encoder_out = model.encode(src, torch.tensor([9, 1, 4, 7]))
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("JANUS_FAST_LENGTH_BACKEND", backend)
        results[backend] = length_candidates(model, encoder_out, 3)
    assert torch.equal(results["triton"][0], results["torch"][0])
    torch.testing.assert_close(results["triton"][1], results["torch"][1], atol=1e-4, rtol=1e-4)
