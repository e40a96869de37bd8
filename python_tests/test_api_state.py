"""The API in states a user can put it in: the default dtype changed, a translator's attributes
assigned, a model's weights changed after a translator was made (probe findings of issue 34)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_model

from janus_fast import Translator


class ToyTokenizer:
    """What a Translator needs of a tokenizer to decode token ids (random_model's 60 pieces)."""

    vocab_size = 60


IDS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [6]]
MODES = [
    {"mode": "ar"},
    {"mode": "ar", "beam": 3},
    {"mode": "nar", "iterations": 3},
    {"mode": "nar", "iterations": 3, "ar_rescore": True},
    {"mode": "spec"},
    {"mode": "nar", "iterations": 3, "compat": "fairseq"},
]


@pytest.mark.parametrize("options", MODES, ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()))
@pytest.mark.parametrize("decoder", ["engine", "reference"])
def test_default_dtype_float64_changes_nothing(options: dict, decoder: str) -> None:
    translator = Translator(random_model(3), ToyTokenizer(), decoder=decoder)
    expected = translator.translate_ids(IDS, **options)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        found = translator.translate_ids(IDS, **options)
    finally:
        torch.set_default_dtype(previous)
    assert found.tokens == expected.tokens
    assert found.scores == pytest.approx(expected.scores, abs=1e-5)


@pytest.mark.parametrize("name", ["model", "tokenizer", "decoder", "precision"])
def test_fixed_attributes_cannot_be_assigned(name: str) -> None:
    translator = Translator(random_model(0), ToyTokenizer())
    with pytest.raises(AttributeError, match=f"Translator.{name} is fixed.*new Translator"):
        setattr(translator, name, getattr(translator, name))


def test_settable_attributes_are_checked() -> None:
    translator = Translator(random_model(0), ToyTokenizer())
    translator.max_batch_tokens = 64
    translator.on_long_input = "error"
    with pytest.raises(ValueError, match="max_batch_tokens"):
        translator.max_batch_tokens = 0
    with pytest.raises(ValueError, match="on_long_input"):
        translator.on_long_input = "drop"
    assert (translator.max_batch_tokens, translator.on_long_input) == (64, "error")


def test_options_are_checked_when_assigned() -> None:
    """``translator.options = "nar"`` was accepted, then every call failed with 'replace expected at
    least 2 arguments'."""
    translator = Translator(random_model(0), ToyTokenizer())
    expected = translator.translate_ids(IDS)
    with pytest.raises(TypeError, match="Translator.options must be a DecodeOptions, got str"):
        translator.options = "nar"
    assert translator.translate_ids(IDS) == expected


def test_a_model_cast_after_its_translator_was_made_is_a_clear_error() -> None:
    """``model.half()`` after the engine chose its native passes: a ValueError saying to make a new
    Translator (before: a RuntimeError from inside the native decoder); cast back, it translates."""
    translator = Translator(random_model(0), ToyTokenizer())
    expected = translator.translate_ids(IDS)
    if not translator.choice.native:
        pytest.skip("the native passes are not built")
    translator.model.half()
    with pytest.raises(ValueError, match="changed after its decoding passes were chosen.*float16.*new Translator"):
        translator.translate_ids(IDS)
    translator.model.float()  # (weights now rounded to float16's precision: the same tokens here)
    assert translator.translate_ids(IDS).tokens == expected.tokens


@pytest.mark.parametrize("model", [None, "path/to/model", torch.nn.Linear(2, 2)], ids=["None", "str", "Linear"])
def test_generate_refuses_what_is_not_a_janus_model(model: object) -> None:
    from janus_fast import generate

    with pytest.raises(TypeError, match="generate\\(\\) needs a JanusModel"):
        generate(model, torch.tensor([[5, 6]]), torch.tensor([2]))


@pytest.mark.parametrize("change", ["in_place", "data_copy", "load_state_dict_assign"])
def test_reference_int8_copy_follows_weight_changes(change: str) -> None:
    """The PyTorch dynamic int8 copy is made again when the model's weights change, as the engine's
    conversion is: the translator then gives what a new translator of the changed model gives."""
    ids = IDS
    translator = Translator(random_model(0), ToyTokenizer(), decoder="reference", precision="int8")
    before = translator.translate_ids(ids)
    other = random_model(1)
    with torch.no_grad():
        if change == "in_place":
            for mine, theirs in zip(translator.model.parameters(), other.parameters()):
                mine.copy_(theirs)
        elif change == "data_copy":
            for mine, theirs in zip(translator.model.parameters(), other.parameters()):
                mine.data.copy_(theirs)
        else:
            translator.model.load_state_dict(other.state_dict(), assign=True)
    fresh = Translator(random_model(1), ToyTokenizer(), decoder="reference", precision="int8").translate_ids(ids)
    assert fresh.tokens != before.tokens  # the change matters
    after = translator.translate_ids(ids)
    assert after.tokens == fresh.tokens
    assert after.scores == pytest.approx(fresh.scores, abs=1e-6)


def test_resolved_options_given_again_with_another_mode_resolve_that_modes_defaults():
    """``resolve_options()`` of an AR call holds no NAR choices (collapse_repeats and length_bonus
    stay None, as do the counts AR does not use), so the same options with mode="nar" decode as a
    plain NAR call (the model's length bonus, repeats collapsed) instead of turning both off."""
    from janus_fast import Translator

    translator = Translator.from_pretrained()
    shown = translator.resolve_options()
    assert shown.mode == "ar" and shown.collapse_repeats is None and shown.length_bonus is None
    assert shown.iterations is None and shown.length_beam is None and shown.beam == 1
    sentences = ["Zwei Hunde spielen im Schnee.", "Ein Mann fährt Fahrrad auf einer Straße.", "Drei Kinder lachen."]
    plain = translator.translate(sentences, mode="nar", iterations=4)
    assert translator.translate(sentences, shown, mode="nar", iterations=4) == plain
    nar = translator.resolve_options(mode="nar")
    assert nar.length_bonus == translator.model.config.length_bonus and nar.collapse_repeats is True
    with pytest.raises(ValueError, match="collapse_repeats applies to mode='nar'"):
        translator.translate(sentences, nar, mode="ar")  # a NAR choice given to AR is refused, not ignored
