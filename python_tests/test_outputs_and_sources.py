"""Issue 34: a checkpoint directory written at once and never over a source, a literal ``<mask>``
in text, reserved ids in token-id input, and a stray fairseq dictionary beside a checkpoint."""

from __future__ import annotations

import os
import shutil

import pytest

from janus_fast.checkpoint import (
    CheckpointError,
    checkpoint_output,
    load_pretrained,
    load_tokenizer,
    replaced_directory,
    save_pretrained,
    save_tokenizer,
)
from janus_fast.translator import Translator
from janus_fast.vocab import BOS_ID, EOS_ID, MASK_ID, PAD_ID, UNK_ID


def test_export_through_a_symlink_to_its_source_is_refused(trained_dir, tmp_path):
    from test_cli import run_cli

    link = tmp_path / "link"
    os.symlink(trained_dir, link)
    before = {name: os.path.getmtime(os.path.join(trained_dir, name)) for name in os.listdir(trained_dir)}
    result = run_cli("export", "--model", trained_dir, "--output", str(link), "--dtype", "bf16")
    assert result.returncode != 0 and b"must differ" in result.stderr
    result = run_cli("average", "--models", trained_dir, trained_dir, "--output", str(link))
    assert result.returncode != 0 and b"must differ" in result.stderr
    assert before == {name: os.path.getmtime(os.path.join(trained_dir, name)) for name in os.listdir(trained_dir)}


def test_export_replaces_an_old_copy_whole_and_refuses_a_folder_of_other_files(trained_dir, tmp_path):
    from test_cli import run_cli

    output = tmp_path / "copy"
    assert run_cli("export", "--model", trained_dir, "--output", str(output), "--dtype", "bf16").returncode == 0
    (output / "leftover.txt").write_text("from the old copy")
    result = run_cli("export", "--model", trained_dir, "--output", str(output), "--dtype", "fp32")
    assert result.returncode == 0, result.stderr.decode()
    assert not (output / "leftover.txt").exists()  # the new copy took the old one's place
    assert load_pretrained(str(output)).embed_tokens.weight.dtype.is_floating_point
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".copy.")]  # nothing left beside
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    result = run_cli("export", "--model", trained_dir, "--output", str(other))
    assert result.returncode != 0 and b"holds no checkpoint" in result.stderr
    assert (other / "mine.txt").read_text() == "keep me"


def test_an_interrupted_write_leaves_the_old_copy_as_it_was(trained_dir, tmp_path):
    output = str(tmp_path / "copy")
    shutil.copytree(trained_dir, output)
    before = {name: open(os.path.join(output, name), "rb").read() for name in os.listdir(output)}
    model = load_pretrained(trained_dir)
    with pytest.raises(KeyboardInterrupt):
        with replaced_directory(checkpoint_output(output, [trained_dir])) as staging:
            save_pretrained(model, staging)
            raise KeyboardInterrupt  # killed before the tokenizer was written
    assert {name: open(os.path.join(output, name), "rb").read() for name in os.listdir(output)} == before
    assert os.listdir(tmp_path) == ["copy"]
    with pytest.raises(CheckpointError, match="must differ"):
        checkpoint_output(output, [output])


def test_a_literal_mask_in_text_is_an_unknown_word(trained_dir):
    tokenizer = load_tokenizer(trained_dir)
    ids = tokenizer.encode("ein <mask> hund")
    assert MASK_ID not in ids and UNK_ID in ids
    assert tokenizer.encode_batch(["<mask>", "ein hund"]) == [tokenizer.encode("<mask>"), tokenizer.encode("ein hund")]
    translator = Translator.from_pretrained(trained_dir)
    text = translator.translate(["ein <mask> hund"])
    assert text == [translator.tokenizer.decode(translator.translate_ids([ids]).tokens[0])]


def test_token_id_input_refuses_reserved_ids(trained_dir):
    translator = Translator.from_pretrained(trained_dir)
    words = translator.tokenizer.encode("ein hund")
    assert len(translator.translate_ids([words]).tokens) == 1
    for reserved in (PAD_ID, BOS_ID, EOS_ID, MASK_ID):
        with pytest.raises(ValueError, match=r"input line 2\): token ids \[\d\] are reserved"):
            translator.translate_ids([words, [*words, reserved]])
    assert len(translator.translate_ids([[*words, UNK_ID]]).tokens) == 1  # an unknown word is a word


def test_a_stray_fairseq_dictionary_is_not_the_checkpoints_tokenizer(trained_dir, tmp_path):
    model_dir = str(tmp_path / "model")
    shutil.copytree(trained_dir, model_dir)
    with open(os.path.join(model_dir, "dict.txt"), "w", encoding="utf-8") as handle:
        handle.write("hello 1\nworld 1\n")
    with pytest.warns(UserWarning, match="dict.txt: not this checkpoint's tokenizer"):
        tokenizer = load_tokenizer(model_dir)
    assert tokenizer.vocab_size == load_tokenizer(trained_dir).vocab_size
    bare = str(tmp_path / "bare")
    os.makedirs(bare)
    shutil.copy(os.path.join(trained_dir, "spm.model"), bare)
    shutil.copy(os.path.join(model_dir, "dict.txt"), bare)
    with pytest.raises(CheckpointError, match="holds both spm.model and dict.txt"):
        load_tokenizer(bare)
    save_tokenizer(load_tokenizer(trained_dir), str(tmp_path / "alone"))
    assert load_tokenizer(str(tmp_path / "alone")).vocab_size == tokenizer.vocab_size


def test_distill_names_a_long_input_by_its_line_in_the_file(trained_dir, tmp_path):
    """A long line in a later chunk of distill's source is named by its line in the file."""
    from janus_fast.training.distill import distill

    translator = Translator.from_pretrained(trained_dir, on_long_input="error")
    source = tmp_path / "src.de"
    lines = ["ein hund"] * 4 + [" ".join(["hund"] * 400)]
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with pytest.raises(ValueError, match=r"\(input line 5\)"):
        distill(translator, str(source), str(tmp_path / "out.en"), chunk_size=2)
