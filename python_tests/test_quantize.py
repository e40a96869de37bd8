"""The optional int8 path: close to fp32, well-formed outputs, never saved."""

from __future__ import annotations

import pytest
import torch
from conftest import engine_decode, random_model

from janus_fast import quantize
from janus_fast.checkpoint import CheckpointError, save_pretrained
from janus_fast.native.cpu_features import has_avx512_vnni
from janus_fast.quantize import FullRangeDynamicLinear, dynamic_linear_type, quantize_int8


def test_int8_logits_close_to_fp32_and_original_untouched():
    model = random_model(0)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    quantized = quantize_int8(model)
    src = torch.randint(5, 60, (4, 9), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([9, 4, 7, 1])
    tokens = torch.randint(5, 60, (4, 8), generator=torch.Generator().manual_seed(1))
    target_lengths = torch.tensor([8, 5, 6, 3])
    with torch.inference_mode():
        expected = model.nar_logits(tokens, target_lengths, model.encode(src, lengths))
        got = quantized.nar_logits(tokens, target_lengths, quantized.encode(src, lengths))
    assert isinstance(quantized.output_projection, torch.ao.nn.quantized.dynamic.Linear)
    error = (got - expected).abs().max() / expected.abs().max()
    assert 0 < error < 0.05  # quantized (not identical) yet close
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert model.output_projection is None


def test_int8_engine_decodes_both_ways():
    """Dynamic int8 scales activations per call, so outputs are close to fp32, not equal (and may
    depend on the batch): here only well-formedness is exact."""
    model = random_model(1)
    quantized = quantize_int8(model)
    src = torch.randint(5, 60, (5, 10), generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([10, 3, 7, 1, 9])
    specials = {0, 1, 2, 3, 4}
    for hypotheses in (
        engine_decode(quantized, src, lengths, mode="nar", iterations=4, length_beam=3),
        engine_decode(quantized, src, lengths, beam=1),
    ):
        assert len(hypotheses.tokens) == 5
        assert all(not specials & set(row) for row in hypotheses.tokens)
        assert all(torch.isfinite(torch.tensor(hypotheses.scores)))


def test_int8_copy_cannot_be_saved(tmp_path):
    with pytest.raises(CheckpointError, match="int8"):
        save_pretrained(quantize_int8(random_model(0)), str(tmp_path / "ckpt"))


def emulated_dynamic_linear(quantized: torch.nn.Module, x: torch.Tensor, activation_levels: int) -> torch.Tensor:
    """float64 model of a dynamic int8 linear: x quantized per tensor to 0..activation_levels with
    the range widened to include 0, times the module's own per-channel int8 weights, plus bias."""
    weight = quantized.weight()
    scales, levels = weight.q_per_channel_scales().double(), weight.int_repr().double()
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (high - low) / activation_levels
    zero_point = round(-low / scale)
    x_levels = torch.clamp(torch.round(x.double() / scale) + zero_point, 0, activation_levels)
    return ((x_levels - zero_point) * scale) @ (levels * scales[:, None]).T + quantized.bias().double()


@pytest.mark.parametrize("full_range", [False, True])
def test_dynamic_linear_activation_range(full_range):
    """Full range (VNNI CPUs) quantizes activations to 256 levels, PyTorch's default to 128: each
    module matches its own float64 model and not the other's."""
    if full_range and not has_avx512_vnni():
        pytest.skip("full-range int8 activations are used (and exact) only where the CPU reports avx512_vnni")
    linear = torch.nn.Linear(64, 48)
    linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    quantized = dynamic_linear_type(full_range).from_float(linear)
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(3)) * 3 + 0.5
    got = quantized(x).double()
    levels, other = (255, 127) if full_range else (127, 255)
    assert (got - emulated_dynamic_linear(quantized, x, levels)).abs().max() < 1e-5
    assert (got - emulated_dynamic_linear(quantized, x, other)).abs().max() > 1e-2


def test_activation_range_follows_the_cpu(monkeypatch):
    for reports_vnni, expected in ((True, FullRangeDynamicLinear), (False, torch.ao.nn.quantized.dynamic.Linear)):
        monkeypatch.setattr(quantize, "has_avx512_vnni", lambda reports_vnni=reports_vnni: reports_vnni)
        quantized = quantize_int8(random_model(0))
        assert type(quantized.output_projection) is expected
        linears = [module for module in quantized.modules() if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)]
        assert len(linears) > 10 and all(type(module) is expected for module in linears)
