"""The training fast paths against their references: the fused JANUS token loss (values and
gradients) against the autograd formulation, the explicit-softmax attention against SDPA, and the
CPU dropout's statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from janus_fast.attention import explicit_attention
from janus_fast.masks import dense_mask
from janus_fast.model import Dropout
from janus_fast.training.losses import LossWeights, compute_loss


def loss_inputs(seed: int, dtype: torch.dtype, vocab: int = 50):
    generator = torch.Generator().manual_seed(seed)
    batch, length, width = 4, 10, 6
    tgt = torch.randint(5, vocab, (batch, length), generator=generator)
    tgt_lengths = torch.tensor([10, 7, 4, 3])
    positions = torch.tensor([[1, 3, 4, 7, 8, 0], [2, 4, 5, 0, 0, 0], [1, 2, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    outputs = {
        "ar_logits": (3 * torch.randn(batch, length - 1, vocab, generator=generator)).to(dtype),
        "nar_logits": (3 * torch.randn(batch, width, vocab, generator=generator)).to(dtype),
        "aux_logits": (3 * torch.randn(batch, width, vocab, generator=generator)).to(dtype),
        "masked_positions": positions,
        "masked_valid": positions > 0,
        "length_logits": torch.randn(batch, 16, generator=generator),
    }
    return outputs, tgt, tgt_lengths, torch.tensor([9, 6, 3, 2])


@pytest.mark.parametrize("detach_ar", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_loss_matches_autograd_reference(seed, detach_ar):
    weights = LossWeights(kl_ar_nar=0.7, kl_ar_aux=2.0, ce_nar_aux=0.3, kl_nar_aux=1.5, detach_ar_in_kl=detach_ar)
    outputs, tgt, tgt_lengths, length_targets = loss_inputs(seed, torch.float64)
    results = []
    for fused in (False, True):
        leaves = {name: outputs[name].clone().requires_grad_() for name in ("ar_logits", "nar_logits", "aux_logits")}
        total, terms = compute_loss({**outputs, **leaves}, tgt, tgt_lengths, length_targets, "janus", weights, fused)
        (3.0 * total).backward()
        results.append((float(total.detach()), terms, {name: leaf.grad for name, leaf in leaves.items()}))
    (ref_total, ref_terms, ref_grads), (total, terms, grads) = results
    assert total == pytest.approx(ref_total, rel=1e-5)
    assert terms.keys() == ref_terms.keys()
    for name in ref_terms:
        assert terms[name] == pytest.approx(ref_terms[name], rel=1e-5, abs=1e-6), name
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6)


def test_detached_ar_gets_only_its_cross_entropy_gradient():
    outputs, tgt, tgt_lengths, length_targets = loss_inputs(0, torch.float32)
    grads = {}
    for kl_ar_nar in (0.0, 5.0):
        ar = outputs["ar_logits"].clone().requires_grad_()
        weights = LossWeights(kl_ar_nar=kl_ar_nar, kl_ar_aux=kl_ar_nar, detach_ar_in_kl=True)
        total, _ = compute_loss({**outputs, "ar_logits": ar}, tgt, tgt_lengths, length_targets, "janus", weights, True)
        total.backward()
        grads[kl_ar_nar] = ar.grad
    torch.testing.assert_close(grads[5.0], grads[0.0])


def test_fused_loss_bf16_logits_close_to_fp32():
    """Under bf16 autocast the loss gets bf16 logits: its fused value and gradients must be those of
    the fp32 logits up to the rounding of the inputs to bf16 (the pass computes in fp32)."""
    names = ("ar_logits", "nar_logits", "aux_logits")
    outputs, tgt, tgt_lengths, length_targets = loss_inputs(3, torch.float32)

    def fused(logits: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
        leaves = {name: tensor.clone().requires_grad_() for name, tensor in logits.items()}
        total, _ = compute_loss({**outputs, **leaves}, tgt, tgt_lengths, length_targets, "janus", LossWeights(), True)
        total.backward()
        return float(total.detach()), {name: leaf.grad for name, leaf in leaves.items()}

    fp32, fp32_grads = fused({name: outputs[name] for name in names})
    rounded = {name: outputs[name].to(torch.bfloat16) for name in names}
    bf16, bf16_grads = fused(rounded)
    same_values, same_values_grads = fused({name: tensor.float() for name, tensor in rounded.items()})
    # the loss of the bf16 logits is the fp32 loss of the same (rounded) values: the pass upcasts
    # before any arithmetic and sums in float64, so only the inputs' rounding separates bf16 from fp32
    assert bf16 == pytest.approx(same_values, rel=1e-6)
    # ... which moves the loss, to first order, by at most sum |dL/dz| |dz| with |dz| <= 2^-9 |z|
    # (bf16 keeps 8 significant bits); here ~0.16 on a loss of ~43, the change itself ~0.004
    bound = 2**-9 * sum(float((fp32_grads[name] * outputs[name]).abs().sum()) for name in names)
    assert bf16 != fp32 and abs(bf16 - fp32) <= bound
    for name in names:
        # bf16 gradients: the fp32 ones rounded (relative spacing 2^-8); the AR logits' two parts
        # (cross-entropy, then the KL terms) are each rounded before they add, so where they cancel
        # the error is that of the larger part: at most 2^-8 of the largest gradient
        assert bf16_grads[name].dtype == torch.bfloat16
        expected = same_values_grads[name]
        atol = 2**-8 * float(expected.abs().max())
        torch.testing.assert_close(bf16_grads[name].float(), expected, rtol=2**-8, atol=atol)


@pytest.mark.parametrize("kind", ["padding", "causal", "two_stream", "ar_two_stream"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_explicit_attention_matches_sdpa(kind, dtype):
    generator = torch.Generator().manual_seed(5)
    batch, heads, keys, dim = 3, 2, 8, 16
    lengths = torch.tensor([8, 5, 2])
    num_masked = torch.tensor([3, 2, 1]) if kind == "two_stream" else None
    queries = {"padding": keys, "causal": keys, "two_stream": keys + 3, "ar_two_stream": 2 * keys}[kind]
    mask = dense_mask(kind, lengths, queries, keys, num_masked)[:, None]
    q, k, v = (torch.randn(batch, heads, n, dim, generator=generator) for n in (queries, keys, keys))
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)
    expected = torch.where(mask.any(-1, keepdim=True), expected, 0.0)  # rows with no key -> zeros
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = explicit_attention(*leaves, mask)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)
    out.float().sum().backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves)


def test_dropout_rate_scale_and_eval():
    torch.manual_seed(0)
    dropout = Dropout(0.3).train()
    x = torch.ones(400_000)
    y = dropout(x)
    kept = y != 0
    assert float(kept.float().mean()) == pytest.approx(0.7, abs=0.005)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.01)  # inverted scaling keeps the mean
    assert torch.equal(dropout.eval()(x), x)
    with pytest.raises(ValueError):
        Dropout(1.0)
