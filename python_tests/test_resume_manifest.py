"""Resumes that know what they resume (issue 34 item 2): ``janus-fast distill``'s parts folder has a
manifest of what made its chunks, ``janus-fast train`` records its training data, and a torn last
line of ``metrics.jsonl`` does not block a resume."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_train_config

from janus_fast.checkpoint import load_pretrained, load_tokenizer, read_config, save_pretrained
from janus_fast.data import InputError, read_lines
from janus_fast.training.distill import MANIFEST_NAME, PARTS_SUFFIX, distill, model_identity
from janus_fast.training.train import check_resumable, drop_metrics_after, train, train_data_digests
from janus_fast.translator import Translator


class Upper:
    """A stand-in translator: upper-cases each line."""

    def translate(self, lines: list[str], progress=None, **options) -> list[str]:  # noqa: ANN001, ANN003
        return [line.upper() for line in lines]


def write_lines(path: str, lines: list[str]) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return path


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


class Failing:
    """``translator`` whose ``translate`` raises after ``after`` calls (a run killed mid-way); its
    other attributes are the translator's."""

    def __init__(self, translator: Translator | Upper, after: int) -> None:
        self.translator, self.after = translator, after

    def __getattr__(self, name: str) -> object:
        return getattr(self.translator, name)

    def translate(self, *positional, **options) -> list[str]:  # noqa: ANN002, ANN003
        if self.after == 0:
            raise RuntimeError("killed")
        self.after -= 1
        return self.translator.translate(*positional, **options)


@pytest.fixture
def cli(monkeypatch):  # noqa: ANN201
    from janus_fast import cli

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # cli.main replaces it
    return cli


def interrupted_distill(cli, monkeypatch, arguments: list[str], chunks: int) -> None:  # noqa: ANN001
    """``janus-fast distill ARGUMENTS`` interrupted (Ctrl-C) after translating ``chunks`` chunks."""
    real = cli._translator

    def translator(args):  # noqa: ANN001, ANN202
        loaded = real(args)
        translate, calls = loaded.translate, []

        def limited(*positional, **options):  # noqa: ANN002, ANN003, ANN202
            if len(calls) == chunks:
                raise KeyboardInterrupt
            calls.append(1)
            return translate(*positional, **options)

        loaded.translate = limited
        return loaded

    monkeypatch.setattr(cli, "_translator", translator)
    assert cli.main(arguments) == 130
    monkeypatch.setattr(cli, "_translator", real)


@pytest.fixture(scope="module")
def other_model_dir(trained_dir, tmp_path_factory) -> str:
    """``trained_dir``'s checkpoint with slightly different weights (same tokenizer)."""
    model = load_pretrained(trained_dir)
    with torch.no_grad():
        model.embed_tokens.weight.add_(0.01)
    out = str(tmp_path_factory.mktemp("other") / "model")
    save_pretrained(model, out, load_tokenizer(trained_dir).model_proto)
    return out


CHANGES = {  # another option on resume -> the words the refusal names it by
    "chunk-size": (["--chunk-size", "3"], "--chunk-size 4 -> 3"),
    "src": (["--src", "OTHER_SRC"], "--src (other content)"),
    "mode": (["--mode", "nar", "--iterations", "2"], "--mode 'ar' -> 'nar'"),
    "beam": (["--beam", "2"], "--beam 4 -> 2"),
    "model": (["--model", "OTHER_MODEL"], "--model (other weights"),
    "max-batch-tokens": (["--max-batch-tokens", "100"], "--max-batch-tokens 4096 -> 100"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_distill_cli_refuses_a_resume_with_other_options_then_resumes_with_the_same(
    change, cli, monkeypatch, capsys, trained_dir, other_model_dir, corpus_dir, tmp_path
):
    """The user test: a run killed after its first chunk and restarted with another option used to
    reuse the chunk (another chunk size: line 4 got line 3's translation) and exit 0. Now one error
    line names the option and the way out, the parts are left as they were, and the same command
    as the killed one still resumes to the uninterrupted run's output."""
    corpus = read_lines(os.path.join(corpus_dir, "train.de"))
    source = write_lines(str(tmp_path / "src.de"), corpus[:10])
    other_source = write_lines(str(tmp_path / "other.de"), corpus[10:20])
    output = str(tmp_path / "out.en")
    parts = output + PARTS_SUFFIX
    base = {"--model": trained_dir, "--src": source, "--output": output, "--chunk-size": "4"}
    arguments = ["distill", *(item for pair in base.items() for item in pair), "--no-progress"]
    interrupted_distill(cli, monkeypatch, arguments, chunks=1)
    assert sorted(os.listdir(parts)) == ["chunk-000000.txt", MANIFEST_NAME]
    kept = {name: read_bytes(os.path.join(parts, name)) for name in os.listdir(parts)}
    capsys.readouterr()

    extra, named = CHANGES[change]
    extra = [{"OTHER_SRC": other_source, "OTHER_MODEL": other_model_dir}.get(item, item) for item in extra]
    assert cli.main([*arguments, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("janus-fast: error: "), err
    assert named in err and f"delete {parts} to start over" in err, err
    assert {name: read_bytes(os.path.join(parts, name)) for name in os.listdir(parts)} == kept
    assert not os.path.exists(output)

    assert cli.main(arguments) == 0  # the options it was started with
    expected = Translator.from_pretrained(trained_dir).translate(corpus[:10], mode="ar", beam=4)
    assert read_lines(output) == expected and not os.path.exists(parts)


def test_distill_refuses_a_parts_folder_without_manifest_unless_empty(tmp_path):
    """A parts folder of an older version (chunks, no manifest) cannot be checked: refused, left as
    it was. An empty one (an atomic write's left-over temporary file aside) is used."""
    source = write_lines(str(tmp_path / "src.de"), ["ein hund", "zwei katzen", "drei", "vier"])
    output = str(tmp_path / "out.en")
    parts = output + PARTS_SUFFIX
    os.makedirs(parts)
    write_lines(os.path.join(parts, "chunk-000000.txt"), ["old", "old"])
    with pytest.raises(InputError, match=f"{parts} holds chunks but no {MANIFEST_NAME}.*delete {parts} to start over"):
        distill(Upper(), source, output, chunk_size=3)
    assert os.listdir(parts) == ["chunk-000000.txt"] and not os.path.exists(output)

    shutil.rmtree(parts)
    os.makedirs(parts)
    write_lines(os.path.join(parts, ".tmp-0123abcdchunk-000000.txt"), ["torn"])
    assert distill(Upper(), source, output, chunk_size=3) == 4
    assert read_lines(output) == ["EIN HUND", "ZWEI KATZEN", "DREI", "VIER"] and not os.path.exists(parts)


def test_distill_names_the_changed_options_of_the_api(tmp_path):
    """Through the Python API too: the source's line count, several options at once, and an
    unreadable manifest, each refused with what to do; the manifest put back, the run resumes
    from its finished chunk."""
    source = write_lines(str(tmp_path / "src.de"), ["a", "b", "c", "d", "e"])
    output = str(tmp_path / "out.en")
    manifest_path = os.path.join(output + PARTS_SUFFIX, MANIFEST_NAME)
    with pytest.raises(RuntimeError, match="killed"):
        distill(Failing(Upper(), after=1), source, output, chunk_size=2, mode="ar", beam=4)
    manifest = read_bytes(manifest_path)
    saved = json.loads(manifest)
    assert saved["lines"] == 5 and saved["chunk_size"] == 2 and saved["decoding"] == {"mode": "ar", "beam": 4}

    write_lines(source, ["a", "b", "c", "d", "e", "f"])
    with pytest.raises(InputError, match=r"--src \(other content, 5 -> 6 lines\)"):
        distill(Upper(), source, output, chunk_size=2, mode="ar", beam=4)
    write_lines(source, ["a", "b", "c", "d", "e"])
    with pytest.raises(InputError, match=r"\(--beam 4 -> unset; --length-beam unset -> 2\)"):
        distill(Upper(), source, output, chunk_size=2, mode="ar", length_beam=2)
    with open(manifest_path, "w", encoding="utf-8") as handle:
        handle.write('{"format": 1, "sour')
    with pytest.raises(InputError, match=f"{manifest_path}: unreadable manifest .*delete {output}{PARTS_SUFFIX}"):
        distill(Upper(), source, output, chunk_size=2, mode="ar", beam=4)
    with open(manifest_path, "wb") as handle:
        handle.write(manifest)
    write_lines(os.path.join(output + PARTS_SUFFIX, "chunk-000000.txt"), ["kept", "kept"])
    assert distill(Upper(), source, output, chunk_size=2, mode="ar", beam=4) == 5
    assert read_lines(output) == ["kept", "kept", "C", "D", "E"]  # the finished chunk is not redone


def test_distill_model_dir_names_the_model_by_its_recorded_weights_digest(trained_dir, other_model_dir, tmp_path):
    """With ``model_dir`` the manifest holds the checkpoint's recorded weights digest (without a
    config.json, the weights file's own) and its tokenizer's; a resume with another checkpoint is
    refused."""
    translator = Translator.from_pretrained(trained_dir)
    config = read_config(trained_dir)
    tokenizer = hashlib.sha256(read_bytes(os.path.join(trained_dir, "spm.model"))).hexdigest()
    assert model_identity(translator, trained_dir) == {
        "weights_sha256": config["weights_sha256"],
        "config_sha256": config["model_sha256"],
        "tokenizer_sha256": tokenizer,
    }
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(os.path.join(other_model_dir, "model.safetensors"), bare / "model.safetensors")
    weights = hashlib.sha256((bare / "model.safetensors").read_bytes()).hexdigest()
    assert model_identity(translator, str(bare)) == {
        "weights_sha256": weights,
        "config_sha256": None,
        "tokenizer_sha256": tokenizer,
    }
    assert weights == read_config(other_model_dir)["weights_sha256"] != config["weights_sha256"]
    # without model_dir: the loaded weights are hashed, and the tokenizer is part of the model either way
    swapped = SimpleNamespace(model=translator.model, tokenizer=SimpleNamespace(model_proto=b"another tokenizer"))
    assert model_identity(swapped)["state_sha256"] == model_identity(translator)["state_sha256"]
    assert model_identity(swapped) != model_identity(translator)

    source = write_lines(str(tmp_path / "src.de"), ["Ein Hund.", "Zwei Katzen.", "Drei Pferde."])
    output = str(tmp_path / "out.en")
    other = Translator.from_pretrained(other_model_dir)
    with pytest.raises(RuntimeError, match="killed"):
        distill(Failing(other, after=1), source, output, chunk_size=2, model_dir=other_model_dir, mode="ar")
    saved = json.loads(read_bytes(os.path.join(output + PARTS_SUFFIX, MANIFEST_NAME)))
    assert saved["model"]["weights_sha256"] == weights
    with pytest.raises(InputError, match=r"--model \(other weights, model config or tokenizer\)"):
        distill(translator, source, output, chunk_size=2, model_dir=trained_dir, mode="ar")
    assert distill(other, source, output, chunk_size=2, model_dir=other_model_dir, mode="ar") == 3
    assert read_lines(output) == other.translate(read_lines(source), mode="ar")


def swapped_corpus(corpus_dir: str, out: str) -> str:
    """``corpus_dir`` with its training sides swapped: train.de holds English, train.en German."""
    shutil.copytree(corpus_dir, out)
    os.replace(os.path.join(out, "train.de"), os.path.join(out, "swap"))
    os.replace(os.path.join(out, "train.en"), os.path.join(out, "train.de"))
    os.replace(os.path.join(out, "swap"), os.path.join(out, "train.en"))
    return out


def test_train_resume_refuses_another_corpus_behind_data_dir(corpus_dir, tmp_path):
    """--data-dir may name another folder with the same corpus (moved), not another corpus (here:
    the languages swapped), which a resume used to accept."""
    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, max_updates=3))
    swapped = swapped_corpus(corpus_dir, str(tmp_path / "swapped"))
    with pytest.raises(ValueError) as refused:
        train(tiny_train_config(swapped, out, max_updates=6))
    message = str(refused.value)
    assert "--data-dir: the training sources (train.de) differ from the run's" in message, message
    assert "--data-dir: the training targets (train.en) differ from the run's" in message, message
    assert "resume with the same options or choose another --output-dir" in message
    moved = shutil.copytree(corpus_dir, str(tmp_path / "moved"))
    assert train(tiny_train_config(moved, out, max_updates=4)).update == 4
    # a training state saved before the digests were recorded is not compared on them
    check_resumable({"source_lang": "de"}, tiny_train_config(swapped, out), {"train_source_sha256": "x"})


def test_train_resume_refuses_an_edited_train_target(corpus_dir, tmp_path):
    """The same --train-target path with other lines in it is another corpus."""
    references = read_lines(os.path.join(corpus_dir, "train.en"))
    target = write_lines(str(tmp_path / "distilled.en"), references)
    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, train_target=target, max_updates=3))
    write_lines(target, list(reversed(references)))
    with pytest.raises(ValueError, match=r"--train-target: the training targets \(.*distilled.en\) differ") as refused:
        train(tiny_train_config(corpus_dir, out, train_target=target, max_updates=6))
    assert "training sources" not in str(refused.value)
    digests = train_data_digests(["a"], ["b"])
    assert set(digests) == {"train_source_sha256", "train_target_sha256"}


def test_train_resumes_past_a_torn_last_metrics_line(corpus_dir, tmp_path):
    """A run killed while appending to metrics.jsonl: the resume drops the torn line with a warning
    naming the file (it used to fail with a JSON error naming none) and logs every update once."""
    out = str(tmp_path / "run")
    train(tiny_train_config(corpus_dir, out, max_updates=3))
    metrics = os.path.join(out, "metrics.jsonl")
    with open(metrics, "a", encoding="utf-8") as handle:
        handle.write('{"type": "train", "update": 4, "lo')
    with pytest.warns(UserWarning, match=f"{metrics}: dropped its last line, an incomplete record"):
        assert train(tiny_train_config(corpus_dir, out, max_updates=6)).update == 6
    with open(metrics, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    assert [r["update"] for r in records if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_torn_metrics_line_before_the_last_names_the_file_and_line(tmp_path):
    """A torn line with records after it is not a kill's: an error naming the file and the line
    (1-based), the file left as it was; a complete last record without its newline gets one."""
    path = str(tmp_path / "metrics.jsonl")
    text = '{"update": 1}\n{"update": 2, "lo\n{"update": 3}\n'
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    with pytest.raises(InputError, match=f"^{path}: line 2 is not a JSON record"):
        drop_metrics_after(path, 3)
    assert read_bytes(path).decode() == text
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('{"update": 1}\n\n{"update": 2}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drop_metrics_after(path, 3)
    assert read_bytes(path).decode() == '{"update": 1}\n{"update": 2}\n'
