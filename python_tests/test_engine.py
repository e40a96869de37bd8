"""The fast engine gives the reference decoders' outputs, token for token."""

from __future__ import annotations

import pytest
import torch
from conftest import engine_decode, random_model, random_sources

from janus_fast.decoding.packed import PackedRows, packed_decode
from janus_fast.decoding.reference import ar_search, mask_predict
from janus_fast.generation import generate
from janus_fast.masks import MaskSpec


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("iterations,length_beam", [(1, 1), (2, 3), (4, 3), (10, 2)])
def test_engine_mask_predict_equals_reference(seed, iterations, length_beam):
    model = random_model(seed)
    src, lengths = random_sources(seed)
    expected = mask_predict(model, src, lengths, iterations, length_beam)
    got = engine_decode(model, src, lengths, mode="nar", iterations=iterations, length_beam=length_beam)
    assert got.tokens == expected.tokens
    assert got.scores == pytest.approx(expected.scores, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_greedy_equals_reference(seed):
    """The engine's own greedy search: with the native passes, the whole search in one native call."""
    from janus_fast.native.decoder import NativeDecoder, native_decoder_available

    model = random_model(seed)
    src, lengths = random_sources(seed + 10)
    expected = ar_search(model, src, lengths, beam=1)
    calls = []
    one_call = NativeDecoder.ar_greedy_search

    def counted(self, *args, **kwargs):
        calls.append(1)
        return one_call(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(NativeDecoder, "ar_greedy_search", counted)
        got = engine_decode(model, src, lengths, beam=1)
    assert len(calls) == (1 if native_decoder_available() else 0)
    assert got.tokens == expected.tokens
    assert got.scores == pytest.approx(expected.scores, abs=1e-5)
    assert any(len(t) > 1 for t in got.tokens)


@pytest.mark.parametrize("seed", [2, 7])  # random models whose beam outputs differ from greedy's
@pytest.mark.parametrize("beam", [2, 4])
def test_engine_beam_search_equals_reference(seed, beam):
    """The engine's beam search runs the reference's loop over the native steps, which choose each
    row's candidates without the logits, and reorders their caches: same tokens, same scores, and
    the native path really ran."""
    from janus_fast.native.decoder import NativeDecoder, native_decoder_available

    if not native_decoder_available():
        pytest.skip("the native decoder is not built (the engine would run the reference itself)")
    model = random_model(seed)
    src, lengths = random_sources(seed + 20)
    expected = ar_search(model, src, lengths, beam=beam)
    calls = []
    original, original_reorder = NativeDecoder.ar_topk_step, NativeDecoder.reorder_caches
    reorders = []

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    def counted_reorder(caches, index):
        reorders.append(len(index))
        return original_reorder(caches, index)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(NativeDecoder, "ar_topk_step", counted)
        patch.setattr(NativeDecoder, "reorder_caches", staticmethod(counted_reorder))
        got = engine_decode(model, src, lengths, beam=beam)
    assert calls and reorders  # the native step and the native reorder of its caches ran
    assert got.tokens == expected.tokens
    assert got.scores == pytest.approx(expected.scores, abs=1e-5)
    assert any(len(t) > 1 for t in got.tokens)
    if beam == 4:
        assert got.tokens != engine_decode(model, src, lengths, beam=1).tokens  # the beam decides something


@pytest.mark.parametrize("mode", ["nar", "ar"])
def test_engine_batch_invariance(mode):
    model = random_model(3)
    src, lengths = random_sources(3)
    counts = {"iterations": 3} if mode == "nar" else {}
    batched = generate(model, src, lengths, mode=mode, **counts)
    for row in range(len(src)):
        alone = generate(model, src[row : row + 1, : int(lengths[row])], lengths[row : row + 1], mode=mode, **counts)
        assert alone[0] == batched[row]


@pytest.mark.parametrize("decoder,beam", [("engine", 1), ("engine", 3), ("reference", 1), ("reference", 3)])
def test_finished_sentences_leave_the_batch(decoder, beam):
    """Sentences that are done stop being decoded (the steps get fewer rows) and every sentence's
    output is still the one it gets decoded alone. The engine's greedy case runs the step-by-step
    loop (``ar.greedy_steps``, what the PyTorch passes run): the native passes' one-call search
    drops finished rows inside the call (compared with this loop in test_native_decoder.py, and
    batched against alone in test_engine_batch_invariance)."""
    from janus_fast.decoding import passes
    from janus_fast.model import JanusModel
    from janus_fast.native.decoder import NativeDecoder, native_decoder_available

    if decoder == "engine" and not native_decoder_available():
        pytest.skip("the native decoder is not built")
    model = random_model(4)
    src, lengths = random_sources(5, batch=8)
    lengths[0] = 1  # limits 11 .. 24 tokens (1.2 S + 10): sentences end at different steps
    rows_per_step = []
    if decoder == "engine":
        cls, name = NativeDecoder, "ar_greedy_step" if beam == 1 else "ar_topk_step"
    else:
        cls, name = JanusModel, "ar_step"
    original = getattr(cls, name)

    def counted(self, tokens, *args, **kwargs):
        rows_per_step.append(len(tokens))
        return original(self, tokens, *args, **kwargs)

    search = engine_decode if decoder == "engine" else ar_search
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cls, name, counted)
        patch.setattr(passes.NativePasses, "ar_greedy_search", lambda self, limits, banned: None)
        batched = search(model, src, lengths, beam=beam)
        assert rows_per_step[0] == len(src) * beam
        assert min(rows_per_step) < len(src) * beam
        assert sorted(rows_per_step, reverse=True) == rows_per_step
        for row in range(len(src)):
            alone = search(model, src[row : row + 1, : int(lengths[row])], lengths[row : row + 1], beam=beam)
            assert alone.tokens[0] == batched.tokens[row], f"sentence {row}"
            assert alone.scores[0] == pytest.approx(batched.scores[row], abs=1e-5)


def test_generate_rejects_unknown_decoder():
    model = random_model(0)
    src, lengths = random_sources(0)
    with pytest.raises(ValueError, match="decoder"):
        generate(model, src, lengths, decoder="turbo")


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_decode_equals_padded_decode_at_real_positions(seed):
    model = random_model(seed)
    src, src_lengths = random_sources(seed)
    generator = torch.Generator().manual_seed(seed + 100)
    lengths = torch.randint(1, 9, (len(src),), generator=generator)
    width = int(lengths.max())
    tokens = torch.randint(5, 60, (len(src), width), generator=generator)
    positions = torch.arange(width).expand_as(tokens)
    with torch.inference_mode():
        encoder_out = model.encode(src, src_lengths)
        padded = model.decode(model.embed_target(tokens, positions), width, MaskSpec.padding(lengths), encoder_out)
        rows = PackedRows(lengths, width)
        packed = packed_decode(model, tokens, lengths, encoder_out, rows)
    assert packed.shape == (int(lengths.sum()), model.config.d_model)
    real = positions < lengths[:, None]
    torch.testing.assert_close(packed, padded[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows.pad(packed)[real], padded[real])
    assert (rows.pad(packed)[~real] == 0).all()


@pytest.mark.parametrize(("mode", "decoder"), [("nar", "engine"), ("nar", "reference"), ("spec", "engine")])
def test_a_sentence_with_no_possible_length_gets_the_shortest(mode, decoder):
    """With ``length_offset`` and 4 classes a one-token source's classes stand for lengths -1 .. 2,
    all below the 3 a NAR row needs (the log-softmax over them is NaN); NaN length logits likewise.
    Such sentences get length 3 (one word) beside ordinary ones, in a mixed batch."""
    model = random_model(0, length_offset=True, num_length_classes=4)
    src = torch.tensor([[7, 0, 0, 0, 0, 0], [8, 9, 10, 11, 12, 13]])
    lengths = torch.tensor([1, 6])
    nar = {"length_beam": 3, "iterations": 2} if mode == "nar" else {}
    found = generate(model, src, lengths, mode=mode, decoder=decoder, **nar)
    assert len(found) == 2 and all(isinstance(token, int) for row in found for token in row)
    if mode == "nar":
        assert len(found[0]) <= 1  # one position between bos and eos
        assert found == generate(model, src, lengths, mode=mode, decoder="reference", **nar)
    with torch.no_grad():
        model.length_embed.weight.fill_(float("nan"))
    found = generate(model, src, lengths, mode="nar", decoder=decoder, length_beam=2, iterations=2)
    assert all(len(row) <= 1 for row in found)


@pytest.mark.parametrize("mode", ["ar", "spec"])
def test_a_model_yielding_nan_gives_the_reference_result_in_greedy_and_spec(mode):
    """A NaN log-probability never finishes a beam search's hypothesis (the reference's AR greedy is
    its beam 1), so a sentence whose decoding meets NaN has no translation and score -inf there; the
    engine's greedy loop and speculative mode (AR greedy's output) give the same, not the NaN
    argmax's tokens with a NaN score."""
    from janus_fast.decoding.options import SpeculativeOptions

    model = random_model(3)
    src, lengths = random_sources(3)
    with torch.no_grad():
        model.embed_tokens.weight[int(src[0, 0])].fill_(float("nan"))  # sentence 0's first source token
    expected = ar_search(model, src, lengths, beam=1)
    assert expected.tokens[0] == [] and expected.scores[0] == float("-inf")
    speculative = SpeculativeOptions(speculate_up_to=0) if mode == "spec" else None
    got = generate(model, src, lengths, mode=mode, speculative=speculative, return_scores=True)
    assert got.tokens == expected.tokens
    impossible = [score == float("-inf") for score in expected.scores]
    assert [score == float("-inf") for score in got.scores] == impossible
    finite = [(g, e) for g, e, no in zip(got.scores, expected.scores, impossible) if not no]
    assert [g for g, _ in finite] == pytest.approx([e for _, e in finite], abs=1e-5)


@pytest.mark.parametrize("mode", ["ar", "nar", "spec"])
def test_engine_decode_refuses_unresolved_options(mode):
    """``engine.decode`` takes resolved options; unresolved ones (the counts and, for mode spec, the
    speculative options still None) are refused with a message that says so, before any work."""
    from janus_fast.decoding import engine
    from janus_fast.decoding.options import DecodeOptions
    from janus_fast.decoding.passes import PassChoice

    model = random_model(0)
    src, lengths = random_sources(0)
    with pytest.raises(ValueError, match="resolved for the model"):
        engine.decode(PassChoice(model), src, lengths, DecodeOptions(mode=mode))
    resolved = DecodeOptions(mode=mode).resolve(model.config)
    assert len(engine.decode(PassChoice(model), src, lengths, resolved).tokens) == len(src)


def test_engine_decode_refuses_an_unknown_mode():
    """A mode that ``DecodeOptions.resolve`` would refuse is not decoded as AR by default."""
    from janus_fast.decoding import engine
    from janus_fast.decoding.options import DecodeOptions
    from janus_fast.decoding.passes import PassChoice

    model = random_model(0)
    src, lengths = random_sources(0)
    with pytest.raises(ValueError, match="unknown mode 'greedy'"):
        engine.decode(PassChoice(model), src, lengths, DecodeOptions(mode="greedy"))
