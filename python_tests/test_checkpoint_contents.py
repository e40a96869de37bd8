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
    load_checkpoint,
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


# --------------------------------------------------------------------------- crafted folders (a hostile probe)
def _saved(tmp_path) -> str:
    """A small checkpoint with the shipped tokenizer (its config records the tokenizer's digest)."""
    directory = str(tmp_path / "ckpt")
    save_pretrained(random_model(0, vocab_size=8000), directory, tokenizer_model=shipped_tokenizer())
    return directory


def _rewrite_config(directory: str, edit) -> None:  # noqa: ANN001 - edit(config) changes it in place
    path = os.path.join(directory, CONFIG_NAME)
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    edit(config)
    config["model_sha256"] = hashlib.sha256(json.dumps(config["model"], sort_keys=True).encode()).hexdigest()
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle)


@pytest.mark.parametrize("name", [CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_file_of_the_folder_that_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path, name, kind):
    """A FIFO in its place blocked the read forever; a link to /dev/zero was read until memory ran out
    (/dev/null stands for it here: a device, refused as one). A writer thread keeps a regression from
    hanging the suite: it opens the FIFO (blocking until a reader does), and the test opens the read end
    itself at the end, so that the writer always finishes."""
    import threading

    directory = _saved(tmp_path)
    path = os.path.join(directory, name)
    os.remove(path)
    writer = None
    if kind == "fifo":
        os.mkfifo(path)
        writer = threading.Thread(target=lambda: open(path, "wb").close(), daemon=True)  # noqa: SIM115
        writer.start()
    else:
        os.symlink(os.devnull, path)
    what = "a pipe" if kind == "fifo" else "a device"
    try:
        with pytest.raises(CheckpointError, match=re.escape(f"{name}: {what}, not a regular file")):
            load_checkpoint(directory)
    finally:
        if writer is not None:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))  # lets the writer's open return
            writer.join(timeout=60)


def test_files_larger_than_such_a_file_may_hold_are_refused_before_they_are_read(tmp_path):
    from janus_fast.checkpoint import MAX_CONFIG_BYTES

    directory = _saved(tmp_path)
    _rewrite_config(directory, lambda config: config.update(padding="x" * MAX_CONFIG_BYTES))
    with pytest.raises(CheckpointError, match="more than the 16777216 such a file may hold"):
        load_checkpoint(directory)
    directory = _saved(tmp_path / "weights")
    with open(os.path.join(directory, WEIGHTS_NAME), "ab") as handle:  # past 4 bytes a parameter + the header bound
        handle.truncate(4 * random_model(0, vocab_size=8000).config.parameter_count() + (64 << 20) + 1)
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_NAME}: cannot read .* such a file may hold"):
        load_checkpoint(directory)


@pytest.mark.parametrize("depth", [40, 100_000])
def test_a_config_nested_too_deeply_is_refused_in_one_line(tmp_path, depth):
    """100,000 nested lists: a RecursionError traceback from the JSON reader; 40 levels inside the
    model's ``extra``: read, then export died saving it (dataclasses.asdict's recursion)."""
    directory = _saved(tmp_path)
    if depth > 1000:
        with open(os.path.join(directory, CONFIG_NAME), "w") as handle:
            handle.write("[" * depth + "]" * depth)
        expected = "nested too deeply to read"
    else:
        nested: list = []
        for _ in range(depth):
            nested = [nested]
        _rewrite_config(directory, lambda config: config["model"]["extra"].update(deep=nested))
        expected = "nested deeper than 32 levels"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(directory)


def test_an_integer_too_long_to_read_is_one_checkpoint_error(tmp_path):
    directory = _saved(tmp_path)
    with open(os.path.join(directory, CONFIG_NAME), "w") as handle:
        handle.write('{"model": {}, "weights_sha256": ' + "9" * 5000 + "}")
    with pytest.raises(CheckpointError, match=f"{CONFIG_NAME}: unreadable or not valid JSON"):
        load_checkpoint(directory)


def test_an_empty_tokenizer_is_refused_naming_the_file(tmp_path):
    """SentencePiece takes an empty model without a word: an IndexError traceback came from the
    first id looked up (an old checkpoint records no tokenizer digest, so nothing checked the file)."""
    directory = _saved(tmp_path)
    with open(os.path.join(directory, TOKENIZER_NAME), "wb"):
        pass
    _rewrite_config(directory, lambda config: config.pop(TOKENIZER_DIGEST))
    with pytest.raises(CheckpointError, match=f"{TOKENIZER_NAME}: not a valid janus_fast SentencePiece model .* empty"):
        load_checkpoint(directory)


def test_special_ids_other_than_the_sentencepiece_tokenizers_are_refused(tmp_path):
    """A config whose pad and eos ids were swapped loaded and decoded nonsense with exit 0."""
    directory = _saved(tmp_path)
    _rewrite_config(directory, lambda config: config["model"].update(pad_id=3, eos_id=0))
    with pytest.raises(CheckpointError, match=r"special ids that are not its SentencePiece tokenizer's: pad_id 3"):
        load_checkpoint(directory)


def test_a_malformed_objectives_record_is_named(tmp_path):
    directory = _saved(tmp_path)
    _rewrite_config(directory, lambda config: config["model"]["extra"].update(trained_objectives=[["janus"]]))
    with pytest.raises(CheckpointError, match="trained_objectives.*must be a list of objective names"):
        load_checkpoint(directory)


@pytest.mark.parametrize("mode", ["nar", "ar", "spec"])
def test_outputs_of_a_model_whose_activations_overflow_are_said_not_to_be_translations(mode):
    """Finite weights of 3e38 pass the loader's checks but overflow: every line came out empty, exit 0."""
    translator = Translator.from_pretrained()
    with torch.no_grad():
        translator.model.embed_tokens.weight.fill_(3e38)
    broken = Translator(translator.model, translator.tokenizer)
    with pytest.warns(UserWarning, match="1 translation.* scored nan or inf"):
        broken.translate(["Zwei Hunde spielen im Schnee.", ""], mode=mode)


def test_a_dangling_link_in_place_of_the_dictionary_is_named_as_the_dictionary(tmp_path):
    """A converted model whose dict.txt is a dangling link was reported as a missing spm.model."""
    from janus_fast.fairseq.convert import convert_fairseq

    fairseq = os.path.join(REPO_ROOT, "python_tests", "data", "fairseq")
    directory = str(tmp_path / "converted")
    convert_fairseq(os.path.join(fairseq, "trained.pt"), os.path.join(fairseq, "dict.txt"), directory)
    os.remove(os.path.join(directory, "dict.txt"))
    os.symlink(str(tmp_path / "nowhere.txt"), os.path.join(directory, "dict.txt"))
    with pytest.raises(CheckpointError, match="unusable fairseq dictionary or BPE .*No such file") as raised:
        load_checkpoint(directory)
    assert TOKENIZER_NAME not in str(raised.value)
