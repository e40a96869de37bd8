"""The optional int8 path: close to fp32, well-formed outputs, never saved."""

from __future__ import annotations

import pytest
import torch
from conftest import random_model

from janus_fast import engine
from janus_fast.checkpoint import CheckpointError, save_pretrained
from janus_fast.quantize import quantize_int8


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
        engine.mask_predict(quantized, src, lengths, 4, 3),
        engine.ar_search(quantized, src, lengths, 1),
    ):
        assert len(hypotheses.tokens) == 5
        assert all(not specials & set(row) for row in hypotheses.tokens)
        assert all(torch.isfinite(torch.tensor(hypotheses.scores)))


def test_int8_copy_cannot_be_saved(tmp_path):
    with pytest.raises(CheckpointError, match="int8"):
        save_pretrained(quantize_int8(random_model(0)), str(tmp_path / "ckpt"))
