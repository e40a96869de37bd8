"""The API in states a user can put it in: the default dtype changed, a translator's attributes
assigned, a model's weights changed after a translator was made (probe findings of issue 34)."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_a_translator_that_has_translated_pickles_after_its_model_moved_to_shared_memory(tmp_path):
    """A process pool pickles a Translator by moving its parameters to shared memory, which frees their
    old blocks; the engine's weight samples were NumPy views of those blocks, so pickling read freed
    memory (a segfault of the parent). MALLOC_MMAP_THRESHOLD_ makes every large block its own mapping,
    unmapped when freed: the old code crashed every time."""
    script = tmp_path / "pool_pickle.py"
    script.write_text(
        "import pickle, torch\n"
        "from janus_fast.translator import Translator\n"
        "torch.set_num_threads(1)\n"
        "translator = Translator.from_pretrained()\n"
        "sentences = ['Zwei Hunde spielen im Schnee.', 'Ein Mann fährt Fahrrad.']\n"
        "before = translator.translate(sentences, mode='ar')\n"
        "translator.model.share_memory()\n"
        "copy = pickle.loads(pickle.dumps(translator))\n"
        "assert copy.translate(sentences, mode='ar') == before == translator.translate(sentences, mode='ar')\n"
        "print('ok', flush=True)\n"
    )
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.returncode, result.stderr[-2000:])


def test_an_int8_copy_waits_for_a_conversion_in_another_thread_and_leaves_the_engine_weights_out(monkeypatch):
    """Two first calls in two threads: one converting the model for the engine (adding to the
    model's __dict__), the other making the int8 copy (a deepcopy iterating it) raised "dictionary
    changed size during iteration". The copy now waits for the conversion, and carries none of the
    engine's converted weights."""
    import threading

    from janus_fast.native import decoder as decoder_module
    from janus_fast.quantize import quantize_int8

    model = random_model(0)
    converting, release = threading.Event(), threading.Event()
    original = decoder_module.NativeDecoder.__init__

    def slow_conversion(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        converting.set()
        release.wait(timeout=60)
        original(self, *args, **kwargs)

    monkeypatch.setattr(decoder_module.NativeDecoder, "__init__", slow_conversion)
    errors: list[BaseException] = []
    copies: list = []

    def run(target) -> None:  # noqa: ANN001
        try:
            target()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    convert = threading.Thread(target=run, args=(lambda: decoder_module.NativeDecoder.for_model(model),))
    convert.start()
    assert converting.wait(timeout=60)
    copy_thread = threading.Thread(target=run, args=(lambda: copies.append(quantize_int8(model)),))
    copy_thread.start()
    copy_thread.join(timeout=1.0)
    assert copy_thread.is_alive()  # waiting for the conversion
    release.set()
    convert.join(timeout=120)
    copy_thread.join(timeout=120)
    assert errors == [] and len(copies) == 1
    assert "fp32" in model.__dict__["_native_decoders"]
    assert not copies[0].__dict__.get("_native_decoders")


def test_a_per_call_reference_int8_copy_is_made_once(monkeypatch):
    """Every call with decoder="reference", precision="int8" on an fp32 engine Translator made a new
    PyTorch int8 copy of the model (a deepcopy and a quantization per call); it is made once, and made
    again only when the model's weights change."""
    from janus_fast.decoding import passes

    made = []
    original = passes.quantize_int8
    monkeypatch.setattr(passes, "quantize_int8", lambda model: made.append(1) or original(model))
    model = random_model(0)
    translator = Translator(model, ToyTokenizer())
    per_call = {"mode": "ar", "decoder": "reference", "precision": "int8"}
    first = translator.translate_ids(IDS, **per_call)
    assert translator.translate_ids(IDS, **per_call).tokens == first.tokens
    assert len(made) == 1
    with torch.no_grad():
        model.embed_tokens.weight.mul_(1.5)
    translator.translate_ids(IDS, **per_call)
    assert len(made) == 2
