"""The fast engine gives the reference decoders' outputs, token for token."""

from __future__ import annotations

import pytest
import torch
from conftest import random_model

from janus_fast import engine
from janus_fast.decoding import ar_search, generate, mask_predict


def random_sources(seed: int, batch: int = 6, vocab: int = 60):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (batch,), generator=generator)
    src = torch.randint(5, vocab, (batch, int(lengths.max())), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        src[row, length:] = 0
    return src, lengths


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iterations,length_beam", [(1, 1), (2, 3), (4, 3), (10, 2)])
def test_engine_mask_predict_equals_reference(seed, iterations, length_beam):
    model = random_model(seed)
    src, lengths = random_sources(seed)
    expected = mask_predict(model, src, lengths, iterations, length_beam)
    got = engine.mask_predict(model, src, lengths, iterations, length_beam)
    assert got.tokens == expected.tokens
    assert got.scores == pytest.approx(expected.scores, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beam", [1, 4])
def test_engine_ar_equals_reference(seed, beam):
    model = random_model(seed)
    src, lengths = random_sources(seed + 10)
    expected = ar_search(model, src, lengths, beam=beam)
    got = engine.ar_search(model, src, lengths, beam=beam)
    assert got.tokens == expected.tokens
    assert got.scores == pytest.approx(expected.scores, abs=1e-5)
    assert any(len(t) > 1 for t in got.tokens)


@pytest.mark.parametrize("mode", ["nar", "ar"])
def test_engine_batch_invariance(mode):
    model = random_model(3)
    src, lengths = random_sources(3)
    batched = generate(model, src, lengths, mode=mode, iterations=3)
    for row in range(len(src)):
        alone = generate(
            model, src[row : row + 1, : int(lengths[row])], lengths[row : row + 1], mode=mode, iterations=3
        )
        assert alone[0] == batched[row]


def test_generate_rejects_unknown_decoder():
    model = random_model(0)
    src, lengths = random_sources(0)
    with pytest.raises(ValueError, match="decoder"):
        generate(model, src, lengths, decoder="turbo")
