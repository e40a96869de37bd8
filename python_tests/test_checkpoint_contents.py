"""What a checkpoint holds is what gets used (issue 34 item 3): a tokenizer swapped into a model
folder, weights of a type the model cannot take (int32, bool, float64) or not finite are refused
on load naming the file or tensor; the engine's converted weights follow every way of changing a
model's parameters; ``generate`` refuses a model in training mode on every path."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import torch
from conftest import REPO_ROOT, random_model, random_sources
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from janus_fast.checkpoint import (
    CONFIG_NAME,
    TOKENIZER_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_pretrained,
    load_tokenizer,
    read_config,
    save_pretrained,
    save_tokenizer,
)
from janus_fast.generation import generate
from janus_fast.native.decoder import NativeDecoder, native_decoder_available
from janus_fast.tokenizer import Tokenizer
from janus_fast.translator import Translator

SHIPPED = os.path.join(REPO_ROOT, "janus_fast", "pretrained", "multi30k-de-en")
TOKENIZER_DIGEST = "tokenizer_sha256"  # config.json's record of spm.model


def shipped_tokenizer() -> bytes:
    with open(os.path.join(SHIPPED, TOKENIZER_NAME), "rb") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def other_tokenizer(corpus_dir) -> bytes:
    """A valid janus_fast tokenizer that is not the shipped one (trained on the test corpus)."""
    lines = []
    for language in ("de", "en"):
        with open(os.path.join(corpus_dir, f"train.{language}"), encoding="utf-8") as handle:
            lines += handle.read().splitlines()
    tokenizer = Tokenizer.train(lines, vocab_size=300)
    assert tokenizer.model_proto != shipped_tokenizer()
    return tokenizer.model_proto


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_swapped_tokenizer_is_refused_naming_the_file(tmp_path, other_tokenizer):
    directory = str(tmp_path / "ckpt")
    save_pretrained(random_model(0, vocab_size=8000), directory, tokenizer_model=shipped_tokenizer())
    assert read_config(directory)[TOKENIZER_DIGEST] == sha256(shipped_tokenizer())
    assert load_tokenizer(directory).model_proto == shipped_tokenizer()  # its own loads
    Translator.from_pretrained(directory)

    tokenizer_path = os.path.join(directory, TOKENIZER_NAME)
    with open(tokenizer_path, "wb") as handle:
        handle.write(other_tokenizer)
    for load in (load_tokenizer, load_pretrained, Translator.from_pretrained):
        with pytest.raises(CheckpointError, match=re.escape(tokenizer_path) + ": not the tokenizer"):
            load(directory)

    # a checkpoint saved before the digest was recorded loads as it did
    config_path = os.path.join(directory, CONFIG_NAME)
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    del config[TOKENIZER_DIGEST]
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    assert load_tokenizer(directory).model_proto == other_tokenizer
    load_pretrained(directory)
    # the shipped model records its tokenizer: a swapped spm.model beside its weights is refused
    assert read_config(SHIPPED)[TOKENIZER_DIGEST] == sha256(shipped_tokenizer())
    assert load_tokenizer(SHIPPED).model_proto == shipped_tokenizer()


def test_a_tokenizer_saved_after_the_weights_is_digested_too(tmp_path, other_tokenizer):
    """``export`` and ``average`` write the weights, then the tokenizer (``save_tokenizer``)."""
    directory = str(tmp_path / "exported")
    save_pretrained(random_model(0, vocab_size=8000), directory)
    save_tokenizer(Tokenizer(shipped_tokenizer()), directory)
    assert read_config(directory)[TOKENIZER_DIGEST] == sha256(shipped_tokenizer())
    assert load_tokenizer(directory).model_proto == shipped_tokenizer()
    with open(os.path.join(directory, TOKENIZER_NAME), "wb") as handle:
        handle.write(other_tokenizer)
    with pytest.raises(CheckpointError, match=r"spm\.model: not the tokenizer"):
        Translator.from_pretrained(directory)


def rewrite_weights(directory: str, state: dict[str, torch.Tensor]) -> None:
    """Replace the checkpoint's weights by ``state``, with the digest updated to match (so only the
    content checks can catch what is wrong)."""
    data = save_safetensors(state, metadata={"format": "janus_fast", "version": "1"})
    with open(os.path.join(directory, WEIGHTS_NAME), "wb") as handle:
        handle.write(data)
    config_path = os.path.join(directory, CONFIG_NAME)
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    config["weights_sha256"] = sha256(data)
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump(config, handle)


def saved_state(directory: str) -> dict[str, torch.Tensor]:
    with open(os.path.join(directory, WEIGHTS_NAME), "rb") as handle:
        return dict(load_safetensors(handle.read()))


NAME = "decoder_layers.1.ffn.fc1.weight"


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.int8, torch.float64])
def test_weights_of_a_type_the_model_cannot_take_are_refused_naming_the_tensor(tmp_path, dtype):
    directory = str(tmp_path)
    save_pretrained(random_model(0), directory)
    state = saved_state(directory)
    original = state[NAME]
    state[NAME] = original.to(dtype)
    rewrite_weights(directory, state)
    with pytest.raises(CheckpointError, match=re.escape(f"{WEIGHTS_NAME}: tensor {NAME} is stored as {dtype}")):
        load_pretrained(directory)
    for stored in (torch.float16, torch.bfloat16):  # the float types a checkpoint may store load
        state[NAME] = original.to(stored)
        rewrite_weights(directory, state)
        assert torch.equal(load_pretrained(directory).state_dict()[NAME], original.to(stored).float())


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_weight_is_refused_naming_the_tensor(tmp_path, stored, value):
    directory = str(tmp_path)
    save_pretrained(random_model(0), directory, dtype=stored)
    state = saved_state(directory)
    state[NAME][3, 5] = value
    rewrite_weights(directory, state)
    with pytest.raises(CheckpointError, match=re.escape(f"tensor {NAME} has 1 non-finite value")):
        load_pretrained(directory)


def test_save_refuses_a_weight_type_load_would_refuse(tmp_path):
    with pytest.raises(CheckpointError, match="cannot store weights as torch.float64"):
        save_pretrained(random_model(0), str(tmp_path), dtype=torch.float64)


def copy_through_data(model: torch.nn.Module, new: torch.nn.Module) -> None:
    for parameter, value in zip(model.parameters(), new.parameters()):
        parameter.data.copy_(value.data)  # bumps no version counter of ``parameter``


def assign_state_dict(model: torch.nn.Module, new: torch.nn.Module) -> None:
    model.load_state_dict({name: value.clone() for name, value in new.state_dict().items()}, assign=True)


def swap_data(model: torch.nn.Module, new: torch.nn.Module) -> None:
    for parameter, value in zip(model.parameters(), new.parameters()):
        parameter.data = value.detach().clone()  # same Parameter, other storage


@pytest.mark.skipif(not native_decoder_available(), reason="native extension not built")
@pytest.mark.parametrize("mutate", [copy_through_data, assign_state_dict, swap_data])
def test_engine_follows_parameters_changed_after_its_first_use(mutate):
    model, new = random_model(0), random_model(1)
    src, lengths = random_sources(3, batch=16, min_length=3, max_length=9)
    before = {mode: generate(model, src, lengths, mode=mode) for mode in ("ar", "nar")}  # converts the weights
    assert NativeDecoder.for_model(model) is NativeDecoder.for_model(model)  # unchanged: not converted again
    mutate(model, new)
    for mode in ("ar", "nar"):
        reference = generate(model, src, lengths, mode=mode, decoder="reference")
        assert reference != before[mode]  # the change matters to the outputs
        assert generate(model, src, lengths, mode=mode, decoder="engine") == reference, mode
        assert generate(new, src, lengths, mode=mode, decoder="engine") == reference, mode


@pytest.mark.parametrize(
    "compat, mode, decoder",
    [
        (compat, mode, decoder)
        for compat, modes in (("janus", ("ar", "nar", "spec")), ("fairseq", ("ar", "nar")))
        for mode in modes
        for decoder in ("engine", "reference")
    ],
)
def test_generate_refuses_a_model_in_training_mode(compat, mode, decoder):
    model = random_model(0, dropout=0.3).train()
    src, lengths = random_sources(3, batch=4, min_length=3, max_length=9)
    options = dict(mode=mode, decoder=decoder, compat=compat, **({"max_len_b": 20} if mode == "ar" else {}))
    with pytest.raises(ValueError, match=r"training mode.*call model\.eval\(\)"):
        generate(model, src, lengths, **options)
    model.eval()
    assert generate(model, src, lengths, **options) == generate(model, src, lengths, **options)


def test_a_folder_replaced_between_weights_and_tokenizer_is_read_again(trained_dir, tmp_path, monkeypatch):
    """``load_checkpoint`` (``Translator.from_pretrained``) never pairs one checkpoint's weights with
    another's tokenizer: an export replacing the folder between the two reads is noticed (both are
    checked against one reading of config.json) and the folder is read again."""
    import shutil

    from janus_fast import checkpoint
    from janus_fast.translator import DEFAULT_MODEL_DIR

    first, second, folder = tmp_path / "first", tmp_path / "second", tmp_path / "folder"
    shutil.copytree(trained_dir, first)
    shutil.copytree(DEFAULT_MODEL_DIR, second)
    shutil.copytree(first, folder)
    original, swaps = checkpoint.load_tokenizer, []

    def replaced_before_the_tokenizer(directory, config=None):  # noqa: ANN001, ANN202
        if not swaps:  # the export lands between the weights and the tokenizer
            swaps.append(directory)
            shutil.rmtree(folder)
            shutil.copytree(second, folder)
        return original(directory, config=config)

    monkeypatch.setattr(checkpoint, "load_tokenizer", replaced_before_the_tokenizer)
    model, tokenizer = checkpoint.load_checkpoint(str(folder))
    assert swaps
    assert model.checkpoint_digests["weights_sha256"] == checkpoint.read_config(str(second))["weights_sha256"]
    assert tokenizer.model_proto == (second / "spm.model").read_bytes()
