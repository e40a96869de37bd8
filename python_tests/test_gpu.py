"""The GPU path on a GPU: compiled Triton kernels, the CUDA mask_predict_step and decoding on the
device, each against its reference. Run by ``scripts/gpu_check.sh`` (JANUS_FAST_GPU_TESTS=1); with
``--dry-run`` the same tests run on the CPU with tiny sizes (Triton interpreter, CPU native op)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from conftest import MULTI30K, random_model
from janus_fast.kernels import attention_reference, fused_attention, length_candidates, length_candidates_reference
from test_model import make_batch

from janus_fast import kernels
from janus_fast.masks import MaskSpec
from janus_fast.ops import mask_predict_step, mask_predict_step_reference

pytestmark = pytest.mark.gpu
DRY_RUN = os.environ.get("JANUS_FAST_GPU_DRY_RUN") == "1" or not torch.cuda.is_available()
DEVICE = "cpu" if DRY_RUN else "cuda"
TOLERANCE = {torch.float32: 2e-3, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}  # fp32 dots may use tf32
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (32,) if DRY_RUN else (32, 64, 128)


def qkv(batch, heads, num_queries, num_keys, head_dim, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, n, head_dim) for n in (num_queries, num_keys, num_keys)]
    return [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize(("kind", "dtype", "head_dim"), list(itertools.product(kernels.MASK_KINDS, DTYPES, HEAD_DIMS)))
def test_fused_attention_compiled_matches_reference(kind, dtype, head_dim):
    batch, num_keys = (3, 9) if DRY_RUN else (16, 70)
    num_queries = {"padding": num_keys, "causal": num_keys, "two_stream": num_keys + 5, "ar_two_stream": 2 * num_keys}
    num_queries = num_queries[kind]
    q, k, v = qkv(batch, 2, num_queries, num_keys, head_dim, dtype, seed=head_dim)
    generator = torch.Generator().manual_seed(1)
    key_lengths = torch.randint(1, num_keys + 1, (batch,), generator=generator)  # ragged, length 1 possible
    key_lengths[0] = num_keys
    num_masked = None
    if kind == "two_stream":
        key_lengths = key_lengths.clamp(min=2)
        num_masked = torch.div(key_lengths, 2, rounding_mode="floor").clamp(max=num_queries - num_keys)
    if kind == "ar_two_stream":
        key_lengths = key_lengths.clamp(max=num_keys)
    expected = attention_reference(q, k, v, MaskSpec(kind, key_lengths, num_masked))
    on_device = [t.to(DEVICE, dtype) for t in (q, k, v)]
    mask = MaskSpec(kind, key_lengths.to(DEVICE), None if num_masked is None else num_masked.to(DEVICE))
    got = fused_attention(*on_device, mask)
    torch.testing.assert_close(got.cpu().double(), expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("offset", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_length_kernel_compiled_matches_reference(offset, dtype):
    generator = torch.Generator().manual_seed(7)
    batch, length, width = (4, 13, 48) if DRY_RUN else (64, 40, 256)
    states = torch.randn(batch, length, width, generator=generator).to(dtype)
    src_lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    weight = torch.randn(256, width, generator=generator).to(dtype)
    expected = length_candidates_reference(states, src_lengths, weight, 3, offset=offset, min_length=3)
    got = length_candidates(states.to(DEVICE), src_lengths.to(DEVICE), weight.to(DEVICE), 3, offset=offset,
                            min_length=3)  # fmt: skip
    assert torch.equal(got[0].cpu(), expected[0])
    torch.testing.assert_close(got[1].cpu(), expected[1], atol=1e-3, rtol=1e-3)


def test_decoders_take_the_length_kernel_for_heads_it_compiles_quickly():
    """``use_length_kernel`` on the device's states: the kernel for the default 256 classes, the
    PyTorch path past ``LENGTH_MAX_CLASSES`` (a 4,096-class head took 9 minutes to compile)."""
    from janus_fast.decoding.candidates import use_length_kernel

    states = torch.zeros(2, 5, 32, device=DEVICE)
    assert use_length_kernel(states, 3, kernels.LENGTH_MAX_CLASSES + 1) is False
    assert use_length_kernel(states, 3, 256) is (not DRY_RUN)  # the dry run's CPU states: PyTorch


def test_native_mask_predict_step_on_device_matches_reference():
    for seed, (rows, width, vocab) in enumerate([(3, 7, 50), (8, 20, 300)] + ([] if DRY_RUN else [(192, 32, 8000)])):
        generator = torch.Generator().manual_seed(seed)
        logits = (4 * torch.randn(rows, width, vocab, generator=generator)).round()  # ties included
        lengths = torch.randint(2, width + 1, (rows,), generator=generator)
        mask_id = seed + 2
        for iteration in range(4):
            tokens = torch.full((rows, width), mask_id)
            scores = torch.zeros(rows, width)
            expected = [tokens.clone(), scores.clone()]
            remasked = mask_predict_step_reference(logits, *expected, lengths, 3, 4, mask_id)  # fill only
            got = [tokens.to(DEVICE), scores.to(DEVICE)]
            mask_predict_step(logits.to(DEVICE), *got, lengths.to(DEVICE), 3, 4, mask_id)
            assert torch.equal(got[0].cpu(), expected[0]) and not remasked.any()
            torch.testing.assert_close(got[1].cpu(), expected[1], rtol=1e-5, atol=1e-4)
            # re-mask from the same scores
            filled = [expected[0].clone(), expected[1].clone()]
            want = mask_predict_step_reference(logits, *filled, lengths, iteration, 4, mask_id)
            on_device = [expected[0].to(DEVICE), expected[1].to(DEVICE)]
            have = mask_predict_step(logits.to(DEVICE), *on_device, lengths.to(DEVICE), iteration, 4, mask_id)
            assert torch.equal(have.cpu(), want) and torch.equal(on_device[0].cpu(), filled[0])


def test_model_forward_and_backward_through_triton_equal_torch_path(monkeypatch):
    model = random_model(d_model=64, num_heads=2, ffn_dim=64).to(DEVICE)  # head dim 32
    batch = [t.to(DEVICE) for t in make_batch()]
    results = {}
    for backend in ("torch", "triton"):
        monkeypatch.setenv("JANUS_FAST_ATTENTION_BACKEND", backend)
        model.zero_grad()
        out = model(*batch, "janus")
        loss = sum(out[name].float().square().mean() for name in ("ar_logits", "nar_logits", "aux_logits"))
        loss.backward()
        grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        results[backend] = ({k: v.detach() for k, v in out.items()}, grads)
    for name in ("ar_logits", "nar_logits", "aux_logits", "length_logits"):
        torch.testing.assert_close(results["triton"][0][name], results["torch"][0][name], atol=2e-3, rtol=2e-3)
    for name, grad in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, atol=2e-3, rtol=2e-3)


def test_shipped_model_decodes_the_same_on_the_device():
    from janus_fast.data import read_lines
    from janus_fast.translator import Translator

    count = 4 if DRY_RUN else 200
    sources = read_lines(os.path.join(MULTI30K, "test_2016_flickr.de.gz"))[:count]
    on_cpu = Translator.from_pretrained(device="cpu")
    on_device = Translator.from_pretrained(device=DEVICE)
    for options in ({"mode": "nar", "iterations": 4}, {"mode": "ar", "beam": 1}):
        expected, got = on_cpu.translate(sources, **options), on_device.translate(sources, **options)
        same = sum(a == b for a, b in zip(expected, got))
        assert same >= 0.99 * count, (options, same, count)


def test_speculative_accept_on_device_matches_reference():
    from janus_fast.ops import speculative_accept, speculative_accept_reference

    generator = torch.Generator().manual_seed(3)
    rows, width = (16, 6) if DRY_RUN else (4096, 12)
    draft = torch.randint(4, 12, (rows, width), generator=generator)
    verified = torch.randint(4, 12, (rows, width + 1), generator=generator)
    verified[:, :width] = torch.where(torch.rand(rows, width, generator=generator) < 0.7, draft, verified[:, :width])
    verified[torch.rand(rows, width + 1, generator=generator) < 0.1] = 3
    counts = torch.randint(0, width + 1, (rows,), generator=generator)
    relaxed = torch.rand(rows, width, generator=generator) < 0.2
    for marks in (None, relaxed):
        on_device = speculative_accept(
            draft.to(DEVICE), counts.to(DEVICE), verified.to(DEVICE), None if marks is None else marks.to(DEVICE), 3
        )
        expected = speculative_accept_reference(draft, counts, verified, marks, 3)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(on_device, expected))


def test_speculative_decoding_on_the_device_gives_ar_greedy():
    """Mode spec on the device (PyTorch passes) against AR greedy on the same device."""
    from janus_fast.data import read_lines
    from janus_fast.translator import Translator

    count = 4 if DRY_RUN else 200
    sources = read_lines(os.path.join(MULTI30K, "test_2016_flickr.de.gz"))[:count]
    translator = Translator.from_pretrained(device=DEVICE)
    greedy = translator.translate(sources, mode="ar")
    from janus_fast.decoding.options import SpeculativeOptions

    always = SpeculativeOptions(speculate_up_to=0)  # speculation in batches of 16 too, not AR greedy's steps
    spec = translator.translate(sources, mode="spec", batch_size=1 if DRY_RUN else 16, speculative=always)
    same = sum(a == b for a, b in zip(greedy, spec))
    assert same >= 0.99 * count, (same, count)  # tf32 products may differ at near-ties
