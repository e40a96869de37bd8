"""``Translator(..., release_weights=True)``: the weights held once, by the engine, at the decode
precision; the same translations as a translator that keeps the model's fp32 copy."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from janus_fast.decoding import passes as passes_module
from janus_fast.generation import generate
from janus_fast.native.decoder import engine_held_weights, native_decoder_available
from janus_fast.translator import Translator

pytestmark = pytest.mark.skipif(not native_decoder_available(), reason="native decoder ops not built")

SENTENCES = [
    "Zwei Hunde spielen im Schnee.",
    "Ein Mann fährt Fahrrad.",
    "Eine Frau mit einem roten Hut sitzt auf einer Bank neben einem kleinen Jungen.",
    "Kinder.",
]
MODES = [{"mode": "ar"}, {"mode": "ar", "beam": 4}, {"mode": "nar", "iterations": 4}, {"mode": "spec"}]
PRECISIONS = ["fp32", "bf16", "int8"]


def _layer_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the encoder's and decoder's linear-layer weights that hold memory (meta tensors hold none)."""
    layers = [*model.encoder_layers, *model.decoder_layers]
    return sum(
        module.weight.numel() * module.weight.element_size()
        for layer in layers
        for module in layer.modules()
        if isinstance(module, torch.nn.Linear) and module.weight.device.type != "meta"
    )


def _released(precision: str) -> Translator:
    return Translator.from_pretrained(precision=precision, release_weights=True)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_released_translator_translates_as_one_that_keeps_the_weights(precision: str) -> None:
    kept = Translator.from_pretrained(precision=precision)
    released = _released(precision)
    assert engine_held_weights(released.model) == precision and engine_held_weights(kept.model) is None
    for options in MODES:
        expected = kept.translate(SENTENCES, **options)
        assert released.translate(SENTENCES, **options) == expected, options
        scored = kept.translate_ids(released.encode_sources(SENTENCES), kept.resolve_options(**options))
        got = released.translate_ids(released.encode_sources(SENTENCES), released.resolve_options(**options))
        assert got.tokens == scored.tokens and got.scores == scored.scores


def test_release_frees_the_layer_matrices_and_keeps_embeddings() -> None:
    translator = Translator.from_pretrained(precision="bf16")
    model = translator.model
    layer_bytes = _layer_weight_bytes(model)
    assert layer_bytes > 0
    first_matrix = weakref.ref(model.decoder_layers[0].ffn.fc1.weight)
    translator.translate(SENTENCES[:1])  # converted and in use before the release
    translator.choice.release_weights()
    gc.collect()
    assert first_matrix() is None  # nothing (the decoder's change checks included) keeps it alive
    assert _layer_weight_bytes(model) == 0
    assert model.decoder_layers[0].ffn.fc1.weight.shape == (model.config.ffn_dim, model.config.d_model)
    assert model.embed_tokens.weight.device.type == "cpu"  # the native passes read it in place
    assert translator.translate(SENTENCES[:1]) == Translator.from_pretrained(precision="bf16").translate(SENTENCES[:1])


def test_released_translator_refuses_what_needs_the_fp32_weights() -> None:
    translator = _released("fp32")
    with pytest.raises(ValueError, match="held only by the engine"):
        translator.translate(SENTENCES[:1], precision="bf16")
    with pytest.raises(ValueError, match="held only by the engine"):
        translator.translate(SENTENCES[:1], decoder="reference")
    src = torch.tensor([translator.encode_sources(SENTENCES[:1])[0]])
    with pytest.raises(ValueError, match="held only by the engine"):
        generate(translator.model, src, torch.tensor([src.shape[1]]), precision="bf16")
    with pytest.raises(ValueError, match="already held"):
        translator.choice.release_weights()
    assert translator.translate(SENTENCES[:1])  # still translates at its own precision


def test_release_refused_where_pytorch_layers_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="release_weights"):
        Translator.from_pretrained(decoder="reference", release_weights=True)
    monkeypatch.setattr(passes_module, "unsupported_reason", lambda model: "no native decoder here")
    translator = Translator.from_pretrained(precision="int8")
    assert not translator.choice.can_release_weights  # the CLI then keeps the weights
    with pytest.raises(ValueError, match="PyTorch model"):
        translator.choice.release_weights()


@pytest.mark.parametrize(
    "change",
    ["load_state_dict", "load_state_dict_assign", "half", "edit_embeddings"],
)
def test_a_released_model_changed_afterwards_is_refused_not_decoded_stale(change: str) -> None:
    """The engine cannot convert a released model's weights again: after any change to the model
    (new weights loaded in place or by assignment, a dtype change, an edit of the embeddings the
    passes read in place) decoding raises instead of mixing old packs with new vectors."""
    translator = _released("fp32")
    model = translator.model
    assert translator.translate(SENTENCES[:1])
    new_state = Translator.from_pretrained().model.state_dict()
    with torch.no_grad():
        if change == "load_state_dict":
            with pytest.warns(UserWarning):  # torch: copying into a meta parameter is a no-op
                model.load_state_dict(new_state)
        elif change == "load_state_dict_assign":
            model.load_state_dict(new_state, assign=True)
        elif change == "half":
            model.half()
        else:
            model.embed_tokens.weight[7] += 1.0
    with pytest.raises(ValueError, match="changed after its layer weights were released|held only by the engine"):
        translator.translate(SENTENCES[:1])


def test_a_translator_made_before_the_release_and_the_model_itself_raise() -> None:
    """A reference translator made on the model before another one released its weights, and the
    PyTorch model's own forward, raise: a meta weight would otherwise give uninitialised values."""
    from janus_fast.checkpoint import CheckpointError, save_pretrained

    model = Translator.from_pretrained().model
    tokenizer = Translator.from_pretrained().tokenizer
    reference = Translator(model, tokenizer, decoder="reference")
    assert reference.translate(SENTENCES[:1], mode="nar")
    Translator(model, tokenizer, release_weights=True)
    for options in ({"mode": "nar"}, {"mode": "ar"}, {"mode": "ar", "beam": 4}):
        with pytest.raises(ValueError, match="held only by the engine"):
            reference.translate(SENTENCES[:1], **options)
    src = torch.tensor([tokenizer.encode(SENTENCES[0])])
    with pytest.raises(ValueError, match="held only by the engine's native passes"):
        model.encode(src, torch.tensor([src.shape[1]]))
    with pytest.raises(CheckpointError, match="held only by the engine"):
        save_pretrained(model, "/nonexistent/never-written")
